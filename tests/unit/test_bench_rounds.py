"""The round-speed benchmark's summary over repeated comparisons (benchmarks/bench_rounds.py `combine`) and the
docs table made from it (docs/experiments/flower.py): medians, every comparison's value beside them, and a
goal counted as met only when every comparison met it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _module("bench_rounds_under_test", ROOT / "benchmarks" / "bench_rounds.py")


def _comparison(bench, auto_s: float, flower_s: float, gflops: float, overhead_s: float,
                train_s: float = 0.2) -> list[dict]:
    floor_s = 0.1
    rows = [
        {"system": "floor (FLOPs / matmul probe)", "local_epochs": 1, "rounds": 7, "round_s": floor_s, "x_floor": 1.0,
         "mflop_per_sample": 7.44, "gflops": gflops, "gflops_one_thread": gflops / 2, "threads": 2, "load_1m": 1.0},
        {"system": "built-in auto", "local_epochs": 1, "rounds": 7, "round_s": auto_s, "x_floor": auto_s / floor_s,
         "vs_flower": flower_s / auto_s, "goal": "g", "times": [auto_s] * 8, "load_1m": 1.0,
         "meets_floor_goal": auto_s / floor_s <= bench.GOAL_FLOOR[1],
         "meets_flower_goal": flower_s / auto_s >= bench.GOAL_FLOWER[1],
         "meets_goals": auto_s / floor_s <= bench.GOAL_FLOOR[1] and flower_s / auto_s >= bench.GOAL_FLOWER[1],
         "engine_note": "engine processes", "train_s": train_s, "overhead_s": auto_s - train_s,
         "vs_flower_no_overhead": flower_s / train_s, "train_per_worker_s": [train_s] * 8},
        {"system": "Flower x: 30 SuperNodes, virtual clients", "local_epochs": 1, "rounds": 7, "round_s": flower_s,
         "x_floor": flower_s / floor_s, "vs_flower": 1.0, "mode": "virtual", "overhead_s": overhead_s,
         "times": [flower_s] * 8, "client_train_s": [0.5] * 8, "load_1m": 1.5},
        {"system": "Flower x: 30 SuperNodes, virtual clients: start-up", "mode": "virtual", "startup_s": 7.0,
         "shutdown_s": 2.0, "import_s": 1.0, "discovery_s": None, "load_1m": 1.5},
        {"system": "machine", "note": f"probe {gflops}", "load_start": 1.0},
    ]
    for r in rows:
        bench.describe(r)
    return rows


def test_combine_takes_medians_keeps_every_comparison_and_needs_every_one_to_meet_a_goal(bench):
    runs = [_comparison(bench, 0.22, 0.64, 220, 0.33),   # 2.9x Flower: met
            _comparison(bench, 0.24, 0.64, 216, 0.35),   # 2.67x: missed
            _comparison(bench, 0.23, 0.66, 225, 0.30)]   # 2.87x: met
    rows = {r["system"]: r for r in bench.combine(runs)}
    auto = rows["built-in auto"]
    assert auto["round_s"] == pytest.approx(0.23) and auto["round_s_runs"] == [0.22, 0.24, 0.23]
    assert auto["vs_flower_runs"] == pytest.approx([0.64 / 0.22, 0.64 / 0.24, 0.66 / 0.23])
    assert auto["vs_flower"] == pytest.approx(0.66 / 0.23)  # the median of the three ratios
    assert auto["meets_flower_goal"] is False and auto["meets_flower_goal_runs"] == 2
    assert auto["meets_floor_goal"] is True and auto["meets_floor_goal_runs"] == 3
    assert auto["x_floor_spread"] == "2.20-2.40" and auto["repeats"] == 3
    assert len(auto["times"]) == 3  # every comparison's round times, not only the first one's
    assert len(auto["train_per_worker_s"]) == 3
    # the engine's own split, from the medians: what the round costs beyond its clients' training, and the
    # speed over Flower it would have without that
    assert auto["train_s_runs"] == [0.2, 0.2, 0.2] and auto["overhead_s"] == pytest.approx(0.03)
    assert auto["note"] == ("engine processes; per-round overhead 0.03 (runs: 0.02, 0.04, 0.03) s (round - "
                            "clients' training / workers); with no overhead at all 3.20 (runs: 3.20, 3.20, 3.30) "
                            "times Flower's speed")
    floor = rows["floor (FLOPs / matmul probe)"]
    assert "x_floor_spread" not in floor and "220/216/225 GFLOP/s" in floor["note"]
    flower = rows["Flower x: 30 SuperNodes, virtual clients"]
    # the note is made from the median, with each comparison's value, never copied from the first comparison
    assert "overhead 0.33 (runs: 0.33, 0.35, 0.3) s" in flower["note"]
    start = rows["Flower x: 30 SuperNodes, virtual clients: start-up"]
    assert start["note"].startswith("7.0 (runs: 7.0, 7.0, 7.0) s") and "discovery" not in start["note"]
    assert rows["machine"]["note"] == "run 1: probe 220 | run 2: probe 216 | run 3: probe 225"


def test_the_docs_table_says_how_many_comparisons_met_a_goal(bench):
    flower_docs = _module("flower_docs_under_test", ROOT / "docs" / "experiments" / "flower.py")
    runs = [_comparison(bench, 0.22, 0.64, 220, 0.33), _comparison(bench, 0.24, 0.64, 216, 0.35)]
    rows = bench.combine(runs)
    for r in rows:
        r["versions"] = {"torch": "t"}
        r["benchmark_wall_s"] = 10.0
        r["cores"] = 2
    text = flower_docs.render_rounds(rows)
    auto = next(line for line in text.splitlines() if "built-in auto" in line)
    assert "2.30x (2.20 / 2.40)" in auto and "no (met in 1 of 2)" in auto and "yes (met in 2 of 2)" in auto
    assert "2 whole comparison(s)" in text
    assert "0.200 s (0.200 / 0.200)" in auto  # the clients' training per worker
    assert "1 epoch: overhead 0.030 s (0.020 / 0.040), with none 3.20x (3.20 / 3.20) Flower's speed" in text
