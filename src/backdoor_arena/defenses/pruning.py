"""Pruning (Liu, Dolan-Gavitt and Garg, "Fine-Pruning", RAID 2018, Section 3.1).

A backdoor tends to live in channels that clean inputs leave dormant. The defender records the mean
activation of each channel of the last convolutional layer on its clean set, then prunes channels in
increasing order of that activation, and stops before clean accuracy (on the same clean set, the
only data the defender has) drops by more than `max_accuracy_drop`.

A channel is pruned by zeroing its filter and bias and, when a BatchNorm follows the convolution,
its BN weight and bias, so that the channel outputs exactly zero whatever the running statistics:
the architecture and the model file format stay the same. The whole curve (accuracy, and whatever
a `monitor` callback returns, e.g. test accuracy and ASR from an evaluator that holds the attack
spec the defender never sees) is kept against the fraction pruned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..errors import ConfigError, IncompatibleError
from ..metrics import accuracy, predict
from . import MITIGATIONS
from .base import Monitor, Repaired, capture_activations, check_clean_set, last_conv, model_copy


@dataclass(frozen=True, eq=False)
class PruneSite:
    """Where pruning acts: the last conv layer and the BatchNorm that normalises its output, if any."""

    conv_name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None

    @property
    def channels(self) -> int:
        return self.conv.out_channels

    def parameters(self) -> list[nn.Parameter]:
        """The parameters that carry a channel of this layer (dimension 0 indexes the channel)."""
        params = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        if self.bn is not None and self.bn.affine:
            params += [self.bn.weight, self.bn.bias]
        return params


def prune_site(model: nn.Module) -> PruneSite:
    """The last conv layer of `model` and the BatchNorm directly after it (module order), if any."""
    name, conv = last_conv(model)
    modules = list(model.named_modules())
    names = [n for n, _ in modules]
    after = modules[names.index(name) + 1][1] if names.index(name) + 1 < len(modules) else None
    bn = after if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels else None
    if bn is not None and not bn.affine:
        raise IncompatibleError(f"the BatchNorm after {name!r} has no affine parameters; pruning cannot zero it")
    return PruneSite(name, conv, bn)


def mean_channel_activations(model: nn.Module, site: PruneSite, images: torch.Tensor,
                             batch_size: int = 500) -> torch.Tensor:
    """Mean post-ReLU activation per channel of the pruned layer over images and positions: float [C].

    Running sums, never the feature maps of the whole set. The ReLU is applied here (to the BN output
    when a BN follows) because a channel's activation is what the next layer sees."""
    layer = site.bn if site.bn is not None else site.conv
    total = torch.zeros(site.channels, dtype=torch.float64)
    count = 0
    with capture_activations(model, layer) as outputs, torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(to_float(images[i : i + batch_size]))
            out = outputs.pop()
            total += torch.relu(out).sum(dim=(0, 2, 3)).double()
            count += out.shape[0] * out.shape[2] * out.shape[3]
    return (total / max(count, 1)).float()


def zero_channels(site: PruneSite, channels: torch.Tensor | list[int]) -> None:
    """Prune `channels` in place (call on a copy): their output becomes exactly zero."""
    idx = torch.as_tensor(channels, dtype=torch.long)
    with torch.no_grad():
        for p in site.parameters():
            p[idx] = 0


def freeze_channels(site: PruneSite, channels: torch.Tensor | list[int]) -> list[Any]:
    """Gradient hooks that keep pruned channels at zero while training (zero gradient, zero weight: SGD
    momentum, weight decay and Adam all leave them at zero). Returns the handles; remove them after."""
    mask_index = torch.as_tensor(channels, dtype=torch.long)
    handles = []
    for p in site.parameters():
        mask = torch.ones_like(p)
        mask[mask_index] = 0
        handles.append(p.register_hook(lambda g, m=mask: g * m))
    return handles


def clean_accuracy_of(model: nn.Module, clean: Dataset, batch_size: int = 1000) -> float:
    return accuracy(predict(model, clean.images, batch_size), clean.labels)


