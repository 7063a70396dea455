"""The round pipeline on a tiny real federation (MNIST writers, 5 clients a round, 2 rounds, no pre-training):
an omniscient attack sees the round's real benign updates (a toy attack sends minus their mean), a
non-omniscient one sees none but gets the aggregator's public parameters, records come from the typed
results, caches belong to an object the caller owns, and the library leaves thread settings alone."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.federated import pipeline as pipeline_module
from backdoor_arena.federated import simulation
from backdoor_arena.federated.aggregators import weighted_mean
from backdoor_arena.federated.attacks import CLIENT_ATTACKS, AttackResult, ClientAttack
from backdoor_arena.federated.config import build_scenario, scenario_threads
from backdoor_arena.federated.engines import sgd_local
from backdoor_arena.federated.pipeline import Federation, FederationCache, RoundPipeline, client_seed
from backdoor_arena.runtime import set_threads

_NO_PARAMS: Any = (({"x": 1}, "no parameter"),)


@dataclass(frozen=True)
class MinusMean(ClientAttack):
    """Omniscient toy: every attacker sends minus the mean of the round's benign updates."""

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[Any] = _NO_PARAMS
    param_help: ClassVar[dict[str, str]] = {}

    def craft(self, ctx):
        row = -ctx.benign_updates.mean(dim=0)
        return AttackResult(row.expand(ctx.n_malicious, -1).clone(), {"benign_seen": int(ctx.benign_updates.shape[0])})


@dataclass(frozen=True)
class Blind(ClientAttack):
    """Non-omniscient toy: sends zeros and reports what it was given."""

    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[Any] = _NO_PARAMS
    param_help: ClassVar[dict[str, str]] = {}

    def craft(self, ctx):
        return AttackResult(torch.zeros(ctx.n_malicious, ctx.n_params), {
            "saw_benign": ctx.benign_updates is not None or ctx.benign_weights is not None,
            "max_norm": ctx.aggregator_params.get("max_norm"), "first_id": ctx.malicious_ids[0]})


@dataclass(frozen=True)
class Short(Blind):
    """Broken toy: one update for all attackers."""

    def craft(self, ctx):
        return AttackResult(torch.zeros(1, ctx.n_params))


TOYS = {"toy-minus-mean": MinusMean, "toy-blind": Blind, "toy-short": Short}


@pytest.fixture(scope="module", autouse=True)
def threads():
    """The library never sets threads; the test process does ($BACKDOOR_ARENA_THREADS), as the CLI would."""
    previous = torch.get_num_threads()
    set_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", autouse=True)
def toys():
    for name, cls in TOYS.items():
        CLIENT_ATTACKS.register(name)(cls)
    yield
    for name in TOYS:
        CLIENT_ATTACKS.unregister(name)


def scenario(**tables):
    raw = {"name": "pipe", "seed": 0, "data": {"test_samples": 200}, "model": {"architecture": "badnet-mnist"},
           "federation": {"rounds": 2, "clients_per_round": 5, "local_epochs": 1, "engine": "sequential"},
           "backdoor": {"tasks": 3, "attacker_clean_samples": 20},
           "attack": {"name": "toy-minus-mean"}, "adversary": {"name": "fixed-frequency", "attackers": 2}}
    raw.update(tables)
    return build_scenario(raw)


@pytest.fixture(scope="module")
def cache(data_root):
    return FederationCache()


def test_an_omniscient_attack_sends_minus_the_mean_of_the_real_benign_updates(cache, data_root):
    fed = Federation.setup(scenario(), data_root, progress=False, cache=cache)
    pipe = RoundPipeline(fed)
    data = fed.data
    for t in (1, 2):
        w_t = pipe.weights.clone()
        rr = pipe.run_round()
        sel = rr.selection
        assert rr.round == t and len(sel.malicious) == 2 and len(sel.benign) == 3
        # the benign updates, recomputed here from w_t with each client's own seed (badnet-mnist has no dropout)
        expected = torch.stack([sgd_local(fed.model, w_t, data.dataset.images, data.dataset.labels, data.indices[k],
                                          client_seed(0, t, data.client_ids[k]), fed.local) for k in sel.benign])
        assert torch.allclose(rr.benign_updates, expected, atol=1e-6)
        sent = rr.attack.updates
        assert sent.shape == (2, w_t.numel()) and rr.attack.info == {"benign_seen": 3}
        assert torch.allclose(sent, -expected.mean(0).expand(2, -1), atol=1e-6)
        assert torch.equal(sent, -rr.benign_updates.mean(0).expand(2, -1))  # exactly what it sent
        # ... and that is what the server aggregated (FedAvg, benign rows first) and applied
        stack = torch.cat([rr.benign_updates, sent])
        weights = torch.cat([data.sizes()[sel.benign].double(), torch.full((2,), fed.attacker_weight).double()])
        assert torch.equal(rr.aggregation.update, weighted_mean(stack, weights))
        assert torch.equal(pipe.weights, w_t + rr.aggregation.update)


