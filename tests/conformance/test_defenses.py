"""Every registered mitigation and robust trainer, enrolled from the registries with the parameters each
plugin declares (`example_params`, `bad_params`; see test_plugins.py for the declarations themselves): the
caller's model and data are never mutated, the same seed gives the same output, bad parameters raise
ConfigError with the declared message, and models come back with no hooks and their training mode restored,
also when the work raises half-way or the clean set does not fit the model."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses import MITIGATIONS, ROBUST_TRAINERS
from backdoor_arena.errors import ArenaError, ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, TINY_RGB_INFO, Exploding, no_hooks, same_state, state_of, tiny_dataset


@pytest.fixture(scope="module")
def model_and_data():
    ds = tiny_dataset(64, info=TINY_RGB_INFO)
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)  # conv + BatchNorm + dropout: the harder case
    fit(model, ds, TrainConfig(epochs=1, batch_size=16, progress=False))
    return model, ds




def _mitigation(name):
    cls = MITIGATIONS.get(name)
    return cls(**cls.example_params)


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_contract(name, model_and_data):
    model, ds = model_and_data
    model = copy.deepcopy(model).train()  # the caller's mode must survive
    before, images, labels = state_of(model), ds.images.clone(), ds.labels.clone()
    a = _mitigation(name).repair(model, ds)
    b = _mitigation(name).repair(model, ds)
    assert same_state(state_of(model), before) and torch.equal(ds.images, images) and torch.equal(ds.labels, labels)
    assert model.training and no_hooks(model) and no_hooks(a.model)
    assert a.model is not model and not a.model.training
    assert same_state(state_of(a.model), state_of(b.model))  # same seed, same output
    assert isinstance(a.curve, list) and isinstance(a.info, dict)


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_bad_parameters(name):
    cls = MITIGATIONS.get(name)
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            cls(**{**cls.example_params, **bad})


def _counting(calls: list[int]):
    return lambda _m: calls.append(1) or {}


def _failing_on_last(calls: list[int]):
    """A monitor that fails on what was the last call: deepest into the work (e.g. fine-tuning's hooks)."""

    def monitor(_m):
        calls.pop()
        if not calls:
            raise RuntimeError("evaluator failed")
        return {}

    return monitor


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_cleans_up_after_an_exception(name, model_and_data):
    model, ds = model_and_data
    if "monitor" not in inspect.signature(MITIGATIONS.get(name).repair).parameters:
        pytest.fail(f"{name}: repair must accept monitor= (the evaluator's view along the curve)")
    for training in (True, False):
        model = copy.deepcopy(model).train(training)
        before = state_of(model)
        calls: list[int] = []
        _mitigation(name).repair(model, ds, monitor=_counting(calls))
        assert calls, "the monitor is called at least once"
        with pytest.raises(RuntimeError, match="evaluator failed"):
            _mitigation(name).repair(model, ds, monitor=_failing_on_last(calls))
        assert model.training == training and no_hooks(model) and same_state(state_of(model), before)




@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_cleans_up_after_a_forward_pass_fails(name, model_and_data):
    model, ds = model_and_data
    Exploding.calls[0] = 0
    _mitigation(name).repair(Exploding(copy.deepcopy(model), 10**9), ds)
    total = Exploding.calls[0]  # forward passes of a whole repair
    for after in sorted({1, total // 2, total - 1}):  # early (activation capture) ... the last pass
        for training in (True, False):
            wrapped = Exploding(copy.deepcopy(model), after).train(training)
            before = state_of(wrapped)
            Exploding.calls[0] = 0
            with pytest.raises((ValueError, ArenaError)):
                _mitigation(name).repair(wrapped, ds)
            assert wrapped.training == training and no_hooks(wrapped) and same_state(state_of(wrapped), before)


@pytest.mark.parametrize("name", MITIGATIONS.names())
def test_mitigation_refuses_a_clean_set_that_does_not_fit_in_one_line(name, model_and_data):
    model, _ = model_and_data
    model = copy.deepcopy(model).train()
    info = DatasetInfo("other", 3, (1, 28, 28), ("a", "b", "c"), (0.5,), (0.5,))
    wrong = Dataset(info, torch.zeros(60, 1, 28, 28, dtype=torch.uint8), torch.arange(60) % 3)
    for clean in (wrong, tiny_dataset(16, info=TINY_INFO)):
        with pytest.raises(ArenaError) as err:
            _mitigation(name).repair(model, clean)
        assert "\n" not in str(err.value) and ("clean" in str(err.value) or "shape" in str(err.value))
        assert model.training and no_hooks(model)


@pytest.mark.parametrize("name", ROBUST_TRAINERS.names())
def test_robust_trainer_contract(name):
    cls = ROBUST_TRAINERS.get(name)
    ds = tiny_dataset(64, info=TINY_INFO)
    images, labels = ds.images.clone(), ds.labels.clone()
    a = cls(**cls.example_params).fit(ds)
    b = cls(**cls.example_params).fit(ds)
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)
    assert same_state(state_of(a.model), state_of(b.model))  # same seed, same model
    assert no_hooks(a.model) and not a.model.training
    assert a.epsilon > 0 and 0 < a.delta < 1  # the certificate


@pytest.mark.parametrize("name", ROBUST_TRAINERS.names())
def test_robust_trainer_bad_parameters(name):
    cls = ROBUST_TRAINERS.get(name)
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            cls(**{**cls.example_params, **bad})
