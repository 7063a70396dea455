"""Every registered detector and data filter, enrolled from the registries with the parameters each plugin
declares (`example_params`, `bad_params`; the declarations themselves: test_plugins.py): no mutation of the
model or the clean set, same seed -> same output, ConfigError with the declared message on bad parameters,
and no hooks left / training mode restored even when the computation fails half-way. (Mitigations, Neural
Cleanse's included: test_defenses.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor_arena.defenses import DATA_FILTERS, INPUT_DETECTORS, MODEL_DETECTORS
from backdoor_arena.errors import ArenaError, ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_RGB_INFO, Exploding, tiny_dataset

REGISTRY = {"model": MODEL_DETECTORS, "input": INPUT_DETECTORS, "data": DATA_FILTERS}
ALL = [(kind, name) for kind, registry in REGISTRY.items() for name in registry.names()]


@pytest.fixture(scope="module")
def tiny():
    """A small conv net with BatchNorm and dropout (so that train/eval mode matters), briefly trained."""
    ds = tiny_dataset(120, info=TINY_RGB_INFO)
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, seed=0)
    fit(model, ds, TrainConfig(epochs=2, batch_size=16, lr=0.05, progress=False))
    return model, ds


def run(kind: str, name: str, model: nn.Module, ds) -> torch.Tensor:
    cls = REGISTRY[kind].get(name)
    plugin = cls(**cls.example_params)
    if kind == "model":
        verdict = plugin.inspect(model, ds)
        assert isinstance(verdict.flagged, bool) and verdict.flagged == (verdict.score > verdict.threshold)
        return torch.tensor([verdict.score])
    if kind == "input":
        return plugin.fit(model, ds).score(ds.float_images()[:10])
    return plugin.score(model, ds)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_the_known_detectors_are_enrolled():
    assert {"neural-cleanse"} <= set(MODEL_DETECTORS.names())
    assert {"strip", "sentinet"} <= set(INPUT_DETECTORS.names())
    assert {"spectral"} <= set(DATA_FILTERS.names())


@pytest.mark.parametrize("kind, name", ALL)
def test_no_mutation_and_determinism(kind, name, tiny):
    model, ds = tiny
    model.train()  # the caller's mode must survive
    state = {k: v.clone() for k, v in model.state_dict().items()}
    images, labels = ds.images.clone(), ds.labels.clone()
    a = run(kind, name, model, ds)
    b = run(kind, name, model, ds)
    assert torch.equal(a, b), "same seed, same output"
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items()), "the model was mutated"
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels), "the clean set was mutated"
    assert model.training and _hooks(model) == 0
    model.eval()


@pytest.mark.parametrize("kind, name", ALL)
def test_bad_parameters_raise_config_error(kind, name):
    cls = REGISTRY[kind].get(name)
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            cls(**{**cls.example_params, **bad})




@pytest.mark.parametrize("kind, name", ALL)
def test_failure_half_way_leaves_model_clean(kind, name, tiny):
    model, ds = tiny
    counting = Exploding(model, after=10**9)  # a dry run counts the forward passes the detector makes
    Exploding.calls[0] = 0
    run(kind, name, counting.eval(), ds)
    passes = Exploding.calls[0]
    # fail inside the hooked / optimising part (the 2nd or 4th pass), or at the last pass of a short detector
    wrapped = Exploding(model, after=min(1 if kind == "data" else 3, passes - 1))
    for training in (True, False):
        Exploding.calls[0] = 0
        wrapped.train(training)
        with pytest.raises((ValueError, ArenaError)):
            run(kind, name, wrapped, ds)
        assert wrapped.training == training and model.training == training
        assert _hooks(wrapped) == 0
    model.eval()


@pytest.mark.parametrize("kind, name", ALL)
def test_clean_set_of_wrong_shape_is_a_one_line_error(kind, name, tiny):
    from backdoor_arena.data.dataset import Dataset, DatasetInfo

    model, _ = tiny
    info = DatasetInfo("other", 3, (1, 28, 28), ("a", "b", "c"), (0.5,), (0.5,))
    wrong = Dataset(info, torch.zeros(60, 1, 28, 28, dtype=torch.uint8), torch.arange(60) % 3)
    model.train()
    with pytest.raises(ArenaError) as err:
        run(kind, name, model, wrong)
    assert "\n" not in str(err.value) and ("clean" in str(err.value) or "shape" in str(err.value))
    assert model.training and _hooks(model) == 0
    model.eval()
