"""Where a federated client's training step spends its time, and what other kernels would buy: the evidence
behind issue 12's round-speed goals (docs/flower.md). One thread, badnet-mnist, batch 20, lr 0.1, the 30
MNIST writers of bench_rounds' second round (seed 0), one local epoch each.

Rows, side by side in one run:
- `eager`: `engines.LocalTrainer`, the trainer of the `processes` engine and of the Flower adapter.
- `torch.compile`: the same trainer with its working model wrapped in torch.compile at its defaults (inductor;
  the forward, and through AOTAutograd the backward): a static graph for the first batch shape, one dynamic
  graph once another shape (a partial last batch) appears. The compile time of the first client, both
  graphs, is reported apart (`compile_s`), not counted.
- `stacked clients (unfold + bmm)`: all 30 clients in lock-step, their weights stacked [30, ...], each
  convolution an unfold (im2col) and one batched matmul over the clients, autograd for the backward: the
  cross-client batching only a simulator can do (Flower trains each client in its own actor). Per client-step
  = one lock-step tick / 30 (full batches of 20, no padding counted against it).
- `stacked clients (grouped convolution + bmm)`: the same lock-step, each convolution one grouped oneDNN
  convolution (channels-last) over the clients' channels side by side, what vmap lowers a per-client
  convolution to; the fully connected layers as above.
- `kernels of the eager step`: torch.profiler over the eager epoch, operator time grouped (convolution
  forward / backward, matmuls, pooling, ReLU, the rest) with each group's FLOPs (FlopCounterMode) and
  GFLOP/s.
- `floor`: the step's forward+backward FLOPs / the one-thread float32 matmul probe (best of 512/1024/2048),
  bench_rounds' floor per thread.

`step_ms` is wall time per client-step; `x_floor` its ratio to the floor's step. Rerun:
`python benchmarks/run.py client_step`."""

from __future__ import annotations

import math
import statistics
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

COLUMNS = ["system", "steps", "step_ms", "x_floor", "gflops", "compile_s", "note"]
FORMATS = {"step_ms": ".3f", "x_floor": ".2f", "gflops": ".0f", "compile_s": ".1f"}
BATCH = 20
LR = 0.1
REPEATS = 3


def _clients() -> tuple[Any, torch.nn.Module, torch.Tensor, list[torch.Tensor]]:
    import bench_rounds as br

    from backdoor_arena.federated.engines import flat_params
    from backdoor_arena.federated.pipeline import Federation, FederationCache, RoundPipeline

    fed = Federation.setup(br.scenario(1, 2, "sequential"), progress=False, cache=FederationCache())
    rounds = [rr.selection.sampled for rr in RoundPipeline(fed).run()]
    indices = [fed.data.indices[int(k)] for k in rounds[1]]
    return fed.data.dataset, fed.model, flat_params(fed.model), indices


def _epoch(trainer: Any, data: Any, start: torch.Tensor, indices: list[torch.Tensor], cfg: Any) -> float:
    t0 = time.perf_counter()
    for k, idx in enumerate(indices):
        trainer(start, data.images, data.labels, idx, k, cfg)
    return time.perf_counter() - t0


def compiled_trainer(model: torch.nn.Module, start: torch.Tensor, data: Any, index: torch.Tensor, cfg: Any) -> Any:
    """`LocalTrainer` whose working copy of the model is wrapped in torch.compile (its defaults: a static graph
    for the first batch shape, one dynamic graph once a second shape appears), as a user would compile it."""
    from backdoor_arena.federated.engines import LocalTrainer

    trainer = LocalTrainer(model)
    trainer(start, data.images, data.labels, index, 0, cfg, max_steps=1)  # builds the working copy
    trainer.work = torch.compile(trainer.work)
    return trainer


