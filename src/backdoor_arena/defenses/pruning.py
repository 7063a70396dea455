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

The surgery itself (prune site, channel zeroing and freezing, pruning by activation) lives in
`backdoor_arena.nn_tools`, which the pruning-aware attack uses too.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..nn_tools import clean_accuracy_of, prune_by_activation, prune_site
from . import MITIGATIONS
from .base import Monitor, Repaired, check_clean_set


def check_fraction(name: str, value: float, *, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        allowed = "(0, 1]" if low_open else "[0, 1]"
        raise ConfigError(f"{name} must be a fraction in {allowed}, got {value!r}")


@MITIGATIONS.register("pruning")
class Pruning:
    """Prune dormant channels of the last conv layer until clean accuracy would drop by more than
    `max_accuracy_drop` (a fraction: 0.04 = 4 points). `step` channels are pruned per curve point."""

    example_params: ClassVar[dict[str, Any]] = {"step": 32}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"max_accuracy_drop": 2.0}, "max_accuracy_drop"), ({"step": 0}, "step"))
    param_help: ClassVar[dict[str, str]] = {
        "max_accuracy_drop": "Stop before clean-set accuracy drops by more than this fraction (0.04 = 4 points).",
        "step": "Channels pruned per point of the curve.",
        "full_curve": "Keep measuring to 100% pruned (for the plot) after the stopping point.",
        "progress": "Show a progress bar.",
    }

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
        check_clean_set(model, clean, "pruning")
        r = prune_by_activation(model, clean, max_accuracy_drop=self.max_accuracy_drop, step=self.step,
                                full_curve=self.full_curve, monitor=monitor, progress=self.progress)
        site = prune_site(r.model)
        info = {"defense": "pruning", "params": self.params(), "layer": site.conv_name, "channels": site.channels,
                "pruned_channels": r.pruned, "fraction_pruned": len(r.pruned) / site.channels,
                "holdout_accuracy_before": r.baseline_accuracy, "holdout_accuracy_after": clean_accuracy_of(r.model, clean),
                "clean_samples": len(clean), "wall_time_s": time.perf_counter() - start}
        return Repaired(r.model, r.curve, info)
