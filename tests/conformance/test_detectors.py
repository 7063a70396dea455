"""Every registered detector, data filter (and Neural Cleanse's mitigations), enrolled from the registries:
no mutation of the model or the clean set, same seed -> same output, ConfigError on bad parameters, and
no hooks left / training mode restored even when the computation fails half-way."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor_arena.defenses import (  # noqa: F401  (registrations)
    DATA_FILTERS,
    INPUT_DETECTORS,
    MITIGATIONS,
    MODEL_DETECTORS,
    neural_cleanse,
    sentinet,
    spectral,
    strip,
)
from backdoor_arena.errors import ArenaError, ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_RGB_INFO, tiny_dataset

# Small but valid parameters per plugin, and one bad parameter each (every registered name must appear).
FAST = {
    "neural-cleanse": {"steps": 12, "n_samples": 40, "batch_size": 8, "check_every": 3, "patience": 1},
    "strip": {"n_overlays": 8, "n_fit": 30, "chunk": 7},
    "sentinet": {"n_clean": 8, "n_fit": 30, "chunk": 7},
    "spectral": {"epsilon": 0.1},
    "nc-unlearning": {"epochs": 1, "detector": {"steps": 6, "n_samples": 30, "batch_size": 8}},
    "nc-pruning": {"step_fraction": 0.1, "detector": {"steps": 6, "n_samples": 30, "batch_size": 8}},
}
BAD = {
    "neural-cleanse": ({"steps": 0}, "steps"),
    "strip": ({"frr": 1.5}, "frr"),
    "sentinet": ({"region_fraction": 0.0}, "region_fraction"),
    "spectral": ({"epsilon": 2.0}, "epsilon"),
    "nc-unlearning": ({"stamp_fraction": -0.1}, "stamp_fraction"),
    "nc-pruning": ({"max_fraction": 3}, "max_fraction"),
}
NC_MITIGATIONS = [n for n in MITIGATIONS.names() if n.startswith("nc-")]
ALL = ([("model", n) for n in MODEL_DETECTORS.names()] + [("input", n) for n in INPUT_DETECTORS.names()]
       + [("data", n) for n in DATA_FILTERS.names()] + [("mitigation", n) for n in NC_MITIGATIONS])
REGISTRY = {"model": MODEL_DETECTORS, "input": INPUT_DETECTORS, "data": DATA_FILTERS, "mitigation": MITIGATIONS}


@pytest.fixture(scope="module")
def tiny():
    """A small conv net with BatchNorm and dropout (so that train/eval mode matters), briefly trained."""
    ds = tiny_dataset(120, info=TINY_RGB_INFO)
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, seed=0)
    fit(model, ds, TrainConfig(epochs=2, batch_size=16, lr=0.05, progress=False))
    return model, ds


def run(kind: str, name: str, model: nn.Module, ds) -> torch.Tensor:
    plugin = REGISTRY[kind].get(name)(**FAST[name])
    if kind == "model":
        return torch.tensor([plugin.inspect(model, ds).score])
    if kind == "input":
        return plugin.fit(model, ds).score(ds.float_images()[:10])
    if kind == "data":
        return plugin.score(model, ds)
    repaired = plugin.repair(model, ds).model
    return torch.cat([p.detach().flatten() for p in repaired.parameters()])


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_every_plugin_has_test_parameters():
    assert {n for _k, n in ALL} <= set(FAST) and set(FAST) == set(BAD)
    assert {"neural-cleanse"} <= set(MODEL_DETECTORS.names())
    assert {"strip", "sentinet"} <= set(INPUT_DETECTORS.names())
    assert {"spectral"} <= set(DATA_FILTERS.names()) and {"nc-unlearning", "nc-pruning"} <= set(NC_MITIGATIONS)


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
    params, word = BAD[name]
    with pytest.raises(ConfigError, match=word):
        REGISTRY[kind].get(name)(**{**FAST[name], **params})


class Exploding(nn.Module):
    """Wraps a model and fails on the n-th forward call (the count is shared by deep copies)."""

    calls = [0]

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after = inner, after

    def forward(self, x):
        Exploding.calls[0] += 1
        if Exploding.calls[0] > self.after:
            raise ValueError("injected failure")
        return self.inner(x)


@pytest.mark.parametrize("kind, name", ALL)
def test_failure_half_way_leaves_model_clean(kind, name, tiny):
    model, ds = tiny
    wrapped = Exploding(model, after=1 if kind == "data" else 3)  # fail inside the hooked / optimising part
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
