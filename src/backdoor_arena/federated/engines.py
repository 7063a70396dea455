"""Client-training engines: local SGD of many clients from the same global weights.

The engines take the same inputs and return the same [n_clients, n_params] stack of updates
(w_local - w_global, flat in `model.named_parameters()` order):

- `sequential`: one client after another with ordinary autograd (the obvious reference).
- `vectorised`: all clients of a round at once with torch.func (functional_call + vmap + grad). Clients
  hold different numbers of samples, so every client's batches are padded to the longest client's step
  count and a 0/1 mask drops the padding from the loss; a step whose batch is all padding has zero
  gradient and leaves that client's weights unchanged, exactly as if it had not been taken.
- `processes`: the clients of a round shared among forked single-thread worker processes, one per thread of
  the caller's budget (on batch-20 convolutions one thread per client uses two cores better than two
  threads on one client). Each client runs the sequential arithmetic with one thread, so its update is
  bit-identical to `sequential` at one thread for dropout-free models (tested); with dropout each client
  draws from its own stream, so the result does not depend on the number of workers.

Shuffling comes from one explicit generator per client (seeded from the run seed, round and client id),
so both engines see identical batches; for dropout-free models they agree to float rounding (tested to
1e-5). Dropout draws from torch's global generator inside `runtime.seeded`, so with dropout the two
engines are statistically, not bitwise, equivalent. BatchNorm running statistics cannot be updated
under vmap, so models with BatchNorm train with the sequential engine only.

`choose_engine` picks the faster engine by measurement (see its docstring): which one wins depends on the
model, the round's client sizes (vmap pads every client to the longest), threads and device. On 2 CPU cores
with torch 2.13 the loop won over vmap for both badnet-mnist and the 1.2M-parameter EMNIST CNN
(docs/federated.md); an earlier torch measured vmap ahead for the small CNN; on a GPU vmap should win widely.
`engine = "auto"` (`EngineChooser`) also measures `processes` where it can run (Linux, >= 2 threads):
benchmarks/bench_rounds.py compares it with the others and with Flower.
`EngineChooser` memoises those choices; its cache belongs to whoever holds the chooser (the round
pipeline's caller), never to the module.
"""

from __future__ import annotations

import contextlib
import copy
import math
import multiprocessing
import os
import queue
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
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


def has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def conv_layout(model: nn.Module, on: bool) -> torch.memory_format:
    """The memory format client training uses: channels-last for convolutional models (oneDNN's batch-20
    convolutions run 10-25% faster in it on CPU, forward and backward), contiguous otherwise. Applied after
    every `load_flat`, which leaves parameters contiguous. Only the layout changes, not the values."""
    fmt = torch.channels_last if on else torch.contiguous_format
    if on:
        model.to(memory_format=fmt)
    return fmt


