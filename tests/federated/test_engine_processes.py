"""The `processes` engine: clients trained in parallel by forked single-thread workers.

Its updates are bit-identical to the sequential engine's at one thread for dropout-free models (each worker
runs `sgd_local` with one thread); with dropout they do not depend on the number of workers (per-client
streams); the workers are kept between rounds and replaced when the model or data change; a client that
fails is an error in the caller, not a hang; `auto` may choose it where it can run clients in parallel."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor_arena.data import load_dataset
from backdoor_arena.federated import engines
from backdoor_arena.federated.engines import (
    ENGINES,
    LocalTraining,
    ProcessEngine,
    SequentialEngine,
    auto_candidates,
    can_fork,
    choose_engine,
    flat_params,
    get_engine,
)
from backdoor_arena.federated.partition import partition_by_writer
from backdoor_arena.train import create_model

pytestmark = pytest.mark.skipif(not can_fork(), reason="the processes engine forks its workers (Linux)")


@pytest.fixture(scope="module")
def fed(data_root):
    return partition_by_writer(load_dataset("mnist", "train", data_root, writers=True))


@pytest.fixture
def threads():
    """Set torch's thread budget inside a test, restored afterwards."""
    previous = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(previous)


def _round(fed, n=5):
    order = torch.argsort(fed.sizes())
    picks = [int(order[0]), int(order[-1]), int(order[270]), 5, 17][:n]  # 19 .. 131 images: partial batches
    return [fed.indices[k] for k in picks], [101 + i for i in range(len(picks))]


def test_processes_is_registered_and_buildable():
    assert "processes" in ENGINES.names() and get_engine("processes").name == "processes"


def test_updates_are_bit_identical_to_the_sequential_engine_at_one_thread(fed, threads):
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    w = flat_params(model)
    indices, seeds = _round(fed)
    cfg = LocalTraining(epochs=2, batch_size=20, lr=0.1)
    threads(1)
    ref = SequentialEngine().train(model, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    threads(2)  # two workers, one thread each
    engine = ProcessEngine()
    got = engine.train(model, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    assert engine._pool is not None and len(engine._pool.procs) == 2
    assert torch.linalg.vector_norm(ref, dim=1).min() > 0.05  # they really trained
    assert torch.equal(got, ref)
    # each client's training time, measured in the worker that trained it, in the caller's order: the client
    # of 131 images (7 batches an epoch) takes longer than the one of 19 (one batch)
    assert engine.trained_by == 2 and len(engine.client_s) == 5 and min(engine.client_s) > 0
    assert engine.client_s[1] > engine.client_s[0]
    # a second round reuses the workers, from new weights
    pool = engine._pool
    w2 = w + 0.01 * ref[0]
    again = engine.train(model, w2, fed.dataset.images, fed.dataset.labels, indices[:3], seeds[:3], cfg)
    assert engine._pool is pool and len(engine.client_s) == 3
    assert torch.equal(got, ref)  # the first round's result is the caller's own, not the workers' shared buffer
    threads(1)
    assert torch.equal(again, SequentialEngine().train(model, w2, fed.dataset.images, fed.dataset.labels,
                                                       indices[:3], seeds[:3], cfg))
    engine.close()
    assert all(not p.is_alive() for p in pool.procs)


class _WithDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def test_with_dropout_the_updates_do_not_depend_on_the_workers(fed, threads):
    torch.manual_seed(0)
    model = _WithDropout()
    w = flat_params(model)
    indices, seeds = _round(fed)
    cfg = LocalTraining(epochs=1, batch_size=20, lr=0.1)
    images, labels = fed.dataset.images, fed.dataset.labels
    threads(1)  # in this process, one client after another
    one = ProcessEngine().train(model, w, images, labels, indices, seeds, cfg)
    threads(3)  # three workers
    engine = ProcessEngine()
    three = engine.train(model, w, images, labels, indices, seeds, cfg)
    engine.close()
    assert torch.equal(one, three)
    threads(1)
    reversed_order = ProcessEngine().train(model, w, images, labels, indices[::-1], seeds[::-1], cfg)
    assert torch.equal(reversed_order, one.flip(0))  # a client's update is its own


def test_new_model_or_data_get_new_workers_and_failures_raise(fed, threads):
    threads(2)
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    w = flat_params(model)
    indices, seeds = _round(fed, 3)
    cfg = LocalTraining(epochs=1, batch_size=20, lr=0.1)
    engine = ProcessEngine()
    engine.train(model, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    first = engine._pool
    other = create_model("badnet-mnist", fed.dataset.info, seed=1)[0]
    engine.train(other, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    assert engine._pool is not first and all(not p.is_alive() for p in first.procs)
    bad = [indices[0], torch.tensor([10**9])]  # a sample index past the data
    with pytest.raises(RuntimeError, match="failed in the processes engine"):
        engine.train(other, w, fed.dataset.images, fed.dataset.labels, bad, seeds[:2], cfg)
    # the engine recovers: fresh workers next time
    out = engine.train(other, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    assert out.shape == (3, w.numel())
    engine.close()


def test_auto_considers_processes_with_two_threads(fed, threads, monkeypatch):
    threads(1)
    assert "processes" not in auto_candidates()
    threads(2)
    assert auto_candidates() == ("sequential", "vectorised", "processes")
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    indices, _ = _round(fed, 4)
    name, timing = choose_engine(model, fed.dataset.images, fed.dataset.labels, indices, LocalTraining(1, 20, 0.1),
                                 min_time_s=0.0, candidates=["sequential", "processes"])
    assert name in ("sequential", "processes") and "vectorised_epoch_s" not in timing
    assert timing["processes_epoch_s"] > 0 and timing["processes_start_s"] >= 0
    calls = []
    monkeypatch.setattr(engines, "choose_engine", lambda *a, **k: calls.append(k) or ("processes", {}))
    assert engines.EngineChooser().choose(model, fed.dataset.images, fed.dataset.labels, indices,
                                          LocalTraining(1, 20, 0.1))[0] == "processes"
    assert calls[0]["candidates"] == ("sequential", "vectorised", "processes")


def test_a_scenario_runs_on_the_processes_engine_like_on_sequential(data_root, threads):
    from backdoor_arena.federated.config import build_scenario
    from backdoor_arena.federated.pipeline import Federation, FederationCache, RoundPipeline

    cache = FederationCache()

    def one_round(engine: str) -> torch.Tensor:
        sc = build_scenario({"name": "proc", "seed": 1, "data": {"test_samples": 50},
                             "model": {"architecture": "badnet-mnist"}, "attack": {"name": "none"},
                             "federation": {"rounds": 1, "clients_per_round": 4, "local_epochs": 1,
                                            "engine": engine}})
        fed = Federation.setup(sc, data_root, progress=False, cache=cache)
        assert fed.engine_name == engine
        return next(RoundPipeline(fed).run()).benign_updates

    threads(1)
    ref = one_round("sequential")
    threads(2)
    assert torch.equal(one_round("processes"), ref)
