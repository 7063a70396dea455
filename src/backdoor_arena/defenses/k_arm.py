"""K-Arm (Shen et al., ICML 2021) as a model detector of its own: Neural Cleanse's trigger reverse-engineering
under K-Arm's schedule (logit pre-screening of the labels, a bandit over the kept arms, the lead arm judged by
its size when global and by the symmetric check when label-specific).

The method lives in neural_cleanse.py (`schedule="k-arm"`); registering it under its own name lets `scan`,
the calibrated verdict, zoo evaluations and leaderboards report K-Arm beside Neural Cleanse, each with its
score and wall time.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from . import MODEL_DETECTORS
from .neural_cleanse import NeuralCleanse


@MODEL_DETECTORS.register("k-arm")
class KArm(NeuralCleanse):
    """Model detector. Neural Cleanse with `schedule="k-arm"` by default (score: the anomaly index)."""

    example_params: ClassVar[dict[str, Any]] = {**NeuralCleanse.example_params, "schedule": "k-arm"}

    def __init__(self, **params: Any) -> None:
        params.setdefault("schedule", "k-arm")
        super().__init__(**params)


# The same parameters as Neural Cleanse (the CLI and the conformance suite read the signature), with K-Arm's
# schedule as the default.
_nc = inspect.signature(NeuralCleanse.__init__)
KArm.__init__.__signature__ = _nc.replace(parameters=[  # type: ignore[attr-defined]
    p.replace(default="k-arm") if p.name == "schedule" else p for p in _nc.parameters.values()])
