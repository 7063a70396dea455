"""Training throughput (samples/s) of every registered model: the project's loop (`train.fit`, with its
progress bar, per-batch uint8 -> float conversion and loss bookkeeping) next to a plain hand-written
PyTorch loop on the same model, data, batch size and optimiser. Runs alternate A/B/A/B on one
machine so that noise hits both; overhead = plain / project - 1, from the medians."""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch
from torch import nn

from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.models import MODELS
from backdoor_arena.train import TrainConfig, create_model, fit, make_optimizer

COLUMNS = ["model", "batch_size", "samples", "plain_samples_per_s", "project_samples_per_s", "overhead_pct"]
FORMATS = {"plain_samples_per_s": ".0f", "project_samples_per_s": ".0f", "overhead_pct": "+.1f"}

SHAPES = {"badnet-mnist": (1, 28, 10), "emnist-cnn": (1, 28, 10), "gtsrb-cnn": (3, 32, 43), "resnet18-cifar": (3, 32, 10)}
SAMPLES = {"badnet-mnist": 6400, "emnist-cnn": 3200, "gtsrb-cnn": 3200, "resnet18-cifar": 320}


def synthetic(name: str, n: int) -> Dataset:
    c, side, k = SHAPES[name]
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo(f"bench-{name}", k, (c, side, side), tuple(map(str, range(k))), (0.5,) * c, (0.25,) * c)
    return Dataset(info, torch.randint(0, 256, (n, c, side, side), dtype=torch.uint8, generator=g),
                   torch.randint(0, k, (n,), generator=g))


def plain_loop(model: nn.Module, data: Dataset, config: TrainConfig) -> float:
    """What one would write by hand: float tensors in memory, shuffled batches, forward/backward/step."""
    x_all, y_all = data.float_images(), data.labels
    opt = make_optimizer(model, config)
    loss_fn = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()
    model.train()
    order = torch.randperm(len(data), generator=g)
    for i in range(0, len(data), config.batch_size):
        idx = order[i : i + config.batch_size]
        loss = loss_fn(model(x_all[idx]), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def project_loop(model: nn.Module, data: Dataset, config: TrainConfig) -> float:
    with contextlib.redirect_stderr(io.StringIO()):  # the progress bar is drawn, just not shown
        return fit(model, data, config).wall_time_s


def run(quick: bool = False) -> list[dict]:
    records = []
    repeats = 2 if quick else 5
    for name in MODELS.names():
        n = SAMPLES.get(name, 1024) // (4 if quick else 1)
        data = synthetic(name, n)
        config = TrainConfig(epochs=1, batch_size=64, lr=0.01, schedule="constant", progress=True)
        times = {"plain": [], "project": []}
        for rep in range(repeats + 1):  # the first pair warms up allocators and caches
            for kind, loop in (("plain", plain_loop), ("project", project_loop)):
                model, _ = create_model(name, data.info, seed=0)
                t = loop(model, data, config)
                if rep:
                    times[kind].append(t)
        plain, project = statistics.median(times["plain"]), statistics.median(times["project"])
        records.append({"model": name, "batch_size": 64, "samples": n, "plain_samples_per_s": n / plain,
                        "project_samples_per_s": n / project, "overhead_pct": 100 * (project / plain - 1),
                        "repeats": repeats})
        print(records[-1], flush=True)
    return records
