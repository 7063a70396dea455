"""Behaviour unchanged by the round pipeline: `fl run configs/fl/quick.toml federation.engine="sequential"
federation.rounds=6`, recorded before the architecture step (tests/golden/fl-quick-seq6.records.jsonl, under
the old names main_accuracy / backdoor_accuracy), gives the same numbers: the same clients and accuracies
exactly, the norms to float rounding. (Bit for bit until client training moved to channels-last convolutions
and one fused SGD step, which changed only the rounding: 6e-8 relative on the first round's median norm.)

Each golden file is one CPU's (vector kernels round differently from one CPU to another, and training
amplifies it: on an AMD EPYC with AVX-512 the accuracies drifted up to 1.3 points by round 6), and the run must
equal one of them: fl-quick-seq6.records.jsonl is the CPU of the machines up to 2026-11-29;
fl-quick-seq6.amd-epyc-avx512.records.jsonl was recorded on 2026-11-30 on an AMD EPYC (torch CPU capability
AVX512) by the code that still equalled the first file on the first CPU.

The golden run used 2 CPU threads (the CLI's default on the 2-core machine): float summation order depends on
the thread count, so this test runs with exactly 2 threads and restores the caller's setting afterwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoor_arena.federated import config, simulation

REPO = Path(__file__).resolve().parents[2]
GOLDENS = sorted((REPO / "tests" / "golden").glob("fl-quick-seq6*.records.jsonl"))
RENAMED = {"main_accuracy": "clean_accuracy", "backdoor_accuracy": "attack_success_rate"}
COMPARED = ["main_accuracy", "backdoor_accuracy", "benign_norm_p50", "benign_norm_p90", "benign_norm_p99",
            "aggregate_norm", "malicious_norms", "malicious_clients", "sampled_clients"]
GOLDEN_THREADS = 2


@pytest.fixture(scope="module")
def records(data_root):
    previous, env = torch.get_num_threads(), pytest.MonkeyPatch()
    env.setenv("BACKDOOR_ARENA_THREADS", str(GOLDEN_THREADS))  # for any layer below that still reads it
    torch.set_num_threads(GOLDEN_THREADS)
    try:
        sc = config.load_scenario(REPO / "configs" / "fl" / "quick.toml",
                                  ['federation.engine="sequential"', "federation.rounds=6"])
        yield simulation.simulate(sc, progress=False, data_root=data_root).records
    finally:
        torch.set_num_threads(previous)
        env.undo()


def _differences(records: list[dict], golden: list[dict]) -> list[tuple[int, str]]:
    """The (round, key) pairs where a run differs from one golden file (norms: to float rounding)."""
    out = []
    if [r["round"] for r in records] != [g["round"] for g in golden]:
        return [(-1, "round")]
    for g, r in zip(golden, records, strict=True):
        if r["phase"] != g["phase"]:
            out.append((g["round"], "phase"))
        for key in COMPARED:
            if key not in g:  # round 0 has no sampled clients nor aggregate
                continue
            got = r[RENAMED.get(key, key)]
            if g[key] is not None and ("norm" in key):
                if got != pytest.approx(g[key], rel=1e-4):
                    out.append((g["round"], key))
            elif got != g[key]:
                out.append((g["round"], key))
    return out


def test_every_round_equals_the_golden_records(records):
    assert len(GOLDENS) >= 2
    assert [r["round"] for r in records] == list(range(7))
    diffs = {}
    for path in GOLDENS:
        golden = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        diffs[path.name] = _differences(records, golden)
    assert any(not d for d in diffs.values()), diffs