@dataclass(frozen=True, eq=False)
class PruneResult:
    model: nn.Module  # the pruned copy chosen by the stopping rule
    order: list[int]  # channels by increasing mean activation
    pruned: list[int]  # the channels pruned in `model`
    curve: list[dict[str, float]]
    baseline_accuracy: float


def prune_by_activation(
    model: nn.Module, clean: Dataset, *, max_accuracy_drop: float = 0.04, step: int = 1,
    full_curve: bool = True, monitor: Monitor | None = None, batch_size: int = 500, progress: bool = False,
) -> PruneResult:
    """Prune the last conv layer's channels of a copy of `model` in increasing order of mean clean
    activation; keep the most channels pruned such that clean accuracy has not dropped by more than
    `max_accuracy_drop` at any point. With `full_curve`, keep measuring to 100% pruned (for the plot)."""
    from tqdm.auto import tqdm

    check_clean_set(model, clean, "pruning")
    work = model_copy(model)
    site = prune_site(work)
    order = torch.argsort(mean_channel_activations(work, site, clean.images, batch_size), stable=True).tolist()
    baseline = clean_accuracy_of(work, clean)

    def point(k: int) -> dict[str, float]:
        row = {"pruned": k, "fraction_pruned": k / site.channels, "holdout_accuracy": clean_accuracy_of(work, clean)}
        if monitor is not None:
            row.update(monitor(work))
        return row

    curve = [point(0)]
    chosen, stopped = 0, False
    sizes = list(range(step, site.channels, step)) + [site.channels]
    for k in tqdm(sizes, desc="pruning", disable=not progress, leave=False):
        zero_channels(site, order[:k])
        curve.append(point(k))
        if not stopped and baseline - curve[-1]["holdout_accuracy"] > max_accuracy_drop:
            stopped = True
        if not stopped:
            chosen = k
        if stopped and not full_curve:
            break
    pruned_model = model_copy(model)
    zero_channels(prune_site(pruned_model), order[:chosen])
    return PruneResult(pruned_model, order, order[:chosen], curve, baseline)


def check_fraction(name: str, value: float, *, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        allowed = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be a fraction in {allowed}, got {value!r}")


@MITIGATIONS.register("pruning")
class Pruning:
    """Prune dormant channels of the last conv layer until clean accuracy would drop by more than
    `max_accuracy_drop` (a fraction: 0.04 = 4 points). `step` channels are pruned per curve point."""

    def __init__(self, max_accuracy_drop: float = 0.04, *, step: int = 1, full_curve: bool = True,
                 progress: bool = False) -> None:
        check_fraction("max_accuracy_drop", max_accuracy_drop, low_open=False)
        if not isinstance(step, int) or step < 1:
            raise ConfigError(f"step must be a positive number of channels, got {step!r}")
        self.max_accuracy_drop, self.step, self.full_curve, self.progress = max_accuracy_drop, step, full_curve, progress

    def params(self) -> dict[str, Any]:
        return {"max_accuracy_drop": self.max_accuracy_drop, "step": self.step}

    def repair(self, model: nn.Module, clean: Dataset, *, monitor: Monitor | None = None) -> Repaired:
        start = time.perf_counter()
        r = prune_by_activation(model, clean, max_accuracy_drop=self.max_accuracy_drop, step=self.step,
                                full_curve=self.full_curve, monitor=monitor, progress=self.progress)
        site = prune_site(r.model)
        info = {"defense": "pruning", "params": self.params(), "layer": site.conv_name, "channels": site.channels,
                "pruned_channels": r.pruned, "fraction_pruned": len(r.pruned) / site.channels,
                "holdout_accuracy_before": r.baseline_accuracy, "holdout_accuracy_after": clean_accuracy_of(r.model, clean),
                "clean_samples": len(clean), "wall_time_s": time.perf_counter() - start}
        return Repaired(r.model, r.curve, info)
