"""The seeded training loop: same seed, same weights.

The loop knows no defense. A caller that needs to change how batches are drawn and how a step is taken
(DP-SGD in defenses/dp.py: Poisson sampling, per-example clipping and noise) passes a `TrainAdapter`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.dataset import Dataset, DatasetInfo, to_float
from .errors import ConfigError, IncompatibleError
from .models import architecture_args, build_model
from .runtime import seeded

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    seed: int = 0
    threads: int | None = None  # read by the verbs layer, which sets the process's threads; fit does not
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            problems.append(f"epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not (_number(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite positive number, got {self.lr!r}")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and 0 <= self.seed < 2**63):
            problems.append(f"seed must be an integer in [0, 2**63), got {self.seed!r}")
        if not (_number(self.momentum) and 0 <= self.momentum < 1):
            problems.append(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("progress")
        return d


@dataclass
class TrainHistory:
    epochs: list[dict[str, float]] = field(default_factory=list)
    wall_time_s: float = 0.0
    privacy: dict[str, Any] | None = None  # DP-SGD runs: clip, noise, delta, epsilon (set by defenses/dp.py)


class TrainAdapter(Protocol):
    """Changes how `fit` draws batches and steps, for the duration of one call (DP-SGD is one).

    `fit` calls `prepare` once (after its own checks), then per step `indices` for the rows of the batch
    (an empty batch is a step that is skipped but counted), adds `epoch_record()` to every epoch's record,
    and calls `close` at the end, also when training or `prepare` itself raises."""

    def prepare(self, model: nn.Module, optimizer: torch.optim.Optimizer, n: int,
                config: TrainConfig) -> tuple[nn.Module, torch.optim.Optimizer]:
        """The module that computes the logits and the optimizer that steps (wrapping `model`'s)."""
        ...

    def indices(self, order: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """Row indices of step `step` of an epoch; `order` is the epoch's permutation, drawn from `generator`."""
        ...

    def epoch_record(self) -> dict[str, float]:
        """Entries added to the epoch's record (after the training metrics, before the evaluation's)."""
        ...

    def close(self) -> None:
        """Undo what `prepare` did to the model (hooks, attributes)."""
        ...


def create_model(architecture: str, info: DatasetInfo, seed: int) -> tuple[nn.Module, dict[str, Any]]:
    """A freshly initialised model for a dataset; initialisation is seeded."""
    args = architecture_args(info)
    with seeded(seed):
        return build_model(architecture, args), args


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    train_set: Dataset,
    config: TrainConfig,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    description: str = "train",
    *,
    adapter: TrainAdapter | None = None,
    extra_loss: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
) -> TrainHistory:
    """Train `model` in place on `train_set`; `evaluate(model)` runs after every epoch.

    Batches are drawn from an explicit generator seeded by `config.seed`; dropout draws from torch's
    global generator, which is seeded for the duration of the call and restored afterwards. `adapter`
    changes how batches are drawn and steps taken (see `TrainAdapter`); without it, each epoch is one
    pass over a seeded permutation in batches of `config.batch_size`. `extra_loss(net, x, y, step)` is added
    to every batch's cross-entropy (an adaptive attack's term against a defense). The process's thread count
    is the caller's business (the verbs layer sets it once).

    `device` (default: where the model's parameters are) is where the model is moved and every batch goes;
    the data and the batch order stay on the CPU, so the batches are the same on every device. The model is
    left on `device`: the caller moves it back before saving.
    """
    info = train_set.info
    device = torch.device(device) if device is not None else next((p.device for p in model.parameters()),
                                                                    torch.device("cpu"))
    if device.type != "cpu":  # on the CPU nothing moves: the CPU path stays exactly what it was
        model.to(device)
    with torch.no_grad():
        try:
            model.eval()
            out = model(to_float(train_set.images[:2]).to(device))
        except RuntimeError as exc:
            raise IncompatibleError(f"the model does not accept {info.name!r} inputs {info.input_shape}: {exc}") from None
    if out.shape[-1] != info.num_classes:
        raise IncompatibleError(f"the model has {out.shape[-1]} outputs, dataset {info.name!r} has {info.num_classes} classes")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(model, config)
    n = len(train_set)
    net = model
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = steps_per_epoch * config.epochs
    history = TrainHistory()
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    step = 0
    with contextlib.ExitStack() as stack:
        if adapter is not None:
            stack.callback(adapter.close)  # registered first: runs last, also when `prepare` fails half-way
            net, optimizer = adapter.prepare(model, optimizer, n, config)
        stack.enter_context(seeded(config.seed, device))
        bar = stack.enter_context(tqdm(total=total, desc=description, disable=not config.progress,
                                       unit="batch", mininterval=0.5, leave=False))
        for epoch in range(config.epochs):
            model.train()
            order = torch.randperm(n, generator=generator)
            loss_sum, correct = 0.0, 0
            epoch_start = time.perf_counter()
            for b in range(steps_per_epoch):
                if adapter is None:
                    idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                else:
                    idx = adapter.indices(order, b, generator)
                    if len(idx) == 0:
                        step += 1
                        bar.update(1)
                        continue
                x, y = to_float(train_set.images[idx]), train_set.labels[idx]
                if device.type != "cpu":
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                if config.schedule == "cosine":
                    for group in optimizer.param_groups:
                        group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                logits = net(x)
                loss = loss_fn(logits, y)
                if extra_loss is not None:
                    loss = loss + extra_loss(net, x, y, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(idx)
                correct += int((logits.argmax(1) == y).sum())
                step += 1
                bar.update(1)
            record = {
                "epoch": epoch + 1, "train_loss": loss_sum / n, "train_accuracy": correct / n,
                "epoch_time_s": time.perf_counter() - epoch_start,
            }
            if adapter is not None:
                record.update(adapter.epoch_record())
            if evaluate is not None:
                record.update(evaluate(model))
            history.epochs.append(record)
            bar.set_postfix({k: round(v, 4) for k, v in record.items() if k in ("train_loss", "clean_accuracy")})
            if not math.isfinite(record["train_loss"]):
                raise ConfigError(f"training diverged (loss {record['train_loss']}) at epoch {epoch + 1}; lower lr")
    model.eval()
    history.wall_time_s = time.perf_counter() - start
    return history
