"""Wall time per model of every model-level detector (each one MODEL_DETECTORS registers, at its default
parameters) on one MNIST and one GTSRB model, with BENCH_THREADS (default 2) torch threads: the cost a
`scan` pays per detector. MNTD's one-off cost (training its shadow models and meta-classifier on the
defender's clean set, reused for every later model of that dataset) is its own row, phase "fit (shadows +
meta)", apart from the per-model query (phase "inspect": the suspect run on the learned queries).

Models: MNIST, the BadNets badnet-mnist model of bench_karm (3x3 pattern, target 7; cached under
runs/abs-karm/bench-models); GTSRB, the project's stop -> speed limit 30 BadNets model (gtsrb-cnn,
source-specific, runs/results-gtsrb/). Clean set: bench_karm's (1,000 images the model never trained on).
MNTD's shadows have the suspect's architecture and train in a fresh temporary folder, so their training is
measured, never read from a cache.

The machine is shared: `load_1min` is the 1-minute load average before -> after each row (2 cores: a load
above 2 means other jobs took CPU time from this one and inflated its wall time); `cpu_s` is this process's
CPU time (over all its threads). Rerun it quiet with one command: `BENCH_THREADS=2 python benchmarks/run.py
detector_times` (BENCH_DETECTOR_TIMES_DATASETS=mnist restricts the datasets)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from backdoor_arena.defenses import MODEL_DETECTORS
from backdoor_arena.modelfile import load_model, read_manifest

COLUMNS = ["dataset", "model", "detector", "phase", "flagged", "suspected_target", "score", "wall_s", "cpu_s",
           "threads", "load_1min"]
PARTIAL = Path(__file__).resolve().parents[1] / "runs" / "detector-times.partial.jsonl"
FORMATS = {"score": ".2f", "wall_s": ".1f", "cpu_s": ".1f"}


def _timed(dataset: str, model: str, detector: str, phase: str, call: Any) -> tuple[dict, Any]:
    load = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    out = call()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    row = {"dataset": dataset, "model": model, "detector": detector, "phase": phase, "wall_s": wall, "cpu_s": cpu,
           "threads": torch.get_num_threads(), "load_1min": f"{load:.1f} -> {os.getloadavg()[0]:.1f}"}
    print(f"{dataset} {model} {detector} {phase}: {wall:.1f} s", file=sys.stderr, flush=True)  # a long run's progress
    return row, out


def _verdict(row: dict, v: Any) -> dict:
    return {**row, "flagged": v.flagged, "suspected_target": v.suspected_target, "score": v.score}


def _detector_rows(dataset: str, name: str, detector: str, arch: str, model: torch.nn.Module, clean: Any,
                   quick: bool) -> list[dict]:
    cls = MODEL_DETECTORS.get(detector)
    if detector == "mntd":
        with tempfile.TemporaryDirectory() as cache:
            det = cls(cache_dir=cache, architecture=arch,
                      **({"n_clean": 2, "n_backdoored": 2, "meta_epochs": 2} if quick else {}))
            fit, _ = _timed(dataset, name, detector, "fit (shadows + meta)", lambda: det.fit(clean))
            row, v = _timed(dataset, name, detector, "inspect", lambda: det.inspect(model, clean))
        return [fit, _verdict(row, v)]
    det = cls(**({"steps": 10} if quick and "steps" in cls.param_help else {}))
    row, v = _timed(dataset, name, detector, "inspect", lambda: det.inspect(model, clean))
    return [_verdict(row, v)]


def run(quick: bool) -> list[dict]:
    """Rows are also appended, as they finish, to runs/detector-times.partial.jsonl: a run stopped half-way
    (the GTSRB rows take long on a busy machine) keeps what it measured."""
    from bench_karm import _clean_set, _gtsrb_models, _mnist_models

    threads = int(os.environ.get("BENCH_THREADS", "2"))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    wanted = os.environ.get("BENCH_DETECTOR_TIMES_DATASETS", "mnist,gtsrb").split(",")
    records: list[dict] = []
    try:
        for dataset, find_models in (("mnist", _mnist_models), ("gtsrb", _gtsrb_models)):
            if dataset not in wanted:
                continue
            models = find_models()
            if not models:
                records.append({"dataset": dataset, "model": "skipped: no trained models in runs/results-gtsrb"})
                continue
            name, path, _ = models[0]  # the backdoored one
            model, arch = load_model(path).model, read_manifest(path).architecture
            clean = _clean_set(dataset, path)
            for detector in MODEL_DETECTORS.names():
                rows = _detector_rows(dataset, name, detector, arch, model, clean, quick)
                with PARTIAL.open("a") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
                records += rows
    finally:
        torch.set_num_threads(before)
    return records
