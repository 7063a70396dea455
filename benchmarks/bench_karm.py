"""Neural Cleanse with every label optimised (schedule "all", the default) against K-Arm scheduling
(schedule "k-arm": logit pre-screening, a bandit over the kept labels, the symmetric check), side by side
in one run on the same models, clean sets and parameters: verdict, suspected target, score (NC: anomaly
index; K-Arm: symmetric ratio), optimisation steps (label-steps) and wall time, with K-Arm's time as a
fraction of NC's on the same model (the issue's goal: at most 1/3). Wall time and this process's CPU time
are both given: on a shared machine (load_1min: the load average before -> after each run) other jobs
inflate wall times unevenly, and the CPU time of one thread is the steadier measure of the work.

MNIST: a BadNets model (3x3 pattern, target 7, 10% poisoning) and a clean one, badnet-mnist, each trained
here for 2 epochs on 8,000 training images (cached under runs/abs-karm/bench-models); clean set: 1,000
training images the models never saw. GTSRB (43 classes): the project's stop -> 30 BadNets model and its
clean twin from runs/results-gtsrb/ (docs/experiments/results_gtsrb.py) if present, else skipped;
clean set: 1,000 images drawn (seed 0) from the defender's clean hold-out of the GTSRB training split (the
split is sorted by class: its first 1,000 images hold only classes 0 and 1). Steps per label: 300 on
MNIST, 100 on GTSRB (one core). BENCH_KARM_DATASETS=mnist (comma-separated) restricts the datasets."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import Dataset
from backdoor_arena.defenses.neural_cleanse import NeuralCleanse
from backdoor_arena.modelfile import load_model

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "runs" / "abs-karm" / "bench-models"
GTSRB = REPO / "runs" / "results-gtsrb"

COLUMNS = ["dataset", "model", "true_target", "schedule", "flagged", "suspected_target", "score", "statistic",
           "arms", "label_steps", "wall_s", "cpu_s", "time_vs_nc", "cpu_vs_nc", "same_verdict_and_target", "threads",
           "load_1min"]
FORMATS = {"score": ".2f", "wall_s": ".1f", "cpu_s": ".1f", "time_vs_nc": ".2f", "cpu_vs_nc": ".2f"}


def _mnist_models() -> list[tuple[str, Path, int | None]]:
    from backdoor_arena.api import train_model
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.train import TrainConfig

    CACHE.mkdir(parents=True, exist_ok=True)
    bad, clean = CACHE / "mnist-badnets.safetensors", CACHE / "mnist-clean.safetensors"
    if not (bad.exists() and clean.exists()):
        train = load_dataset("mnist", "train").subset(torch.arange(8000))
        test = load_dataset("mnist", "test").subset(torch.arange(1000))
        cfg = TrainConfig(epochs=2, batch_size=32, progress=False)
        atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.1)
        train_model("badnet-mnist", atk.poison(train, torch.Generator().manual_seed(0)).dataset, test, cfg, bad,
                    atk, "bench")
        train_model("badnet-mnist", train, test, cfg, clean, None, "bench")
    return [("badnets", bad, 7), ("clean", clean, None)]


def _gtsrb_models() -> list[tuple[str, Path, int | None]]:
    bad, clean = GTSRB / "gtsrb-stop30.safetensors", GTSRB / "gtsrb-clean.safetensors"
    if not (bad.exists() and clean.exists()):
        return []
    import json

    target = json.loads((GTSRB / "gtsrb-stop30.attack.json").read_text())["target"]
    return [("stop30", bad, int(target)), ("clean", clean, None)]


def _clean_set(dataset: str, model_path: Path) -> Dataset:
    """1,000 clean images the models never trained on: MNIST 50,000-50,999 (the bench models trained on the
    first 8,000); GTSRB a seeded draw from the defender's hold-out that the model file records."""
    from backdoor_arena.api.training import defender_clean_set

    train = load_dataset(dataset, "train")
    if dataset == "mnist":
        return train.subset(torch.arange(50000, 51000))
    held, _ = defender_clean_set(load_model(model_path).manifest, train, 0.05, 0)
    return held.subset(torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:1000])


def run(quick: bool) -> list[dict]:
    records = []
    wanted = os.environ.get("BENCH_KARM_DATASETS", "mnist,gtsrb").split(",")
    settings = [("mnist", _mnist_models, 60 if quick else 300), ("gtsrb", _gtsrb_models, 20 if quick else 100)]
    for dataset, find_models, steps in settings:
        if dataset not in wanted:
            continue
        models = find_models()
        if not models:
            records.append({"dataset": dataset, "model": "skipped: no trained models in runs/results-gtsrb"})
            continue
        clean = _clean_set(dataset, models[0][1])
        for name, path, target in models:
            model = load_model(path).model
            rows = {}
            for schedule in ("all", "k-arm"):
                load = os.getloadavg()[0]
                started, cpu_started = time.perf_counter(), time.process_time()
                v = NeuralCleanse(steps=steps, schedule=schedule).inspect(model, clean)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                k = len(v.details["norms"])
                rows[schedule] = {
                    "dataset": dataset, "model": name, "true_target": target, "schedule": schedule,
                    "flagged": v.flagged, "suspected_target": v.suspected_target, "score": v.score,
                    "statistic": v.details.get("statistic", "anomaly-index"),
                    "arms": len(v.details.get("arms", [])) or k,
                    "label_steps": v.details.get("total_steps", k * steps), "wall_s": wall, "cpu_s": cpu,
                    "load_1min": f"{load:.1f} -> {os.getloadavg()[0]:.1f}",
                    "threads": torch.get_num_threads(),
                    "details": {key: val for key, val in v.details.items() if key != "params"}}
                print(f"{dataset} {name} {schedule}: {wall:.1f} s, flagged {v.flagged}, target {v.suspected_target}",
                      file=sys.stderr, flush=True)  # progress of a long run
            nc, karm = rows["all"], rows["k-arm"]
            karm["time_vs_nc"] = karm["wall_s"] / nc["wall_s"]
            karm["cpu_vs_nc"] = karm["cpu_s"] / nc["cpu_s"]
            karm["same_verdict_and_target"] = (karm["flagged"] == nc["flagged"]
                                               and karm["suspected_target"] == nc["suspected_target"])
            records += [nc, karm]
    return records