def test_the_simulation_records_come_from_the_round_results(cache, data_root):
    sc = scenario()
    fed = Federation.setup(sc, data_root, progress=False, cache=cache)
    results = list(RoundPipeline(fed).run())
    sim = simulation.simulate(sc, progress=False, data_root=data_root, cache=cache)
    assert len(sim.records) == 3 and [r["round"] for r in sim.records] == [0, 1, 2]
    for rr, rec in zip(results, sim.records[1:], strict=True):
        assert rec["malicious_norms"] == torch.linalg.vector_norm(rr.attack.updates, dim=1).tolist()
        assert rec["malicious_clients"] == fed.client_ids(rr.selection.malicious)
        assert rec["sampled_clients"] == fed.client_ids(rr.selection.sampled)
        assert rec["aggregate_norm"] == float(rr.aggregation.update.norm())
        assert rec["attack_benign_seen"] == 3 and rec["aggregator_weight_sum"] == rr.aggregation.info["weight_sum"]
        assert rec["clean_accuracy"] == rr.evaluation.clean_accuracy
        assert rec["attack_success_rate"] == rr.evaluation.attack_success_rate
    for rec in sim.records:
        assert rec["verb"] == "fl-round" and rec["run_id"] == sim.records[0]["run_id"] and rec["seed"] == 0
        assert rec["config"] == sc.to_dict() and "torch" in rec["versions"]
        assert "main_accuracy" not in rec and "backdoor_accuracy" not in rec
    w = fed.start_weights
    for rr in results:
        w = w + rr.aggregation.update
    assert torch.equal(sim.weights, w)
    s = sim.summary
    assert s["final_clean_accuracy"] == sim.records[-1]["clean_accuracy"] and s["attacked_rounds"] == 2
    assert s["final_attack_success_rate"] == sim.records[-1]["attack_success_rate"]
    assert s["start_attack_success_rate"] == sim.records[0]["attack_success_rate"] and "max_norm" not in s


def test_a_blind_attack_gets_no_benign_updates_but_the_public_parameters(cache, data_root):
    threads = torch.get_num_threads()
    sc = scenario(attack={"name": "toy-blind"}, aggregator={"name": "norm-clip", "max_norm": 2.5}, threads=threads + 1)
    sim = simulation.simulate(sc, progress=False, data_root=data_root, cache=cache)
    assert torch.get_num_threads() == threads and scenario_threads(sc) == threads + 1  # the caller applies it
    rec = sim.records[1]
    assert rec["attack_saw_benign"] is False and rec["attack_max_norm"] == 2.5
    assert rec["attack_first_id"] == rec["malicious_clients"][0]
    assert rec["malicious_norms"] == [0.0, 0.0] and rec["clipped"] >= 0
    assert sim.summary["max_norm"] == 2.5  # the summary asks the aggregator object


def test_an_attack_must_send_one_update_per_malicious_client(cache, data_root):
    fed = Federation.setup(scenario(attack={"name": "toy-short"}), data_root, progress=False, cache=cache)
    with pytest.raises(ConfigError, match=r"one update per malicious client, shape \(2, "):
        RoundPipeline(fed).run_round()


def test_warmup_rounds_are_benign_and_evaluation_follows_eval_every(cache, data_root):
    sc = scenario(warmup={"rounds": 1}, federation={"rounds": 3, "clients_per_round": 4, "local_epochs": 1,
                                                   "engine": "sequential", "eval_every": 2})
    results = list(RoundPipeline(Federation.setup(sc, data_root, progress=False, cache=cache)).run())
    assert [r.selection.phase for r in results] == ["warmup", "attack", "attack"]
    assert results[0].attack is None and results[0].malicious_updates.shape[0] == 0
    assert [r.evaluation is not None for r in results] == [False, True, True]  # round 2, and the last


def test_pretraining_is_cached_by_the_callers_cache_object(data_root, monkeypatch):
    calls = []
    real_fit = pipeline_module.fit
    monkeypatch.setattr(pipeline_module, "fit", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    sc = scenario(warmup={"pretrain_epochs": 1, "pretrain_samples": 300})
    mine = FederationCache()
    a = Federation.setup(sc, data_root, progress=False, cache=mine)
    b = Federation.setup(sc, data_root, progress=False, cache=mine)
    assert len(calls) == 1 and torch.equal(a.start_weights, b.start_weights) and len(mine.pretrained) == 1
    Federation.setup(sc, data_root, progress=False, cache=FederationCache())
    assert len(calls) == 2  # nothing is remembered outside the cache objects
    assert not hasattr(simulation, "_PRETRAINED") and not hasattr(pipeline_module, "_PRETRAINED")
