"""Client-training engines: local SGD of many clients from the same global weights.

Both engines take the same inputs and return the same [n_clients, n_params] stack of updates
(w_local - w_global, flat in `model.named_parameters()` order):

- `sequential`: one client after another with ordinary autograd (the obvious reference).
- `vectorised`: all clients of a round at once with torch.func (functional_call + vmap + grad). Clients
  hold different numbers of samples, so every client's batches are padded to the longest client's step
  count and a 0/1 mask drops the padding from the loss; a step whose batch is all padding has zero
  gradient and leaves that client's weights unchanged, exactly as if it had not been taken.

Shuffling comes from one explicit generator per client (seeded from the run seed, round and client id),
so both engines see identical batches; for dropout-free models they agree to float rounding (tested to
1e-5). Dropout draws from torch's global generator inside `runtime.seeded`, so with dropout the two
engines are statistically, not bitwise, equivalent. BatchNorm running statistics cannot be updated
under vmap, so models with BatchNorm train with the sequential engine only.

`choose_engine` picks the faster engine by measurement (see its docstring): which one wins depends on the
model, the round's client sizes (vmap pads every client to the longest), threads and device. On 2 CPU cores
with torch 2.13 the loop won for both badnet-mnist and the 1.2M-parameter EMNIST CNN (docs/federated.md);
an earlier torch measured vmap ahead for the small CNN; on a GPU vmap should win widely.
`EngineChooser` memoises those choices; its cache belongs to whoever holds the chooser (the round
pipeline's caller), never to the module.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from ..data.dataset import to_float
from ..errors import ConfigError, IncompatibleError
from ..registry import Registry
from ..runtime import seeded


@dataclass(frozen=True)
class LocalTraining:
    """Client-side SGD: `epochs` passes over the client's data in shuffled batches of `batch_size`."""

    epochs: int = 5
    batch_size: int = 20
    lr: float = 0.1

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.epochs, int) or self.epochs < 1:
            problems.append(f"local epochs must be a positive integer, got {self.epochs!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            problems.append(f"client lr must be positive, got {self.lr!r}")
        if problems:
            raise ConfigError("; ".join(problems))


def flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def load_flat(model: nn.Module, flat: torch.Tensor) -> None:
    """Copy flat weights into the model (a copy: vector_to_parameters alone would alias `flat`)."""
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat.detach().clone().to(next(model.parameters())),
                                            model.parameters())


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def client_orders(n: int, epochs: int, generator: torch.Generator) -> torch.Tensor:
    """[epochs, n] permutations of range(n), one per epoch."""
    return torch.stack([torch.randperm(n, generator=generator) for _ in range(epochs)])


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def sgd_local(
    model: nn.Module, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
    seed: int, cfg: LocalTraining, project: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Plain SGD from flat weights `start` on samples `index` of (images, labels); returns w_end - start.

    `project` maps the current displacement w - start to an allowed one after every step (PGD).
    Works on a copy of `model` (the caller's model is left as it was); computes in `start`'s dtype."""
    model = copy.deepcopy(model).to(start.dtype)
    load_flat(model, start)
    model.train()
    params = list(model.parameters())
    orders = client_orders(len(index), cfg.epochs, _generator(seed))
    steps = 0
    for e in range(cfg.epochs):
        for b in range(0, len(index), cfg.batch_size):
            idx = index[orders[e, b : b + cfg.batch_size]]
            x, y = to_float(images[idx]).to(start), labels[idx].to(start.device)
            loss = F.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=False):
                    p.sub_(cfg.lr * g)
                if project is not None:
                    load_flat(model, start + project(flat_params(model) - start))
            steps += 1
            if max_steps is not None and steps >= max_steps:
                return flat_params(model) - start
    return flat_params(model) - start


class Engine:
    """Trains clients `indices` (sample indices into images/labels) from flat weights `start` and returns
    their updates [n, d]; client k's batches come from a generator seeded with `seeds[k]`. Every engine
    must agree with `sgd_local` per client (the sequential reference) on dropout-free models."""

    name: ClassVar[str] = "engine"
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"threads": 2}, "no parameter"),)
    param_help: ClassVar[dict[str, str]] = {}

    def train(
        self, model: nn.Module, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
        indices: Sequence[torch.Tensor], seeds: Sequence[int], cfg: LocalTraining, max_steps: int | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement train()")


ENGINES: Registry[type[Engine]] = Registry("client-training engine")


def engine_choices() -> list[str]:
    """What `federation.engine` accepts: "auto" (chosen by measurement) or a registered engine."""
    return ["auto", *ENGINES.names()]


@ENGINES.register("sequential")
class SequentialEngine(Engine):
    """One client after another with ordinary autograd (the obvious reference)."""

    name = "sequential"

    def train(self, model, start, images, labels, indices, seeds, cfg, max_steps=None):
        out = [sgd_local(model, start, images, labels, idx, s, cfg, max_steps=max_steps)
               for idx, s in zip(indices, seeds, strict=False)]
        return torch.stack(out) if out else start.new_zeros((0, start.numel()))


@ENGINES.register("vectorised")
class VectorisedEngine(Engine):
    """All clients of a round at once with torch.func (functional_call + vmap + grad), padded and masked."""

    name = "vectorised"

    def train(self, model, start, images, labels, indices, seeds, cfg, max_steps=None):
        if has_batchnorm(model):
            raise IncompatibleError(
                "the vectorised engine cannot update BatchNorm statistics under vmap; use engine='sequential'"
            )
        n = len(indices)
        if n == 0:
            return start.new_zeros((0, start.numel()))
        device = start.device
        names = [k for k, _ in model.named_parameters()]
        shapes = [p.shape for _, p in model.named_parameters()]
        sizes = [math.prod(s) for s in shapes]
        buffers = {k: b.to(start.dtype) for k, b in model.named_buffers()}
        params = {k: c.reshape(s).unsqueeze(0).repeat(n, *([1] * len(s))).clone()
                  for k, c, s in zip(names, start.split(sizes), shapes, strict=False)}
        b_sz = cfg.batch_size
        steps = max(math.ceil(len(i) / b_sz) for i in indices)
        width = steps * b_sz
        # [n, epochs, width] global sample indices, padded, and the mask of real samples
        glob = torch.zeros((n, cfg.epochs, width), dtype=torch.int64)
        mask = torch.zeros((n, cfg.epochs, width), dtype=torch.float32)
        for k, (idx, s) in enumerate(zip(indices, seeds, strict=False)):
            orders = client_orders(len(idx), cfg.epochs, _generator(s))
            glob[k, :, : len(idx)] = idx[orders]
            mask[k, :, : len(idx)] = 1.0
        mask = mask.to(start)

        def loss_fn(p, x, y, m):
            logits = functional_call(model, {**p, **buffers}, (x,))
            ce = F.cross_entropy(logits, y, reduction="none")
            return (ce * m).sum() / m.sum().clamp(min=1.0)

        step_grad = vmap(grad(loss_fn), randomness="different")
        model.train()
        done = 0
        for e in range(cfg.epochs):
            for s in range(steps):
                sl = slice(s * b_sz, (s + 1) * b_sz)
                idx = glob[:, e, sl]
                x = to_float(images[idx]).to(start)
                y = labels[idx].to(device)
                g = step_grad(params, x, y, mask[:, e, sl])
                with torch.no_grad():
                    for k in names:
                        params[k].sub_(cfg.lr * g[k])
                done += 1
                if max_steps is not None and done >= max_steps:
                    break
            if max_steps is not None and done >= max_steps:
                break
        flat = torch.cat([params[k].reshape(n, -1) for k in names], dim=1)
        return flat - start.unsqueeze(0)


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES.names())}, got {name!r}")
    return ENGINES.get(name)()


def choose_engine(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[torch.Tensor],
    cfg: LocalTraining, repeats: int = 2, min_time_s: float = 0.3,
) -> tuple[str, dict[str, float]]:
    """The faster engine for this model, device, thread count and round shape, by measurement.

    Sequential: whole clients are trained for one epoch (at least two, and until `min_time_s` has passed),
    so that the per-client set-up is counted as often as in a real round (timing single steps counted it
    once per step and overestimated a badnet-mnist round by 40%). Vectorised: `repeats` vmapped steps
    over all the clients after one warm-up step. A round is then predicted as: sequential = time per
    client step x sum_k ceil(n_k / B); vectorised = time per vmapped step x max_k ceil(n_k / B) (it pads
    every client to the longest). Models with BatchNorm always get `sequential`. Not memoised: see
    `EngineChooser`."""
    if has_batchnorm(model):
        return "sequential", {}
    device = next(model.parameters()).device
    start = flat_params(model).to(device)
    steps = [math.ceil(len(i) / cfg.batch_size) for i in indices]
    one = LocalTraining(1, cfg.batch_size, cfg.lr)
    seeds = list(range(len(indices)))
    timing = {}
    with seeded(0):
        seq, vec = SequentialEngine(), VectorisedEngine()
        seq.train(model, start, images, labels, indices[:1], seeds[:1], one, max_steps=1)
        t0, done = time.perf_counter(), 0
        for i in range(len(indices)):
            seq.train(model, start, images, labels, indices[i:i + 1], seeds[i:i + 1], one)
            done += steps[i]
            if i >= 1 and time.perf_counter() - t0 >= min_time_s:
                break
        timing["sequential_step_s"] = (time.perf_counter() - t0) / done
        vec.train(model, start, images, labels, indices, seeds, one, max_steps=1)
        t0 = time.perf_counter()
        vec.train(model, start, images, labels, indices, seeds, one, max_steps=repeats)
        timing["vectorised_step_s"] = (time.perf_counter() - t0) / repeats
    timing["sequential_epoch_s"] = timing["sequential_step_s"] * sum(steps)
    timing["vectorised_epoch_s"] = timing["vectorised_step_s"] * max(steps)
    name = "vectorised" if timing["vectorised_epoch_s"] < timing["sequential_epoch_s"] else "sequential"
    return name, timing


@dataclass
class EngineChooser:
    """`choose_engine`, memoised per (architecture, parameter count, device, threads, clients, batch) in
    `choices`, an attribute of this object: the runs that share a chooser share its measurements."""

    choices: dict[tuple, tuple[str, dict[str, float]]] = field(default_factory=dict)

    def choose(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
               indices: Sequence[torch.Tensor], cfg: LocalTraining) -> tuple[str, dict[str, float]]:
        device = next(model.parameters()).device
        n_par = sum(p.numel() for p in model.parameters())
        key = (type(model).__name__, n_par, str(device), torch.get_num_threads(), len(indices), cfg.batch_size)
        if key not in self.choices:
            self.choices[key] = choose_engine(model, images, labels, indices, cfg)
        return self.choices[key]
