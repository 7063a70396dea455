"""Every registry of the project in one place. Importing this module enrols every plugin, so the CLI, the
verbs layer and the conformance suite see the same components; a new plugin is one file plus one
`@REGISTRY.register(name)` line in its package.

`KINDS` maps a kind's name (as the CLI and the docs say it) to its registry.
"""

from __future__ import annotations

from .attacks import ATTACKS, MODEL_ATTACKS
from .compiled import COMPILE_ATTACKS
from .data import DATASETS
from .defenses import DATA_FILTERS, INPUT_DETECTORS, MITIGATIONS, MODEL_DETECTORS, ROBUST_TRAINERS
from .federated.adversaries import ADVERSARIES
from .federated.aggregators import AGGREGATORS
from .federated.attacks import CLIENT_ATTACKS
from .federated.engines import ENGINES
from .models import MODELS
from .registry import Registry
from .triggers import TRIGGERS

KINDS: dict[str, Registry] = {
    "datasets": DATASETS, "models": MODELS, "triggers": TRIGGERS, "attacks": ATTACKS,
    "model-attacks": MODEL_ATTACKS, "mitigations": MITIGATIONS, "model-detectors": MODEL_DETECTORS,
    "input-detectors": INPUT_DETECTORS, "data-filters": DATA_FILTERS, "robust-trainers": ROBUST_TRAINERS,
    "aggregators": AGGREGATORS, "fl-attacks": CLIENT_ATTACKS, "adversaries": ADVERSARIES, "engines": ENGINES,
    "compile-attacks": COMPILE_ATTACKS,
}

# Detectors of every kind, as `detect NAME` addresses them (names are unique across the three kinds).
DETECTOR_KINDS: dict[str, Registry] = {"model": MODEL_DETECTORS, "input": INPUT_DETECTORS, "data": DATA_FILTERS}


def detector_kind(name: str) -> str:
    """'model', 'input' or 'data' for a registered detector name."""
    for kind, registry in DETECTOR_KINDS.items():
        if name in registry:
            return kind
    from .errors import ConfigError

    known = sorted(n for r in DETECTOR_KINDS.values() for n in r.names())
    raise ConfigError(f"unknown detector {name!r}; known: {', '.join(known)}")


__all__ = [
    "ADVERSARIES", "AGGREGATORS", "ATTACKS", "CLIENT_ATTACKS", "COMPILE_ATTACKS", "DATASETS", "DATA_FILTERS", "DETECTOR_KINDS",
    "ENGINES", "INPUT_DETECTORS", "KINDS", "MITIGATIONS", "MODELS", "MODEL_ATTACKS", "MODEL_DETECTORS",
    "ROBUST_TRAINERS", "TRIGGERS", "detector_kind",
]
