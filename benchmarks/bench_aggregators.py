"""Aggregation time per round of every registered rule at n = 30 and 100 clients and d = 1.2M parameters
(the size of emnist-cnn), on synthetic updates (randn), median of 3 repeats with the [min, max] range. Krum,
Multi-Krum and Bulyan compute their pairwise distances from one Gram matrix; the `krum, pairwise loop` row is
what the obvious implementation costs (n(n-1)/2 torch.dist calls), timed side by side in the same run.
Rules that need round inputs get them as the pipeline gives them (global weights, a server update). MixTailor
uses the 8-rule pool of configs/fl/mixtailor-matrix.toml; its time is the mean over 5 draws (the members
differ by orders of magnitude: Bulyan with geometric-median selection runs n - 2f Weiszfeld solves), timed at
n = 30 only (at n = 100 a single such draw takes minutes on 2 cores)."""

from __future__ import annotations

import statistics
import time

import torch

from backdoor_arena.federated import make_aggregator
from backdoor_arena.federated.robust import krum_scores, lowest

COLUMNS = ["rule", "n", "d", "median_s", "min_s", "max_s", "vs_fedavg"]
FORMATS = {"median_s": ".3f", "min_s": ".3f", "max_s": ".3f", "vs_fedavg": ".1f"}

RULES = [
    ("fedavg", {"name": "fedavg"}),
    ("norm-clip", {"name": "norm-clip", "max_norm": 3.0}),
    ("weak-dp", {"name": "weak-dp"}),
    ("coordinate-median", {"name": "coordinate-median", "f": 5}),
    ("trimmed-mean", {"name": "trimmed-mean", "f": 5}),
    ("krum", {"name": "krum", "f": 5}),
    ("multi-krum", {"name": "multi-krum", "f": 5}),
    ("geometric-median", {"name": "geometric-median", "f": 5}),
    ("bulyan", {"name": "bulyan", "f": 5}),
    ("centered-clipping", {"name": "centered-clipping", "f": 5, "iterations": 3}),
    ("fltrust", {"name": "fltrust"}),
    ("flame", {"name": "flame"}),
    ("mixtailor (8-rule pool, mean of 5 draws)", {"name": "mixtailor", "f": 5, "pool": [
        {"name": "krum", "p": 1}, {"name": "krum", "p": 2}, {"name": "krum", "p": 8}, "coordinate-median",
        "geometric-median", "bulyan", {"name": "bulyan", "selection": "coordinate-median", "aggregation": "mean"},
        {"name": "bulyan", "selection": "geometric-median", "aggregation": "coordinate-median"}]}),
]


def krum_pairwise_loop(updates: torch.Tensor, f: int) -> torch.Tensor:
    """The obvious Krum: every pair's distance by its own call."""
    n = updates.shape[0]
    dist = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            dist[i, j] = dist[j, i] = float(torch.dist(updates[i], updates[j]) ** 2)
    return updates[lowest(krum_scores(dist, f), 1)[0]]


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up (allocator, first-call costs)
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def run(quick: bool = False) -> list[dict]:
    d = 120_000 if quick else 1_200_000
    repeats = 1 if quick else 3
    records = []
    for n in (30,) if quick else (30, 100):
        g = torch.Generator().manual_seed(n)
        updates = torch.randn(n, d, generator=g) * 0.05
        weights = torch.randint(10, 100, (n,), generator=g).double()
        inputs = {"global_weights": torch.randn(d, generator=g), "server_update": updates.mean(0)}
        base = None
        for label, spec in RULES:
            if spec["name"] == "mixtailor" and n > 30:
                continue  # one Bulyan(geometric-median selection) draw alone runs n - 2f = 90 Weiszfeld solves here
            rule = make_aggregator(spec)
            draws = 5 if spec["name"] == "mixtailor" else 1
            gen = torch.Generator().manual_seed(0)

            def call(rule=rule, draws=draws, gen=gen, updates=updates, weights=weights, inputs=inputs):
                for _ in range(draws):
                    rule.aggregate(updates, weights, gen, dict(inputs))

            times = [t / draws for t in _time(call, repeats)]
            med = statistics.median(times)
            base = med if label == "fedavg" else base
            records.append({"rule": label, "n": n, "d": d, "median_s": med, "min_s": min(times), "max_s": max(times),
                            "vs_fedavg": med / base})
            print(records[-1], flush=True)
        times = _time(lambda updates=updates: krum_pairwise_loop(updates, 5), 1)
        records.append({"rule": "krum, pairwise loop", "n": n, "d": d, "median_s": times[0], "min_s": times[0],
                        "max_s": times[0], "vs_fedavg": times[0] / base})
        print(records[-1], flush=True)
    return records
