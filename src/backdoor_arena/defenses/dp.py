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

`private_fit(model, train_set, config, clip=, noise=, delta=)` trains in place with DP-SGD: it runs
the ordinary training loop (`train.fit`) with `PrivateTraining` as its `TrainAdapter`; the loop itself
knows nothing of privacy. `DPSGD` is the registered robust trainer:
`DPSGD(...).fit(dataset) -> PrivatelyTrained(model, epsilon, delta, ...)`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError, IncompatibleError
from ..train import TrainConfig, TrainHistory, create_model, fit
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
    """The `TrainAdapter` of DP-SGD, for one `fit`: `prepare` wraps the model (per-example gradients) and
    the optimizer (clipping and noise), `indices` Poisson-samples each batch and accounts for the step,
    `close` removes every Opacus hook and attribute, leaving a plain model. Poisson sampling draws from
    the training loop's generator; the noise from its own generator, seeded from the training seed, so
    that the same seed gives the same noise and the batch order is not disturbed."""

    def __init__(self, *, clip: float, noise: float, delta: float) -> None:
        self.clip, self.noise, self.delta = clip, noise, delta
        self.n, self.sample_rate = 0, 0.0
        self.module: nn.Module | None = None
        self.accountant: Any = None
        self._warnings: Any = None

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, n: int,
                config: TrainConfig) -> tuple[nn.Module, torch.optim.Optimizer]:
        from opacus import GradSampleModule
        from opacus.accountants import RDPAccountant
        from opacus.optimizers import DPOptimizer

        check_private_model(model)
        self.n = n
        self.sample_rate = min(1.0, config.batch_size / n)
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        # Opacus' full backward hooks warn when the input needs no gradient (always, for images)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        self.module = GradSampleModule(model, loss_reduction="mean")
        dp_optimizer = DPOptimizer(optimizer, noise_multiplier=self.noise, max_grad_norm=self.clip,
                                   expected_batch_size=config.batch_size, loss_reduction="mean",
                                   generator=torch.Generator().manual_seed(config.seed + 7919))
        self.accountant = RDPAccountant()
        return self.module, dp_optimizer

    def indices(self, order: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """One Poisson-sampled batch (possibly empty) of row indices, accounted as one noisy step (an empty
        batch is still a step of the mechanism). The epoch's permutation is not used."""
        idx = torch.nonzero(torch.rand(self.n, generator=generator) < self.sample_rate).flatten()
        self.accountant.step(noise_multiplier=self.noise, sample_rate=self.sample_rate)
        return idx

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(self.delta)) if self.accountant and self.accountant.history else 0.0

    def epoch_record(self) -> dict[str, float]:
        return {"epsilon": self.epsilon()}

    def record(self) -> dict[str, Any]:
        steps = sum(h[2] for h in self.accountant.history) if self.accountant else 0
        return {"mechanism": "dp-sgd", "library": "opacus", "accountant": "rdp", "sampling": "poisson",
                "clip": self.clip, "noise_multiplier": self.noise, "delta": self.delta,
                "sample_rate": self.sample_rate, "steps": steps, "epsilon": self.epsilon()}

    def close(self) -> None:
        """Safe to call after a `prepare` that failed half-way, and more than once."""
        try:
            if self.module is None:
                return
            model = self.module.to_standard_module()  # removes hooks and grad_sample attributes
            for p in model.parameters():  # the DP optimizer's own per-parameter scratch
                for attr in ("summed_grad", "grad_sample", "_forward_counter"):
                    if hasattr(p, attr):
                        delattr(p, attr)
        finally:
            self.module = None
            if self._warnings is not None:
                self._warnings.__exit__(None, None, None)
                self._warnings = None


def private_fit(model: nn.Module, train_set: Dataset, config: TrainConfig, *, clip: float, noise: float,
                delta: float, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
                description: str = "dp-sgd") -> TrainHistory:
    """Train `model` in place with DP-SGD (per-example clipping to `clip`, noise multiplier `noise`, Poisson
    sampling at rate batch/n); `config` as for `train.fit` (its seed also seeds the noise). The history's
    epochs carry the running "epsilon" at `delta`; `history.privacy` the accountant's record for the run."""
    problems = check_dp_params(clip, noise, delta)
    if clip is None or noise is None:
        problems = problems or ["DP-SGD needs both dp_clip (--dp-clip) and dp_noise (--dp-noise)"]
    if problems:
        raise ConfigError("; ".join(problems))
    adapter = PrivateTraining(clip=clip, noise=noise, delta=delta)
    history = fit(model, train_set, config, evaluate=evaluate, description=description, adapter=adapter)
    history.privacy = adapter.record()
    return history


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

    example_params: ClassVar[dict[str, Any]] = {"architecture": "emnist-cnn", "epochs": 1, "batch_size": 32}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"noise": -1.0}, "noise"), ({"clip": 0}, "clip"), ({"delta": 2}, "delta"), ({"epochs": 0}, "epochs"),
        ({"architecture": "resnet-9000"}, "unknown model"))
    param_help: ClassVar[dict[str, str]] = {
        "architecture": "The architecture to train (BatchNorm-free: badnet-mnist, emnist-cnn).",
        "clip": "Per-example gradient norm bound C.",
        "noise": "Noise multiplier: Gaussian noise of std noise x clip is added to each summed gradient.",
        "delta": "The delta at which epsilon is reported, in (0, 1).",
        "epochs": "Training epochs (an epoch is n / batch_size Poisson-sampled steps).",
        "batch_size": "Expected batch size (sample rate = batch_size / n).",
        "lr": "Learning rate (cosine schedule).",
        "momentum": "SGD momentum, in [0, 1).",
        "seed": "Seed of the initialisation, the sampling and the noise.",
        "progress": "Show a progress bar.",
    }

    def __init__(self, architecture: str = "badnet-mnist", *, clip: float = 1.0, noise: float = 1.0,
                 delta: float = 1e-5, epochs: int = 2, batch_size: int = 128, lr: float = 0.1,
                 momentum: float = 0.9, seed: int = 0, progress: bool = False) -> None:
        from ..models import MODELS

        MODELS.get(architecture)
        problems = check_dp_params(clip, noise, delta)
        if problems:
            raise ConfigError("; ".join(problems))
        self.architecture = architecture
        self.clip, self.noise, self.delta = clip, noise, delta
        self.config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, seed=seed,
                                  progress=progress)

    def params(self) -> dict[str, Any]:
        return {"architecture": self.architecture, **self.config.to_dict(), "dp_clip": self.clip,
                "dp_noise": self.noise, "dp_delta": self.delta}

    def fit(self, dataset: Dataset) -> PrivatelyTrained:
        model, _ = create_model(self.architecture, dataset.info, self.config.seed)
        history = private_fit(model, dataset, self.config, clip=self.clip, noise=self.noise, delta=self.delta,
                              description=f"dp-sgd {self.architecture}")
        privacy = history.privacy or {}
        return PrivatelyTrained(model, privacy.get("epsilon", math.inf), self.delta, history.epochs, privacy)
