"""Defenses. A defender sees only the model and a small clean set, never the attack spec.

Five kinds (DESIGN.md), one registry each; every registered defense is enrolled in the conformance
suite (tests/conformance), which checks that it never mutates the caller's model, is deterministic
for a seed, rejects bad parameters with ConfigError, and leaves no hooks behind. Each registered class
declares, as class attributes, `example_params` (small, fast constructor parameters), `bad_params`
(known-bad parameter sets, each with a substring of the ConfigError it raises) and `param_help` (one
sentence per constructor parameter: the CLI's --help); the suite reads them, with no table of its own.
Model surgery and inspection helpers live in `backdoor_arena.nn_tools`, below attacks and defenses.

  mitigation       repair(model, clean) -> Repaired(model, curve, info)          MITIGATIONS
  model detector   inspect(model, clean) -> ModelVerdict(score, flagged, ...)     MODEL_DETECTORS
  input detector   fit(model, clean) then score(x) -> per-input scores            INPUT_DETECTORS
  data filter      score(model, dataset) -> per-sample suspicion                  DATA_FILTERS
  robust trainer   fit(dataset) -> model (+ certificate)                          ROBUST_TRAINERS

Scores are continuous, so AUROC is computed on scores, never on 0/1 verdicts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import ModelVerdict, Repaired, capture_activations, clean_holdout, last_conv, model_copy

MITIGATIONS: Registry[Callable[..., Any]] = Registry("mitigation defense")
MODEL_DETECTORS: Registry[Callable[..., Any]] = Registry("model detector")
INPUT_DETECTORS: Registry[Callable[..., Any]] = Registry("input detector")
DATA_FILTERS: Registry[Callable[..., Any]] = Registry("data filter")
ROBUST_TRAINERS: Registry[Callable[..., Any]] = Registry("robust trainer")

__all__ = [
    "DATA_FILTERS", "INPUT_DETECTORS", "MITIGATIONS", "MODEL_DETECTORS", "ROBUST_TRAINERS", "ModelVerdict",
    "Repaired", "capture_activations", "clean_holdout", "last_conv", "model_copy",
]

# Enrol every defense: importing a module registers its plugins (after the registries above exist).
from . import abs, activation_clustering, dp, finetuning, k_arm, mntd, neural_cleanse, pruning, rab, sentinet, spectral, strip  # noqa: E402,F401,I001