def _stacked_tick_s(model: torch.nn.Module, data: Any, indices: list[torch.Tensor], repeats: int,
                    grouped: bool) -> float:
    """Seconds per lock-step tick: every client one full batch of BATCH, forward + backward + SGD. The
    convolutions as unfold + bmm over the clients (`grouped=False`) or as one grouped convolution (oneDNN,
    channels-last) with the clients' channels side by side (`grouped=True`)."""
    from backdoor_arena.data.dataset import to_float

    n = len(indices)
    named = dict(model.named_parameters())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    stack = [p.detach().unsqueeze(0).repeat(n, *([1] * p.ndim)).clone().requires_grad_() for p in named.values()]
    mean, std = 0.1307, 0.3081  # the model's Normalize (MNIST); its exact values do not change the timing
    x = torch.stack([(to_float(data.images[idx[:BATCH]]) - mean) / std for idx in indices])  # [n, B, 1, 28, 28]
    y = torch.stack([data.labels[idx[:BATCH]] for idx in indices])
    if grouped:  # [B, n * cin, H, W]: client k's channels at k * cin
        x = x.transpose(0, 1).reshape(BATCH, n, *x.shape[3:]).contiguous(memory_format=torch.channels_last)
    else:
        x = x.transpose(1, 2).contiguous()  # channel-major [n, cin, B, H, W]: unfold + bmm with no transposes

    def conv(h, w, b):
        c, cin, bb, hh, ww = h.shape
        cout, k = w.shape[1], w.shape[-1]
        oh, ow = hh - k + 1, ww - k + 1
        cols = h.unfold(3, k, 1).unfold(4, k, 1).permute(0, 1, 5, 6, 2, 3, 4).reshape(c, cin * k * k, bb * oh * ow)
        return torch.baddbmm(b.view(c, cout, 1), w.reshape(c, cout, cin * k * k), cols).view(c, cout, bb, oh, ow)

    def grouped_conv(h, w, b):
        c, cout, cin, k, _ = w.shape
        return F.conv2d(h, w.reshape(c * cout, cin, k, k), b.reshape(-1), groups=c)

    def pool(h):
        s = h.shape
        out = F.avg_pool2d(h.reshape(-1, 1, s[-2], s[-1]), 2)
        return out.view(*s[:-2], *out.shape[-2:])

    assert len(convs) == 2 and len(linears) == 2, "the stacked prototypes are written for badnet-mnist"

    def tick() -> None:
        w1, b1, w2, b2, w3, b3, w4, b4 = stack
        if grouped:
            h = F.avg_pool2d(torch.relu(grouped_conv(x, w1, b1)), 2)
            h = F.avg_pool2d(torch.relu(grouped_conv(h, w2, b2)), 2)
            h = h.reshape(BATCH, n, -1).transpose(0, 1)
        else:
            h = pool(torch.relu(conv(x, w1, b1)))
            h = pool(torch.relu(conv(h, w2, b2)))
            h = h.transpose(1, 2).reshape(n, BATCH, -1)
        h = torch.relu(torch.baddbmm(b3.unsqueeze(1), h, w3.transpose(1, 2)))
        logits = torch.baddbmm(b4.unsqueeze(1), h, w4.transpose(1, 2))
        loss = F.cross_entropy(logits.reshape(n * BATCH, -1), y.reshape(-1), reduction="sum") / BATCH
        grads = torch.autograd.grad(loss, stack)
        with torch.no_grad():
            torch._foreach_add_(stack, list(grads), alpha=-LR)

    tick()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(5):
            tick()
        best = min(best, (time.perf_counter() - t0) / 5)
    return best


GROUPS = {"convolution backward": ("convolution_backward",), "convolution forward": ("mkldnn_convolution",),
          "matmuls (fc)": ("aten::mm", "aten::addmm"), "pooling": ("avg_pool2d",),
          "ReLU": ("threshold_backward", "clamp_min", "aten::relu")}


def _kernels(trainer: Any, data: Any, start: torch.Tensor, indices: list[torch.Tensor], cfg: Any,
             steps: int) -> list[dict]:
    from torch.profiler import profile
    from torch.utils.flop_counter import FlopCounterMode

    from backdoor_arena.data.dataset import to_float

    with profile() as prof:
        wall_s = _epoch(trainer, data, start, indices, cfg)
    self_us: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    total = 0.0
    for ev in prof.key_averages():
        if not ev.key.startswith("aten::"):
            continue
        total += ev.self_cpu_time_total
        for group, names in GROUPS.items():
            if any(ev.key == n or ev.key.endswith(n) for n in names):
                self_us[group] += ev.self_cpu_time_total
                break
    self_us["other operators"] = total - sum(self_us.values())
    # FLOPs of one full step per group (FlopCounterMode's per-operator counts)
    m = trainer.work
    x, y = to_float(data.images[indices[0][:BATCH]]), data.labels[indices[0][:BATCH]]
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(F.cross_entropy(m(x), y), list(m.parameters()))
    flops = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    per_group = {"convolution backward": flops.get("aten.convolution_backward", 0),
                 "convolution forward": flops.get("aten.convolution", 0),
                 "matmuls (fc)": flops.get("aten.mm", 0) + flops.get("aten.addmm", 0)}
    what = {"pooling": "element-wise, memory-bound", "ReLU": "element-wise, memory-bound",
            "other operators": "batch indexing, copies, loss, the fused SGD step, allocation"}
    rows = []
    for group, us in self_us.items():
        step_ms = us / 1e3 / steps
        f = per_group.get(group)
        rows.append({"system": f"kernels of the eager step: {group}", "steps": steps, "step_ms": step_ms,
                     "gflops": f / (step_ms / 1e3) / 1e9 if f else None,
                     "note": f"{f / 1e6:.1f} MFLOP per full step" if f else what[group]})
    outside = wall_s * 1e3 / steps - sum(r["step_ms"] for r in rows)
    rows.append({"system": "kernels of the eager step: outside operators", "steps": steps, "step_ms": outside,
                 "note": f"Python, the autograd engine, the profiler's own cost (profiled epoch: "
                         f"{wall_s * 1e3 / steps:.3f} ms per step)"})
    return rows


