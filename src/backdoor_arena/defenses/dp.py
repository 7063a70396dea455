"""DP-SGD (Abadi et al. 2016) as a defense against poisoning (Hong et al. 2020), with Opacus.

Each example's gradient is clipped to norm `clip`, Gaussian noise of std `noise * clip` is added to
the sum, and batches are Poisson-sampled (each example joins a step with probability batch/n), which
is the sampling Opacus' RDP accountant assumes, so the reported epsilon (for `delta`) is the
accountant's guarantee for the whole run. A poisoned example can then move the model only as much as
any other example: that bounded influence is what blunts a backdoor, at some cost in accuracy.

Per-example gradients need layers whose output for one example does not depend on the others:
BatchNorm breaks this, so DP-SGD applies to the BN-free architectures (badnet-mnist, emnist-cnn).
Replacing BN by GroupNorm (Opacus' ModuleValidator.fix) would change the architecture and so the
model file format; we refuse such models with a one-line error instead.

`PrivateTraining` is what `train.fit` uses when a TrainConfig has `dp_clip` set; `DPSGD` is the
registered robust trainer: `DPSGD(...).fit(dataset) -> PrivatelyTrained(model, epsilon, delta, ...)`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError, IncompatibleError
from . import ROBUST_TRAINERS


def check_dp_params(clip: float | None, noise: float | None, delta: float) -> list[str]:
    """Problems with DP-SGD parameters, one sentence each (empty when fine or when DP is off)."""
    if clip is None and noise is None:
        return []
    problems = []
    if clip is None or noise is None:
        problems.append("DP-SGD needs both dp_clip (--dp-clip) and dp_noise (--dp-noise)")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0 and math.isfinite(clip)):
        problems.append(f"dp_clip must be a positive per-example gradient norm, got {clip!r}")
    if noise is not None and not (isinstance(noise, (int, float)) and noise > 0 and math.isfinite(noise)):
        problems.append(f"dp_noise must be a positive noise multiplier, got {noise!r}")
    if not 0 < delta < 1:
        problems.append(f"dp_delta must be in (0, 1), got {delta!r}")
    return problems


def check_private_model(model: nn.Module) -> None:
    """Refuse models Opacus cannot train with per-example gradients (BatchNorm), in one line."""
    from opacus.validators import ModuleValidator

    was_training = model.training
    model.train()  # the validator also insists on training mode, which fit sets itself
    try:
        errors = ModuleValidator.validate(model, strict=False)
    finally:
        model.train(was_training)
    if errors:
        bad = sorted({type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)})
        what = ", ".join(bad) or "; ".join(str(e).split(".")[0] for e in errors[:2])
        raise IncompatibleError(
            f"DP-SGD needs per-example gradients, which this model's {what} layers do not allow; "
            f"use a BatchNorm-free architecture (badnet-mnist, emnist-cnn)"
        )


class PrivateTraining:
    """Wraps a model and optimizer for DP-SGD for the duration of one `fit`; `close()` removes every
    Opacus hook and attribute, leaving a plain model. Poisson sampling draws from the caller's generator."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, clip: float, noise: float,
                 delta: float, batch_size: int, n: int, seed: int) -> None:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer

        check_private_model(model)
        self.clip, self.noise, self.delta, self.n = clip, noise, delta, n
        self.sample_rate = min(1.0, batch_size / n)
        self.module = GradSampleModule(model, loss_reduction="mean")
        # the noise has its own generator: same seed, same noise, and the batch order is not disturbed
        self.optimizer = DPOptimizer(optimizer, noise_multiplier=noise, max_grad_norm=clip,
                                     expected_batch_size=batch_size, loss_reduction="mean",
                                     generator=torch.Generator().manual_seed(seed + 7919))
        self.accountant = RDPAccountant()
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # Opacus' full backward hooks warn when the input needs no gradient (always, for images)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")

    def sample(self, generator: torch.Generator) -> torch.Tensor:
        """One Poisson-sampled batch (possibly empty) of row indices."""
        return torch.nonzero(torch.rand(self.n, generator=generator) < self.sample_rate).flatten()

    def step(self) -> None:
        """Account for one noisy step (also for an empty batch, which is still a step of the mechanism)."""
        self.accountant.step(noise_multiplier=self.noise, sample_rate=self.sample_rate)

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant.history else 0.0

    def record(self) -> dict[str, Any]:
        return {"mechanism": "dp-sgd", "library": "opacus", "accountant": "rdp", "sampling": "poisson",
                "clip": self.clip, "noise_multiplier": self.noise, "delta": self.delta,
                "sample_rate": self.sample_rate, "steps": sum(h[2] for h in self.accountant.history),
                "epsilon": self.epsilon()}

    def close(self) -> None:
        try:
            model = self.module.to_standard_module()  # removes hooks and grad_sample attributes
            for p in model.parameters():  # the DP optimizer's own per-parameter scratch
                for attr in ("summed_grad", "grad_sample", "_forward_counter"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        finally:
            self._warnings.__exit__(None, None, None)


@dataclass(frozen=True, eq=False)
class PrivatelyTrained:
    """A robust trainer's output: the model and its certificate (epsilon at delta) plus the history."""

    model: nn.Module
    epsilon: float
    delta: float
    history: list[dict[str, float]] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)


@ROBUST_TRAINERS.register("dp-sgd")
class DPSGD:
    """Train a fresh model on a (possibly poisoned) dataset with DP-SGD; the certificate is (epsilon, delta)."""

    def __init__(self, architecture: str = "badnet-mnist", *, clip: float = 1.0, noise: float = 1.0,
                 delta: float = 1e-5, epochs: int = 2, batch_size: int = 128, lr: float = 0.1,
                 momentum: float = 0.9, seed: int = 0, progress: bool = False) -> None:
        from ..models import MODELS
        from ..train import TrainConfig

        MODELS.get(architecture)
        problems = check_dp_params(clip, noise, delta)
        if problems:
            raise ConfigError("; ".join(problems))
        self.architecture = architecture
        self.config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, seed=seed,
                                  progress=progress, dp_clip=clip, dp_noise=noise, dp_delta=delta)

    def params(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **self.config.to_dict()}

    def fit(self, dataset: Dataset) -> PrivatelyTrained:
        from ..train import create_model, fit

        model, _ = create_model(self.architecture, dataset.info, self.config.seed)
        history = fit(model, dataset, self.config, description=f"dp-sgd {self.architecture}")
        privacy = history.privacy or {}
        return PrivatelyTrained(model, privacy.get("epsilon", math.inf), self.config.dp_delta, history.epochs, privacy)
