"""Every registered mitigation and robust trainer, enrolled automatically (every module of
`backdoor_arena.defenses` is imported, so a new registration is tested without a new test):
the caller's model and data are never mutated, the same seed gives the same output, bad parameters raise
ConfigError naming the parameter, and models come back with no hooks and their training mode restored,
also when the work raises half-way."""

from __future__ import annotations

import copy
import importlib
import inspect
import pkgutil

import pytest
import torch

import backdoor_arena.defenses as defenses
from backdoor_arena.defenses import MITIGATIONS, ROBUST_TRAINERS
from backdoor_arena.errors import ArenaError, ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, TINY_RGB_INFO, tiny_dataset

for _mod in pkgutil.iter_modules(defenses.__path__):
    importlib.import_module(f"{defenses.__name__}.{_mod.name}")

# Per plugin: fast parameters for tiny data, and a bad parameter with the name the error must mention.
MITIGATION_PARAMS = {
    "pruning": ({"step": 32}, {"max_accuracy_drop": 2.0}, "max_accuracy_drop"),
    "fine-tuning": ({"epochs": 1}, {"epochs": 0}, "epochs"),
    "fine-pruning": ({"epochs": 1, "step": 32}, {"lr": -1.0}, "lr"),
    "nc-unlearning": ({"epochs": 1, "detector": {"steps": 6, "n_samples": 30, "batch_size": 8}},
                      {"stamp_fraction": -0.1}, "stamp_fraction"),
    "nc-pruning": ({"step_fraction": 0.1, "detector": {"steps": 6, "n_samples": 30, "batch_size": 8}},
                   {"max_fraction": 3}, "max_fraction"),
}
TRAINER_PARAMS = {
    "dp-sgd": ({"architecture": "emnist-cnn", "epochs": 1, "batch_size": 32}, {"noise": -1.0}, "dp_noise"),
}


def _model_and_data():
    ds = tiny_dataset(64, info=TINY_RGB_INFO)
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)  # conv + BatchNorm: the harder case for pruning
    fit(model, ds, TrainConfig(epochs=1, batch_size=16, progress=False))
    return model, ds


@pytest.fixture(scope="module")
def model_and_data():
    return _model_and_data()


def _no_hooks(model):
    return all(not (m._forward_hooks or m._backward_hooks or m._forward_pre_hooks) for m in model.modules()) and all(
        not p._backward_hooks for p in model.parameters() if getattr(p, "_backward_hooks", None) is not None)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_every_plugin_is_enrolled():
    missing = [n for n in MITIGATIONS.names() if n not in MITIGATION_PARAMS]
    missing += [n for n in ROBUST_TRAINERS.names() if n not in TRAINER_PARAMS]
    assert not missing, f"add fast and bad parameters for {missing} in tests/conformance/test_defenses.py"


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_contract(name, model_and_data):
    fast, bad, param = MITIGATION_PARAMS.get(name, ({}, {}, ""))
    model, ds = model_and_data
    model = copy.deepcopy(model).train()  # the caller's mode must survive
    before, images = _state(model), ds.images.clone()
    a = MITIGATIONS.get(name)(**fast).repair(model, ds)
    b = MITIGATIONS.get(name)(**fast).repair(model, ds)
    assert _same(_state(model), before) and torch.equal(ds.images, images)  # nothing mutated
    assert model.training and _no_hooks(model) and _no_hooks(a.model)
    assert a.model is not model and not a.model.training
    assert _same(_state(a.model), _state(b.model))  # same seed, same output
    assert isinstance(a.curve, list) and isinstance(a.info, dict)
    with pytest.raises(ConfigError, match=param):
        MITIGATIONS.get(name)(**{**fast, **bad})


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_cleans_up_after_an_exception(name, model_and_data):
    fast, _, _ = MITIGATION_PARAMS.get(name, ({}, {}, ""))
    model, ds = model_and_data
    model = copy.deepcopy(model).train()
    before = _state(model)

    if "monitor" not in inspect.signature(MITIGATIONS.get(name).repair).parameters:
        # no evaluator callback to fail: fail on a clean set of the wrong shape instead
        with pytest.raises((ArenaError, RuntimeError)):
            MITIGATIONS.get(name)(**fast).repair(model, tiny_dataset(16, info=TINY_INFO))
        assert model.training and _no_hooks(model) and _same(_state(model), before)
        return
    calls = []
    MITIGATIONS.get(name)(**fast).repair(model, ds, monitor=lambda _m: calls.append(1) or {})

    def failing_monitor(_m):  # fails on the last call: deepest into the work (e.g. fine-tuning's hooks)
        calls.pop()
        if not calls:
            raise RuntimeError("evaluator failed")
        return {}

    with pytest.raises(RuntimeError, match="evaluator failed"):
        MITIGATIONS.get(name)(**fast).repair(model, ds, monitor=failing_monitor)
    assert model.training and _no_hooks(model) and _same(_state(model), before)


@pytest.mark.parametrize("name", ROBUST_TRAINERS.names())
def test_robust_trainer_contract(name):
    fast, bad, param = TRAINER_PARAMS.get(name, ({}, {}, ""))
    ds = tiny_dataset(64, info=TINY_INFO)
    images, labels = ds.images.clone(), ds.labels.clone()
    a = ROBUST_TRAINERS.get(name)(**fast, seed=3).fit(ds)
    b = ROBUST_TRAINERS.get(name)(**fast, seed=3).fit(ds)
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)
    assert _same(_state(a.model), _state(b.model))
    assert _no_hooks(a.model) and not a.model.training
    assert a.epsilon > 0 and 0 < a.delta < 1  # the certificate
    with pytest.raises(ConfigError, match=param):
        ROBUST_TRAINERS.get(name)(**{**fast, **bad})
