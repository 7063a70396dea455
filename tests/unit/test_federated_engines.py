"""Both client-training engines give the same updates; partition by writer; engine choice."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from backdoor_arena.data import load_dataset
from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.federated import engines
from backdoor_arena.federated.engines import (
    EngineChooser,
    LocalTraining,
    SequentialEngine,
    VectorisedEngine,
    choose_engine,
    flat_params,
    get_engine,
)
from backdoor_arena.federated.partition import partition_by_writer
from backdoor_arena.train import create_model


@pytest.fixture(scope="module")
def fed(data_root):
    return partition_by_writer(load_dataset("mnist", "train", data_root, writers=True))


def test_partition_is_mnist_writers(fed):
    sizes = fed.sizes()
    assert fed.num_clients == 539 and int(sizes.sum()) == 60000
    assert int(sizes.min()) == 19 and int(sizes.max()) == 131
    groups = fed.dataset.groups
    assert all(bool((groups[i] == c).all()) for i, c in zip(fed.indices[:20], fed.client_ids[:20], strict=True))
    assert fed.memory_bytes() < 60 * 2**20  # images stored once as uint8


def _no_dropout(model: nn.Module) -> nn.Module:
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


@pytest.mark.parametrize("arch, dtype, tol", [
    ("badnet-mnist", torch.float32, 1e-5),
    # 1.2M parameters, 9216-wide fc: float32 summation order (vmap's batched kernels vs a loop) drifts to ~2e-4
    # over 14 steps, so the exact-maths check runs in float64; float32 agreement is checked loosely
    ("emnist-cnn", torch.float64, 1e-5),
    ("emnist-cnn", torch.float32, 1e-3),
])
def test_engines_agree_on_a_seeded_round(fed, arch, dtype, tol):
    model, _ = create_model(arch, fed.dataset.info, seed=0)
    model = _no_dropout(model).to(dtype)  # dropout draws differ between a loop and vmap; the maths must not
    # unequal client sizes (19 .. 131 images) exercise the padding mask, incl. a partial last batch
    order = torch.argsort(fed.sizes())
    picks = [int(order[0]), int(order[-1]), int(order[270]), 5]
    indices = [fed.indices[k] for k in picks]
    seeds = [11, 12, 13, 14]
    cfg = LocalTraining(epochs=2, batch_size=20, lr=0.1)
    w = flat_params(model)
    a = SequentialEngine().train(model, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    b = VectorisedEngine().train(model, w, fed.dataset.images, fed.dataset.labels, indices, seeds, cfg)
    assert a.shape == (4, w.numel())
    assert torch.linalg.vector_norm(a, dim=1).min() > 0.05  # they really trained
    assert a.dtype == dtype and torch.allclose(a, b, atol=tol, rtol=0), float((a - b).abs().max())
    assert torch.equal(w, flat_params(model))  # the global weights were not modified


def test_vectorised_refuses_batchnorm_and_auto_picks_sequential(fed):
    model, _ = create_model("gtsrb-cnn", fed.dataset.info, seed=0)
    w = flat_params(model)
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        VectorisedEngine().train(model, w, fed.dataset.images, fed.dataset.labels, [fed.indices[0]], [0],
                                 LocalTraining(1, 20, 0.1))
    assert choose_engine(model, fed.dataset.images, fed.dataset.labels, [fed.indices[0]], LocalTraining(1))[0] == \
        "sequential"


@pytest.mark.parametrize("slow", ["sequential", "vectorised"])
def test_choose_engine_picks_the_engine_that_is_faster_here(fed, monkeypatch, slow):
    """The choice follows the measurement: an engine made 100 ms slower per call loses, whichever it is, and the
    prediction scales a step by sum_k (sequential) or max_k (vectorised) of the clients' step counts."""
    import time as _time

    cls = engines.SequentialEngine if slow == "sequential" else engines.VectorisedEngine
    original = cls.train

    def slowed(self, *args, **kwargs):
        _time.sleep(0.1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "train", slowed)
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    idx, cfg = list(fed.indices[:4]), LocalTraining(1, 20, 0.1)
    name, timing = choose_engine(model, fed.dataset.images, fed.dataset.labels, idx, cfg, repeats=1, min_time_s=0.0)
    steps = [math.ceil(len(i) / 20) for i in idx]
    assert timing["sequential_epoch_s"] == pytest.approx(timing["sequential_step_s"] * sum(steps))
    assert timing["vectorised_epoch_s"] == pytest.approx(timing["vectorised_step_s"] * max(steps))
    if slow == "vectorised":  # 100 ms per vmapped call dwarfs a tiny model's step
        assert timing["vectorised_step_s"] >= 0.1 and name == "sequential"
    else:  # 100 ms per client: the sequential prediction grows with every client's step count
        assert timing["sequential_step_s"] >= 0.1 / max(steps) and name == "vectorised"


def test_engine_choices_are_memoised_by_the_chooser_that_owns_them(fed, monkeypatch):
    calls = []
    monkeypatch.setattr(engines, "choose_engine", lambda *a, **k: calls.append(1) or ("vectorised", {"x": 1.0}))
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    idx, cfg = list(fed.indices[:3]), LocalTraining(1, 20, 0.1)
    chooser, other = EngineChooser(), EngineChooser()
    assert chooser.choose(model, fed.dataset.images, fed.dataset.labels, idx, cfg)[0] == "vectorised"
    chooser.choose(model, fed.dataset.images, fed.dataset.labels, idx, cfg)
    assert len(calls) == 1 and len(chooser.choices) == 1
    other.choose(model, fed.dataset.images, fed.dataset.labels, idx, cfg)  # a new owner measures again
    assert len(calls) == 2


def test_engine_names_and_local_training_validation():
    assert get_engine("sequential").name == "sequential"
    with pytest.raises(ConfigError, match="engine must be one of"):
        get_engine("gpu")
    with pytest.raises(ConfigError, match="batch_size"):
        LocalTraining(epochs=1, batch_size=0)
