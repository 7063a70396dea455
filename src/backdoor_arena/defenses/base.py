"""What every defense needs: result types, the defender's clean set and its check. The model helpers
(copies, activation hooks that are always removed, prune sites...) live in `backdoor_arena.nn_tools`,
below both attacks and defenses; the common ones are re-exported here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..errors import ConfigError, IncompatibleError
from ..nn_tools import Probe, capture_activations, last_conv, model_copy

# The evaluator's view along a defense's curve (test accuracy, ASR): opaque to the defense, which only
# calls it and records what it returns.
Monitor = Probe

__all__ = ["ModelVerdict", "Monitor", "Repaired", "capture_activations", "check_clean_set", "clean_holdout",
           "last_conv", "model_copy"]


@dataclass(frozen=True, eq=False)
class Repaired:
    """A mitigation's output: a new model (the input is untouched), an optional curve, and details."""

    model: nn.Module
    curve: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class ModelVerdict:
    """A model detector's output. `score` is continuous (higher = more suspicious); `flagged` applies the
    detector's stated threshold; `artefacts` holds tensors or figures worth saving (reversed triggers...)."""

    score: float
    flagged: bool
    threshold: float
    suspected_target: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    artefacts: dict[str, Any] = field(default_factory=dict)


def clean_holdout(train: Dataset, fraction: float = 0.05, seed: int = 0) -> tuple[Dataset, Dataset]:
    """The defender's clean set: a seeded `fraction` of the training split, and the rest.

    Never the test split: the test split measures the defense, so the defense must not see it.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"clean fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train.subset(torch.arange(0)), train
    rest, held = train.split(fraction, torch.Generator().manual_seed(seed))
    return rest, held


def check_clean_set(model: nn.Module, data: Dataset | torch.Tensor, who: str) -> torch.Tensor:
    """The images of `data` as float pixels, after checking in one-line errors that the model can use
    them: images [N, C, H, W], not empty, accepted by the model and, for a Dataset, with as many classes
    as the model has outputs. The probe runs in eval mode and restores the model's training mode."""
    images = data.images if isinstance(data, Dataset) else data
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise IncompatibleError(f"{who}: the clean set must be images [N, C, H, W], got {shape}")
    if len(images) == 0:
        raise ConfigError(f"{who}: the clean set is empty; give the defender some clean samples (clean fraction > 0)")
    x = to_float(images)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise IncompatibleError(
            f"{who}: the model does not accept clean-set images of shape {tuple(x.shape[1:])} ({first}); "
            "use a clean set from the model's dataset"
        ) from None
    finally:
        model.train(was_training)
    if isinstance(data, Dataset) and out.shape[-1] != data.num_classes:
        raise IncompatibleError(f"{who}: the model has {out.shape[-1]} outputs but the clean set has "
                                f"{data.num_classes} classes; use a clean set from the model's dataset")
    return x