def _laid_out(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    return x.contiguous(memory_format=fmt) if x.ndim == 4 else x


def sgd_step(params: list[torch.Tensor], grads: Sequence[torch.Tensor], lr: float) -> None:
    """p <- p - lr * g for all parameters in one fused call (every engine uses this one step, so that they
    agree bit for bit)."""
    with torch.no_grad():
        torch._foreach_add_(params, list(grads), alpha=-lr)


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
    conv = has_conv2d(model)
    load_flat(model, start)
    fmt = conv_layout(model, conv)
    model.train()
    params = list(model.parameters())  # the same objects after load_flat, which replaces their data
    orders = client_orders(len(index), cfg.epochs, _generator(seed))
    steps = 0
    for e in range(cfg.epochs):
        for b in range(0, len(index), cfg.batch_size):
            idx = index[orders[e, b : b + cfg.batch_size]]
            x, y = _laid_out(to_float(images[idx]).to(start), fmt), labels[idx].to(start.device)
            loss = F.cross_entropy(model(x), y)
            sgd_step(params, torch.autograd.grad(loss, params), cfg.lr)
            if project is not None:
                load_flat(model, start + project(flat_params(model) - start))
                conv_layout(model, conv)
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
                sgd_step([params[k] for k in names], [g[k] for k in names], cfg.lr)
                done += 1
                if max_steps is not None and done >= max_steps:
                    break
            if max_steps is not None and done >= max_steps:
                break
        flat = torch.cat([params[k].reshape(n, -1) for k in names], dim=1)
        return flat - start.unsqueeze(0)


def dropout_seed(seed: int) -> int:
    """The seed of a client's own dropout stream in the `processes` engine (derived from its batch seed, so
    that a client's update does not depend on which worker trained it, nor on the clients before it)."""
    return int(np.random.SeedSequence([int(seed), 1]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class LocalTrainer:
    """`sgd_local` without its per-client and per-step overheads, bit for bit the same arithmetic: one working
    copy of the model for all clients (its parameters loaded from `start`, its buffers reset from the
    original model before every client, as a fresh deep copy would have them), the client's images converted
    to float once (the same element-wise conversion as per batch), the same layout (`conv_layout`) and the
    same fused step (`sgd_step`)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.work: nn.Module | None = None
        self.dtype: torch.dtype | None = None
        self.conv = False

    def __call__(self, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor,
                 seed: int, cfg: LocalTraining, max_steps: int | None = None) -> torch.Tensor:
        if self.work is None or self.dtype != start.dtype:
            self.work = copy.deepcopy(self.model).to(start.dtype)
            self.dtype = start.dtype
            self.conv = has_conv2d(self.work)
        work = self.work
        with torch.no_grad():
            for b, b0 in zip(work.buffers(), self.model.buffers(), strict=True):
                b.copy_(b0)
        load_flat(work, start)
        fmt = conv_layout(work, self.conv)
        work.train()
        params = list(work.parameters())
        orders = client_orders(len(index), cfg.epochs, _generator(seed))
        xs = to_float(images[index]).to(start)
        ys = labels[index].to(start.device)
        steps = 0
        for e in range(cfg.epochs):
            for b in range(0, len(index), cfg.batch_size):
                pick = orders[e, b: b + cfg.batch_size]
                loss = F.cross_entropy(work(_laid_out(xs[pick], fmt)), ys[pick])
                sgd_step(params, torch.autograd.grad(loss, params), cfg.lr)
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    return flat_params(work) - start
        return flat_params(work) - start


def _train_one(trainer: LocalTrainer, start: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
               index: torch.Tensor, seed: int, cfg: LocalTraining, max_steps: int | None,
               seconds: list[float] | None = None) -> torch.Tensor:
    """One client's update; its training time is appended to `seconds` when given."""
    began = time.perf_counter()
    with seeded(dropout_seed(seed)):
        update = trainer(start, images, labels, index, seed, cfg, max_steps)
    if seconds is not None:
        seconds.append(time.perf_counter() - began)
    return update


def can_fork() -> bool:
    """Worker processes are forked (they inherit the model and the uint8 images without copying them): Linux,
    and not from a daemonic process (multiprocessing forbids those children, e.g. inside a pool's worker)."""
    return (sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
            and not multiprocessing.current_process().daemon)


def _worker_loop(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor,
                 out: torch.Tensor, tasks: Any, done: Any) -> None:
    """A forked worker: one torch thread; trains the clients it takes from `tasks` from the weights in the
    shared `start` and writes each update into its row of the shared `out`."""
    torch.set_num_threads(1)
    trainer = LocalTrainer(model)
    parent = os.getppid()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent died without stopping us (killed): stop too
                return
            continue
        if task is None:
            return
        row, index, seed, (epochs, batch_size, lr), max_steps = task
        began = time.perf_counter()
        try:
            idx = torch.from_numpy(np.frombuffer(index, dtype=np.int64).copy())
            out[row] = _train_one(trainer, start, images, labels, idx, seed, LocalTraining(epochs, batch_size, lr),
                                  max_steps)
            done.put((row, None, time.perf_counter() - began))
        except BaseException:  # noqa: BLE001 - reported to the parent, which raises
            done.put((row, traceback.format_exc(), time.perf_counter() - began))


def _stop_workers(procs: list, tasks: Any) -> None:
    for _ in procs:
        try:
            tasks.put(None)
        except (OSError, ValueError):
            break
    with contextlib.suppress(OSError, ValueError):
        tasks.close()
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.terminate()
            p.join(timeout=2.0)


def _copy_one_thread(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst <- src without torch's thread pool: a parallel copy in the parent leaves its OpenMP threads spinning
    on the cores the workers train on (rounds took about 40% longer that way, timed on 2 cores)."""
    if src.dtype in (torch.float32, torch.float64) and src.device.type == "cpu":
        np.copyto(dst.numpy(), src.numpy())
    else:
        dst.copy_(src)


class _WorkerPool:
    """`workers` forked single-thread processes bound to one (model, images, labels, dtype, d); the start
    weights and the updates travel through shared memory, the tasks (row, sample indices, seed) through a
    pipe. Stopped when the pool is garbage-collected (weakref.finalize) or the interpreter exits (daemons)."""

    def __init__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, d: int,
                 capacity: int, workers: int) -> None:
        ctx = multiprocessing.get_context("fork")
        self.key = _pool_key(model, images, labels, dtype, d, workers)
        self.capacity = capacity
        self.start = torch.zeros(d, dtype=dtype).share_memory_()
        self.out = torch.zeros((capacity, d), dtype=dtype).share_memory_()
        self.tasks = ctx.Queue()
        self.done = ctx.Queue()
        started = time.perf_counter()
        self.procs = [ctx.Process(target=_worker_loop, daemon=True, name=f"backdoor-arena-engine-{i}",
                                  args=(model, images, labels, self.start, self.out, self.tasks, self.done))
                      for i in range(workers)]
        for p in self.procs:
            p.start()
        self.start_s = time.perf_counter() - started
        self.client_s: list[float] = []  # the last run's training seconds per client, measured in the workers
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.tasks)

    def close(self) -> None:
        self._finalizer()

    def run(self, start: torch.Tensor, indices: Sequence[torch.Tensor], seeds: Sequence[int], cfg: LocalTraining,
            max_steps: int | None) -> torch.Tensor:
        n = len(indices)
        self.start.copy_(start)
        order = sorted(range(n), key=lambda k: -len(indices[k]))  # longest first: the last clients are short
        params = (cfg.epochs, cfg.batch_size, cfg.lr)
        errors: list[str] = []
        # each finished client's row is copied out while the others still train (the caller's result must not
        # alias the shared buffer the next round overwrites); a clone of the whole buffer after the last client
        # would sit on the round's critical path (34 MB for 30 badnet-mnist clients, 480 MB for 100 x 1.2M)
        result = torch.empty((n, self.out.shape[1]), dtype=self.out.dtype)
        self.client_s = [0.0] * n
        try:
            for k in order:
                self.tasks.put((k, indices[k].to(torch.int64).cpu().numpy().tobytes(), int(seeds[k]), params,
                                max_steps))
            remaining = n
            while remaining:
                try:
                    row, err, seconds = self.done.get(timeout=1.0)
                except queue.Empty:
                    dead = [p.name for p in self.procs if not p.is_alive()]
                    if dead:
                        raise RuntimeError(f"worker process(es) {', '.join(dead)} of the processes engine died "
                                           f"(killed, or out of memory?)") from None
                    continue
                remaining -= 1
                self.client_s[row] = seconds
                if err is not None:
                    errors.append(err)
                else:
                    _copy_one_thread(result[row], self.out[row])
        except BaseException:
            self.close()  # tasks may be left in the pipe: never reuse these workers
            raise
        if errors:
            raise RuntimeError(f"{len(errors)} client(s) failed in the processes engine; the first:\n{errors[0]}")
        return result


def _pool_key(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype, d: int,
              workers: int) -> tuple:
    """What the forked workers hold: the model object (its structure, parameter dtypes and buffers, by
    version), the data tensors, the dtype and size of the updates, the number of workers."""
    tensors = [(k, b.data_ptr(), b._version, b.dtype) for k, b in model.named_buffers()]
    tensors += [(k, p.dtype, tuple(p.shape)) for k, p in model.named_parameters()]
    return (id(model), tuple(tensors), images.data_ptr(), images._version, tuple(images.shape), labels.data_ptr(),
            labels._version, dtype, d, workers)


@ENGINES.register("processes")
class ProcessEngine(Engine):
    """The round's clients trained in parallel by single-thread worker processes, one per thread of the
    caller's budget (`torch.get_num_threads()`, e.g. BACKDOOR_ARENA_THREADS): on small models (batch-20
    convolutions) one thread per client uses the cores better than several threads on one client.

    Each client runs `sgd_local` (the sequential reference) with one thread, so its update is bit-identical
    to the sequential engine's at one thread for dropout-free models (with more threads the sequential
    engine's reductions are split differently: equal to float rounding). Dropout draws from a per-client
    stream (`dropout_seed` of its batch seed), so the result does not depend on the number of workers or the
    order the clients are trained in. The workers are forked once (Linux; they inherit the model and the
    uint8 images without copying) and kept for the next rounds as long as the model, data and thread budget
    stay the same; clients are handed out longest first from one queue. With a budget of one thread, or
    without fork, the clients are trained in this process (same per-client streams)."""

    name = "processes"

    def __init__(self) -> None:
        self._pool: _WorkerPool | None = None
        # the last call's training seconds per client (measured where the client trained) and the number of
        # processes that trained them: what a round costs beyond its clients' own training (benchmarks)
        self.client_s: list[float] = []
        self.trained_by = 0

    def workers(self) -> int:
        return torch.get_num_threads() if can_fork() else 1

    def close(self) -> None:
        """Stop the worker processes now (they also stop when the engine is garbage-collected)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def pool(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, start: torch.Tensor, n: int,
             workers: int) -> _WorkerPool:
        key = _pool_key(model, images, labels, start.dtype, start.numel(), workers)
        if self._pool is None or self._pool.key != key or self._pool.capacity < n:
            self.close()
            self._pool = _WorkerPool(model, images, labels, start.dtype, start.numel(), n, workers)
        return self._pool

    def train(self, model, start, images, labels, indices, seeds, cfg, max_steps=None):
        n = len(indices)
        if n == 0:
            return start.new_zeros((0, start.numel()))
        workers = self.workers()
        on_cpu = start.device.type == "cpu" and images.device.type == "cpu"
        if workers < 2 or not on_cpu:
            trainer = LocalTrainer(model)
            self.client_s, self.trained_by = [], 1
            return torch.stack([_train_one(trainer, start, images, labels, idx, s, cfg, max_steps, self.client_s)
                                for idx, s in zip(indices, seeds, strict=True)])
        pool = self.pool(model, images, labels, start, n, workers)
        result = pool.run(start, indices, seeds, cfg, max_steps)
        self.client_s, self.trained_by = list(pool.client_s), workers
        return result


def get_engine(name: str) -> Engine:
    if name not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES.names())}, got {name!r}")
    return ENGINES.get(name)()


DEFAULT_CANDIDATES = ("sequential", "vectorised")


def auto_candidates() -> tuple[str, ...]:
    """What `engine = "auto"` chooses among here: sequential and vectorised, and `processes` where it can
    run clients in parallel (fork available and a budget of at least two threads)."""
    return (*DEFAULT_CANDIDATES, "processes") if can_fork() and torch.get_num_threads() >= 2 else DEFAULT_CANDIDATES


def choose_engine(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, indices: Sequence[torch.Tensor],
    cfg: LocalTraining, repeats: int = 2, min_time_s: float = 0.3, candidates: Sequence[str] | None = None,
) -> tuple[str, dict[str, float]]:
    """The fastest of `candidates` (default: sequential and vectorised; `EngineChooser` passes
    `auto_candidates()`) for this model, device, thread count and round shape, by measurement.

    Sequential: whole clients are trained for one epoch (at least two, and until `min_time_s` has passed),
    so that the per-client set-up is counted as often as in a real round (timing single steps counted it
    once per step and overestimated a badnet-mnist round by 40%). Vectorised: `repeats` vmapped steps
    over all the clients after one warm-up step. Processes: after starting the workers and one warm-up step
    per worker, the round's clients are trained for one epoch in one parallel call, as in a real round (or,
    when one step per worker predicts that to take over 10 x `min_time_s`, in groups of 4 x workers whole
    clients until `min_time_s` has passed), after one untimed such call (or group) that meets every batch
    shape once; the worker start-up, once per run, is reported as `processes_start_s`, not counted. A
    round is then predicted as: sequential and processes = time per client step x sum_k ceil(n_k / B);
    vectorised = time per vmapped step x max_k ceil(n_k / B) (it pads every client to the longest). Models
    with BatchNorm never get `vectorised`. Not memoised: see `EngineChooser`."""
    candidates = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    unknown = [c for c in candidates if c not in ENGINES]
    if unknown or not candidates:
        raise ConfigError(f"engine candidates must be among {', '.join(ENGINES.names())}, got {candidates}")
    if has_batchnorm(model):
        candidates = [c for c in candidates if c != "vectorised"]
        if candidates == ["sequential"] or not candidates:
            return "sequential", {}
    device = next(model.parameters()).device
    start = flat_params(model).to(device)
    steps = [math.ceil(len(i) / cfg.batch_size) for i in indices]
    one = LocalTraining(1, cfg.batch_size, cfg.lr)
    seeds = list(range(len(indices)))
    timing: dict[str, float] = {}
    with seeded(0):
        if "sequential" in candidates:
            seq = SequentialEngine()
            seq.train(model, start, images, labels, indices[:1], seeds[:1], one)  # warm-up: one whole client
            t0, done = time.perf_counter(), 0
            for i in range(len(indices)):
                seq.train(model, start, images, labels, indices[i:i + 1], seeds[i:i + 1], one)
                done += steps[i]
                if i >= 1 and time.perf_counter() - t0 >= min_time_s:
                    break
            timing["sequential_step_s"] = (time.perf_counter() - t0) / done
            timing["sequential_epoch_s"] = timing["sequential_step_s"] * sum(steps)
        if "vectorised" in candidates:
            vec = VectorisedEngine()
            vec.train(model, start, images, labels, indices, seeds, one, max_steps=1)
            t0 = time.perf_counter()
            vec.train(model, start, images, labels, indices, seeds, one, max_steps=repeats)
            timing["vectorised_step_s"] = (time.perf_counter() - t0) / repeats
            timing["vectorised_epoch_s"] = timing["vectorised_step_s"] * max(steps)
        if "processes" in candidates:
            proc = ProcessEngine()
            try:
                w = max(proc.workers(), 1)
                t0 = time.perf_counter()
                proc.train(model, start, images, labels, indices[:w], seeds[:w], one, max_steps=1)
                timing["processes_start_s"] = time.perf_counter() - t0
                t0 = time.perf_counter()
                proc.train(model, start, images, labels, indices[:w], seeds[:w], one, max_steps=1)
                guess = (time.perf_counter() - t0) * sum(steps) / max(1, min(w, len(indices)))
                group = len(indices) if guess <= 10 * min_time_s else 4 * w  # a whole round when affordable
                # warm-up: the first pass meets every batch shape (partial last batches) for the first time
                proc.train(model, start, images, labels, indices[:group], seeds[:group], one)
                t0, done, i = time.perf_counter(), 0, 0
                while i < len(indices):
                    chunk = slice(i, min(i + group, len(indices)))
                    proc.train(model, start, images, labels, indices[chunk], seeds[chunk], one)
                    done += sum(steps[chunk])
                    i = chunk.stop
                    if time.perf_counter() - t0 >= min_time_s:
                        break
                timing["processes_step_s"] = (time.perf_counter() - t0) / done
                timing["processes_epoch_s"] = timing["processes_step_s"] * sum(steps)
            finally:
                proc.close()
    epoch = {c: timing[f"{c}_epoch_s"] for c in candidates if f"{c}_epoch_s" in timing}
    name = min(epoch, key=lambda c: (epoch[c], candidates.index(c)))
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
        candidates = auto_candidates()
        key = (type(model).__name__, n_par, str(device), torch.get_num_threads(), len(indices), cfg.batch_size,
               candidates)
        if key not in self.choices:
            self.choices[key] = choose_engine(model, images, labels, indices, cfg, candidates=candidates)
        return self.choices[key]
