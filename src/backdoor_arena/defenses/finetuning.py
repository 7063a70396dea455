"""Fine-tuning and fine-pruning (Liu, Dolan-Gavitt and Garg, "Fine-Pruning", RAID 2018).

Fine-tuning: a few epochs of training on the defender's clean set. The paper observes that with the
small learning rates that keep clean accuracy, the backdoor survives: clean inputs never exercise
the channels the trigger uses, so their weights get no gradient worth the name.

Fine-pruning: prune as in `pruning.py`, then fine-tune with the pruned channels held at zero. Pruning
removes the dormant backdoor channels (or, against the pruning-aware attack, the decoys), and
fine-tuning then repairs accuracy and rewrites the backdoor behaviour that clean-active channels
carry, which is what defeats the pruning-aware attacker.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..nn_tools import clean_accuracy_of, frozen_channels, model_copy, prune_site
from ..runtime import resolve_device
from ..train import OPTIMIZERS, TrainConfig, fit
from . import MITIGATIONS
from .base import Monitor, Repaired, check_clean_set
from .pruning import Pruning, check_fraction


def _tune_config(epochs: int, lr: float, batch_size: int, optimizer: str, momentum: float, weight_decay: float,
                 seed: int, progress: bool) -> TrainConfig:
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    # constant learning rate, as in the paper's fine-tuning; TrainConfig validates the rest
    return TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                       weight_decay=weight_decay, schedule="constant", seed=seed, progress=progress)


_TUNE_HELP = {
    "epochs": "Fine-tuning epochs on the clean set.",
    "lr": "Constant learning rate of the fine-tuning.",
    "batch_size": "Fine-tuning batch size.",
    "optimizer": "Optimizer: sgd or adam.",
    "momentum": "SGD momentum, in [0, 1).",
    "weight_decay": "L2 weight decay, >= 0.",
    "seed": "Seed of the batch order (and dropout).",
    "progress": "Show a progress bar.",
    "device": "Where the fine-tuning runs: cpu, cuda[:N] or mps (the repaired model comes back on the CPU).",
}


def fine_tune(model: nn.Module, clean: Dataset, config: TrainConfig, *, monitor: Monitor | None = None,
              frozen: list[int] | None = None, description: str = "fine-tune",
              device: torch.device | None = None) -> tuple[nn.Module, list]:
    """Fine-tune a copy of `model` on `clean` (on `device`, default the CPU); the `frozen` channels of the last
    conv layer stay at zero. Returns the copy (on the CPU) and the curve (epoch 0 = before; then one row per
    epoch)."""
    work = model_copy(model)
    if device is not None and device.type != "cpu":
        work.to(device)  # before the freezing hooks: their masks are made where the parameters are
    curve: list[dict[str, float]] = [{"epoch": 0, **(monitor(work) if monitor else {})}]
    hold = frozen_channels(prune_site(work), frozen) if frozen else contextlib.nullcontext()
    with hold:
        history = fit(work, clean, config, evaluate=monitor, description=description, device=device)
    curve += [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in history.epochs]
    return work.cpu().eval(), curve


@MITIGATIONS.register("fine-tuning")
class FineTuning:
    """Train on the clean set for `epochs` at a constant learning rate `lr`."""

    example_params: ClassVar[dict[str, Any]] = {"epochs": 1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"optimizer": "rmsprop"}, "optimizer"))
    param_help: ClassVar[dict[str, str]] = _TUNE_HELP

    def __init__(self, epochs: int = 10, lr: float = 0.01, *, batch_size: int = 64, optimizer: str = "sgd",
                 momentum: float = 0.9, weight_decay: float = 0.0, seed: int = 0, progress: bool = False,
                 device: str = "cpu") -> None:
        self.config = _tune_config(epochs, lr, batch_size, optimizer, momentum, weight_decay, seed, progress)
        self.device = resolve_device(device, what="fine-tuning")

    def params(self) -> dict[str, Any]:
        return self.config.to_dict()  # the device is recorded apart (it changes where, not what, is computed)

    def repair(self, model: nn.Module, clean: Dataset, *, monitor: Monitor | None = None) -> Repaired:
        start = time.perf_counter()
        check_clean_set(model, clean, "fine-tuning")
        before = clean_accuracy_of(model, clean)
        tuned, curve = fine_tune(model, clean, self.config, monitor=monitor, device=self.device)
        info = {"defense": "fine-tuning", "params": self.params(), "holdout_accuracy_before": before,
                "clean_samples": len(clean), "wall_time_s": time.perf_counter() - start}
        return Repaired(tuned, curve, info)


@MITIGATIONS.register("fine-pruning")
class FinePruning:
    """Pruning (stop before clean accuracy drops by more than `max_accuracy_drop`), then fine-tuning
    with the pruned channels held at zero. The curve holds the prune curve (`stage` "prune") followed
    by the fine-tuning epochs (`stage` "fine-tune")."""

    example_params: ClassVar[dict[str, Any]] = {"epochs": 1, "step": 32}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"lr": -1.0}, "lr"), ({"max_accuracy_drop": -0.1}, "max_accuracy_drop"), ({"step": 0}, "step"))
    param_help: ClassVar[dict[str, str]] = {
        **Pruning.param_help, **_TUNE_HELP, "full_curve": "Keep measuring the prune curve to 100% pruned.",
    }

    def __init__(self, max_accuracy_drop: float = 0.04, epochs: int = 10, lr: float = 0.01, *, step: int = 1,
                 full_curve: bool = True, batch_size: int = 64, optimizer: str = "sgd", momentum: float = 0.9,
                 weight_decay: float = 0.0, seed: int = 0, progress: bool = False, device: str = "cpu") -> None:
        check_fraction("max_accuracy_drop", max_accuracy_drop, low_open=False)
        self.device = resolve_device(device, what="fine-pruning")  # the fine-tuning's; pruning runs on the CPU
        self.pruning = Pruning(max_accuracy_drop, step=step, full_curve=full_curve, progress=progress)
        self.config = _tune_config(epochs, lr, batch_size, optimizer, momentum, weight_decay, seed, progress)

    def params(self) -> dict[str, Any]:
        return {**self.pruning.params(), **self.config.to_dict()}

    def repair(self, model: nn.Module, clean: Dataset, *, monitor: Monitor | None = None) -> Repaired:
        start = time.perf_counter()
        pruned = self.pruning.repair(model, clean, monitor=monitor)
        channels = pruned.info["pruned_channels"]
        tuned, tune_curve = fine_tune(pruned.model, clean, self.config, monitor=monitor, frozen=channels,
                                      description="fine-prune", device=self.device)
        curve = [{"stage": "prune", **row} for row in pruned.curve]
        curve += [{"stage": "fine-tune", **row} for row in tune_curve]
        info = {**pruned.info, "defense": "fine-pruning", "params": self.params(),
                "holdout_accuracy_after": clean_accuracy_of(tuned, clean),
                "wall_time_s": time.perf_counter() - start}
        return Repaired(tuned, curve, info)