def run(quick: bool = False) -> list[dict]:
    import bench_rounds as br

    from backdoor_arena.federated.engines import LocalTrainer, LocalTraining

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, model, start, indices = _clients()
        if quick:
            indices = indices[:8]
        cfg = LocalTraining(1, BATCH, LR)
        steps = sum(math.ceil(len(i) / BATCH) for i in indices)
        samples = sum(len(i) for i in indices)
        flops = br.flops_per_sample(model, data.images, data.labels)
        probe = max(br.matmul_gflops().values())
        floor_ms = BATCH * flops / (probe * 1e9) * 1e3
        eager = LocalTrainer(model)
        compiled = compiled_trainer(model, start, data, indices[0], cfg)
        partial_sizes = {len(i) % BATCH for i in indices} - {0}
        t0 = time.perf_counter()  # a whole client: the full-batch graph, then the dynamic one at its last batch
        compiled(start, data.images, data.labels, next(i for i in indices if len(i) % BATCH), 0, cfg)
        compile_s = time.perf_counter() - t0
        _epoch(eager, data, start, indices, cfg)  # warm-up
        _epoch(compiled, data, start, indices, cfg)
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(1 if quick else REPEATS):  # interleaved: drift hits both alike
            times["eager"].append(_epoch(eager, data, start, indices, cfg))
            times["compiled"].append(_epoch(compiled, data, start, indices, cfg))
        tick_s = _stacked_tick_s(model, data, indices, 1 if quick else REPEATS, grouped=False)
        grouped_s = _stacked_tick_s(model, data, indices, 1 if quick else REPEATS, grouped=True)
        grouped_ms = grouped_s / len(indices) * 1e3
        eager_ms = min(times["eager"]) / steps * 1e3
        compiled_ms = min(times["compiled"]) / steps * 1e3
        stacked_ms = tick_s / len(indices) * 1e3
        step_flops = BATCH * flops
        print(f"  eager {eager_ms:.3f} ms, compiled {compiled_ms:.3f} ms, stacked {stacked_ms:.3f} ms, floor "
              f"{floor_ms:.3f} ms per client-step", file=sys.stderr, flush=True)
        rows = [
            {"system": "floor (FLOPs / one-thread matmul probe)", "steps": 1, "step_ms": floor_ms, "x_floor": 1.0,
             "gflops": probe, "note": f"{flops / 1e6:.2f} MFLOP/sample fwd+bwd, batch {BATCH}; probe {probe:.0f} "
                                      f"GFLOP/s on one thread"},
            {"system": "eager (LocalTrainer)", "steps": steps, "step_ms": eager_ms, "x_floor": eager_ms / floor_ms,
             "gflops": step_flops / (eager_ms / 1e3) / 1e9, "times_s": times["eager"],
             "note": f"{len(indices)} clients, {samples} samples, best of {len(times['eager'])} epochs "
                     f"(median {statistics.median(times['eager']) / steps * 1e3:.3f} ms)"},
            {"system": "torch.compile (inductor)", "steps": steps, "step_ms": compiled_ms,
             "x_floor": compiled_ms / floor_ms, "gflops": step_flops / (compiled_ms / 1e3) / 1e9,
             "compile_s": compile_s, "times_s": times["compiled"],
             "note": f"vs eager {eager_ms / compiled_ms:.2f}x; torch.compile defaults, {len(partial_sizes)} "
                     f"partial-batch sizes"},
            {"system": "stacked clients (unfold + bmm)", "steps": len(indices), "step_ms": stacked_ms,
             "x_floor": stacked_ms / floor_ms, "gflops": step_flops / (stacked_ms / 1e3) / 1e9,
             "note": f"one lock-step tick of {len(indices)} clients {tick_s * 1e3:.1f} ms; vs eager "
                     f"{eager_ms / stacked_ms:.2f}x"},
            {"system": "stacked clients (grouped convolution + bmm)", "steps": len(indices), "step_ms": grouped_ms,
             "x_floor": grouped_ms / floor_ms, "gflops": step_flops / (grouped_ms / 1e3) / 1e9,
             "note": f"one lock-step tick of {len(indices)} clients {grouped_s * 1e3:.1f} ms; vs eager "
                     f"{eager_ms / grouped_ms:.2f}x"},
        ]
        rows += _kernels(eager, data, start, indices, cfg, steps)
        for r in rows[5:]:
            r["x_floor"] = None
        return rows
    finally:
        torch.set_num_threads(threads)
