"""Neural Cleanse: all labels optimised in one batched problem vs a per-label Python loop of the same
optimisation (same steps, same mini-batches, same initialisation; the reversed masks must agree), on a
badnet-mnist model with random weights (the optimisation cost does not depend on the weights) and
synthetic MNIST-shaped clean data. Runs alternate loop / batched (labels packed into passes of at most 160 images, the default) / one pass
(all ten labels in every pass) so that machine noise hits all; speedup = loop time / batched time, from
the medians. Also: STRIP inputs screened per second (N = 100 overlays,
one batched forward pass per chunk of inputs)."""

from __future__ import annotations

import statistics
import time

import torch

from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses.neural_cleanse import NeuralCleanse
from backdoor_arena.defenses.strip import Strip
from backdoor_arena.train import create_model

COLUMNS = ["what", "setting", "loop_s", "batched_s", "speedup", "one_pass_s", "one_pass_speedup", "max_mask_diff",
           "inputs_per_s"]
FORMATS = {"batched_s": ".2f", "loop_s": ".2f", "speedup": ".2f", "one_pass_s": ".2f", "one_pass_speedup": ".2f",
           "max_mask_diff": ".1e", "inputs_per_s": ".0f"}

INFO = DatasetInfo("bench-mnist", 10, (1, 28, 28), tuple(map(str, range(10))), (0.1307,), (0.3081,))


def _data(n: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset(INFO, torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),
                   torch.randint(0, 10, (n,), generator=g))


def run(quick: bool) -> list[dict]:
    model, _ = create_model("badnet-mnist", INFO, seed=0)
    model.eval()
    clean = _data(1200)
    records = []
    steps = 20 if quick else 60
    repeats = 1 if quick else 3
    for batch_size in (16, 32):
        params = {"steps": steps, "batch_size": batch_size, "n_samples": 1000, "seed": 0}
        # "loop": one label per pass; "batched": the default, labels packed into passes of <= 160 images;
        # "one pass": all ten labels in every pass
        modes = {"loop": {"batched": False}, "batched": {}, "one pass": {"pass_images": 10 * batch_size}}
        times: dict[str, list[float]] = {m: [] for m in modes}
        results = {}
        for _ in range(repeats):
            for mode, extra in modes.items():
                started = time.perf_counter()
                results[mode] = NeuralCleanse(**params, **extra).reverse(model, clean)
                times[mode].append(time.perf_counter() - started)
        med = {m: statistics.median(t) for m, t in times.items()}
        records.append({
            "what": "neural-cleanse", "setting": f"10 labels, {steps} steps, batch {batch_size}",
            "batched_s": med["batched"], "one_pass_s": med["one pass"], "loop_s": med["loop"],
            "speedup": med["loop"] / med["batched"], "one_pass_speedup": med["loop"] / med["one pass"],
            "max_mask_diff": float((results["batched"].masks - results["loop"].masks).abs().max()),
        })
    det = Strip(n_overlays=100, n_fit=100).fit(model, clean)
    x = clean.float_images()[:200 if quick else 500]
    started = time.perf_counter()
    det.score(x)
    records.append({"what": "strip", "setting": f"N=100 overlays, {len(x)} inputs",
                    "inputs_per_s": len(x) / (time.perf_counter() - started)})
    return records
