"""What every defense needs: result types, the defender's clean set, copies, and activation hooks
that are always removed and always restore the model's training mode."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..errors import ConfigError, IncompatibleError

# The evaluator's view along a defense's curve (test accuracy, ASR): opaque to the defense, which only
# calls it and records what it returns.
Monitor = Callable[[nn.Module], dict[str, float]]


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


def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, so that a defense can change weights without touching the caller's model."""
    return copy.deepcopy(model).eval()


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The last convolutional layer (name, module), where Fine-Pruning and Grad-CAM look."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise IncompatibleError(
            f"the model ({type(model).__name__}) has no convolutional layer; this defense needs one"
        )
    return convs[-1]


@contextlib.contextmanager
def capture_activations(model: nn.Module, layer: nn.Module, *, train_mode: bool = False) -> Iterator[list]:
    """Record `layer`'s outputs while the block runs; the hook is removed and the model's mode restored
    afterwards, also when the block raises. Yields the list the outputs are appended to."""
    outputs: list[torch.Tensor] = []
    was_training = model.training
    handle = layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    model.train(train_mode)
    try:
        yield outputs
    finally:
        handle.remove()
        model.train(was_training)
