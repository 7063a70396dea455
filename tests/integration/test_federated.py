"""A short real federated run on MNIST's writers: an unconstrained boosted attacker in every round raises
the attack success rate far above its no-attack level, and norm clipping brings it down again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoor_arena.federated import simulation
from backdoor_arena.federated.config import build_scenario
from backdoor_arena.runtime import set_threads

BASE = {
    "name": "it", "seed": 0,
    "data": {"test_samples": 300},
    "model": {"architecture": "badnet-mnist"},
    "federation": {"rounds": 3, "clients_per_round": 8, "local_epochs": 1, "engine": "vectorised"},
    "warmup": {"pretrain_epochs": 1, "pretrain_samples": 3000},
    "backdoor": {"tasks": 20, "attacker_clean_samples": 100},
    "attack": {"name": "unconstrained", "epochs": 2},
    "adversary": {"name": "fixed-frequency", "frequency": 1},
    "variants": {
        "none": {"attack": {"name": "none"}},
        "attack": {},
        "clip": {"aggregator": {"name": "norm-clip", "max_norm": 1.0}},
    },
}


@pytest.fixture(scope="module", autouse=True)
def threads():
    """The library never sets threads; the test process does ($BACKDOOR_ARENA_THREADS), as the CLI would."""
    previous = torch.get_num_threads()
    set_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("fl")
    sc = build_scenario(BASE)
    return out, simulation.run_scenario(sc, out, progress=False, data_root=data_root)


def mean_backdoor(result):
    return sum(r["attack_success_rate"] for r in result.records[1:]) / (len(result.records) - 1)


def test_attack_plants_backdoor_and_clipping_removes_it(runs):
    _, res = runs
    none, attack, clip = mean_backdoor(res["none"]), mean_backdoor(res["attack"]), mean_backdoor(res["clip"])
    assert none < 0.1
    assert attack > none + 0.4, (none, attack)
    assert clip < attack - 0.3, (attack, clip)
    assert res["attack"].records[-1]["clean_accuracy"] > 0.6  # the main task survives
    assert res["attack"].summary["mean_attack_success_rate"] == pytest.approx(attack)


def test_records_and_artefacts(runs):
    out, res = runs
    recs = [json.loads(line) for line in Path(out / "attack" / "records.jsonl").read_text().splitlines()]
    assert [r["round"] for r in recs] == [0, 1, 2, 3]
    for r in recs[1:]:
        for key in ["clean_accuracy", "attack_success_rate", "malicious_clients", "benign_norm_p50", "benign_norm_p90",
                    "benign_norm_p99", "malicious_norms", "time_benign_s", "time_attack_s", "time_aggregate_s",
                    "attack_boost", "wall_s", "run_id", "versions"]:
            assert key in r
        assert r["verb"] == "fl-round" and r["config"]["attack"]["name"] == "unconstrained"
        assert len(r["malicious_clients"]) == 1 and 0 <= r["attack_success_rate"] <= 1
        assert r["malicious_norms"][0] > r["benign_norm_p99"]  # boosted
    assert all(not r["malicious_clients"] for r in res["none"].records)
    clipped = res["clip"].records[1:]
    assert all(r["clipped"] >= 1 for r in clipped)
    assert res["clip"].summary["max_norm"] == 1.0  # from the aggregator object, not the raw config
    for name in ["panels.png", "overlay.png", "summary.md", "attack/curves.png", "attack/run.json"]:
        assert (out / name).stat().st_size > 0
    meta = json.loads((out / "attack" / "run.json").read_text())
    assert meta["seed"] == 0 and "torch" in meta["versions"]


def test_same_seed_and_engine_give_the_same_records(runs, data_root):
    """Determinism: repeating a variant with its seed and engine reproduces every number but wall times."""
    _, results = runs
    again = simulation.simulate(build_scenario(BASE).variant("attack"), None, False, data_root, "attack")

    def numbers(records):
        return [{k: v for k, v in r.items() if not k.startswith("time_") and k != "wall_s"} for r in records]

    assert numbers(again.records) == numbers(results["attack"].records)
