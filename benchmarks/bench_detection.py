"""Neural Cleanse: all labels optimised in one batched problem vs a per-label Python loop of the same
optimisation (same steps, same mini-batches, same initialisation; the reversed masks are compared), on a
badnet-mnist model with random weights (the optimisation cost does not depend on the weights) and
synthetic MNIST-shaped clean data. Modes: "loop" (one label per pass), "batched" (the default: labels packed
into passes of at most 160 images; at batch 16 that is all ten labels in one pass) and, at batch 32 only,
"one pass" (all ten labels, 320 images per pass; at batch 16 it would be the batched run again). The modes
alternate within each repeat so that machine noise hits all; every time is the median and [min, max] over
the repeats, and a speedup is loop time / mode time within the same repeat (median and [min, max] of those
ratios). Also: the network's own forward + backward cost per image at the pass sizes involved, and STRIP
inputs screened per second (N = 100 overlays, one batched forward pass per chunk of inputs). Every record
states the threads used, the load average before and after, and the other processes that were busy."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses.neural_cleanse import NeuralCleanse
from backdoor_arena.defenses.strip import Strip
from backdoor_arena.train import create_model

COLUMNS = ["what", "setting", "mode", "images_per_pass", "repeats", "median_s", "min_s", "max_s", "speedup",
           "speedup_min", "speedup_max", "max_mask_diff", "median_us", "min_us", "max_us", "median_inputs_per_s",
           "min_inputs_per_s", "max_inputs_per_s", "threads", "load_1min"]
FORMATS = {k: ".2f" for k in ("median_s", "min_s", "max_s", "speedup", "speedup_min", "speedup_max")}
FORMATS |= {k: ".0f" for k in ("median_us", "min_us", "max_us", "median_inputs_per_s", "min_inputs_per_s",
                               "max_inputs_per_s")}
FORMATS["max_mask_diff"] = ".1e"

INFO = DatasetInfo("bench-mnist", 10, (1, 28, 28), tuple(map(str, range(10))), (0.1307,), (0.3081,))


def _data(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(INFO, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g))


def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def _cpu_ticks() -> dict[int, tuple[int, str]]:
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(p.name)] = (int(fields[11]) + int(fields[12]), cmd)
    return out


def others_busy(window: float = 3.0, min_share: float = 0.05) -> list[str]:
    """Other processes that used at least `min_share` of a core over `window` seconds (Linux /proc; else [])."""
    if not Path("/proc/self/stat").exists():
        return []
    a = _cpu_ticks()
    time.sleep(window)
    b = _cpu_ticks()
    hz = os.sysconf("SC_CLK_TCK")
    busy = []
    for pid, (ticks, cmd) in b.items():
        if pid == os.getpid() or pid not in a:
            continue
        share = (ticks - a[pid][0]) / hz / window
        if share >= min_share:
            short = " ".join(Path(w).name if i == 0 else w for i, w in enumerate(cmd.split()[:4]))
            busy.append(f"{short[:70]} ({100 * share:.0f}% of a core)")
    return sorted(busy)


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def run(quick: bool) -> list[dict]:
    torch.manual_seed(0)
    context = {"threads": torch.get_num_threads(), "load_before": _load(), "others_busy": others_busy()}
    model, _ = create_model("badnet-mnist", INFO, seed=0)
    model.eval()
    clean = _data(1200)
    records = []
    steps = 20 if quick else 60
    repeats = 1 if quick else 5
    for batch_size in (16, 32):
        params = {"steps": steps, "batch_size": batch_size, "n_samples": 1000, "seed": 0}
        modes = {"loop": {"batched": False}, "batched": {}}
        if 10 * batch_size > 160:  # otherwise the default already runs all ten labels in one pass
            modes["one pass"] = {"pass_images": 10 * batch_size}
        passes = {"loop": batch_size, "batched": min(10, 160 // batch_size) * batch_size, "one pass": 10 * batch_size}
        times: dict[str, list[float]] = {m: [] for m in modes}
        results = {}
        for _ in range(repeats):
            for mode, extra in modes.items():
                started = time.perf_counter()
                results[mode] = NeuralCleanse(**params, **extra).reverse(model, clean)
                times[mode].append(time.perf_counter() - started)
        for mode in modes:
            med, lo, hi = _spread(times[mode])
            ratios = [loop / t for loop, t in zip(times["loop"], times[mode], strict=True)]
            rec = {"what": "neural-cleanse", "setting": f"10 labels, {steps} steps, batch {batch_size}", "mode": mode,
                   "images_per_pass": passes[mode], "repeats": repeats, "median_s": med, "min_s": lo, "max_s": hi}
            if mode != "loop":
                rec.update(zip(("speedup", "speedup_min", "speedup_max"), _spread(ratios), strict=True))
                rec["max_mask_diff"] = float((results[mode].masks - results["loop"].masks).abs().max())
            records.append(rec)
    # the network alone: forward and backward to the input, per image, at the pass sizes above
    x_all = clean.float_images()
    for n in (16, 32, 160, 320):
        x = x_all[:n].clone().requires_grad_(True)
        per_image = []
        for _ in range(repeats):
            calls = max(3, 1600 // n) if not quick else 2
            started = time.perf_counter()
            for _ in range(calls):
                model(x).sum().backward()
            per_image.append((time.perf_counter() - started) / calls / n * 1e6)
        med, lo, hi = _spread(per_image)
        records.append({"what": "network pass", "setting": f"{n} images per pass", "repeats": repeats,
                        "median_us": med, "min_us": lo, "max_us": hi})
    det = Strip(n_overlays=100, n_fit=100).fit(model, clean)
    x = clean.float_images()[:200 if quick else 500]
    rates = []
    for _ in range(1 if quick else 3):
        started = time.perf_counter()
        det.score(x)
        rates.append(len(x) / (time.perf_counter() - started))
    med, lo, hi = _spread(rates)
    records.append({"what": "strip", "setting": f"N=100 overlays, {len(x)} inputs", "repeats": len(rates),
                    "median_inputs_per_s": med, "min_inputs_per_s": lo, "max_inputs_per_s": hi})
    context["load_after"] = _load()
    context["load_1min"] = f"{context['load_before']['1min']:.2f} -> {context['load_after']['1min']:.2f}"
    return [{**r, **context} for r in records]
