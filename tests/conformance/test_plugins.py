"""Every registered plugin, enrolled automatically: a new registration is tested without a new test.

Each plugin class declares `example_params` (small, fast constructor parameters), `bad_params` (known-bad
parameter sets, each with a substring its ConfigError must contain) and `param_help` (one sentence per
public constructor parameter); the suites read those declarations, never a table of their own. Here: the
declarations of every kind, and the contracts of attacks, model-level attacks, triggers, models and datasets
(defenses: test_defenses.py and test_detectors.py).
"""

from __future__ import annotations

import copy
import inspect
import json

import pytest
import torch
from torch import nn

from backdoor_arena import triggers
from backdoor_arena.attacks import ATTACKS, DATASET_PARAMS, MODEL_ATTACKS, attack_from_spec, make_attack
from backdoor_arena.data import DATASETS, dataset_info
from backdoor_arena.defenses import DATA_FILTERS, INPUT_DETECTORS, MITIGATIONS, MODEL_DETECTORS, ROBUST_TRAINERS
from backdoor_arena.errors import ConfigError
from backdoor_arena.modelfile import Manifest, load_model, save_model
from backdoor_arena.models import MODELS, architecture_args
from backdoor_arena.train import TrainConfig, TrainHistory, create_model, fit
from backdoor_arena.triggers import TRIGGERS, make_trigger, trigger_from_dict
from tests.helpers import TINY_RGB_INFO, no_hooks, same_state, state_of, tiny_dataset

# The registries whose plugins declare their parameters, and the constructor each kind's parameters go to
# (per kind, not per plugin): poisoning attacks and triggers are built by `build`, less what the dataset gives.
KINDS = {
    "attack": ATTACKS, "model attack": MODEL_ATTACKS, "trigger": TRIGGERS, "mitigation": MITIGATIONS,
    "model detector": MODEL_DETECTORS, "input detector": INPUT_DETECTORS, "data filter": DATA_FILTERS,
    "robust trainer": ROBUST_TRAINERS,
}
ENROLLED = [(kind, name) for kind, registry in KINDS.items() for name in registry.names()]


def constructor_params(kind: str, cls: type) -> list[str]:
    """The public parameters a user sets (the CLI's options), in signature order."""
    if kind == "attack":
        fn, given = cls.build, DATASET_PARAMS
    elif kind == "trigger":
        fn, given = cls.build, triggers.DATASET_PARAMS
    else:
        fn, given = cls, ()
    params = inspect.signature(fn).parameters.values()
    return [p.name for p in params if p.name not in given and not p.name.startswith("_")
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# --------------------------------------------------------------------------- declarations, every kind
@pytest.mark.parametrize("kind, name", ENROLLED)
def test_plugin_declares_its_parameters(kind, name):
    cls = KINDS[kind].get(name)
    params = constructor_params(kind, cls)
    assert isinstance(cls.example_params, dict) and set(cls.example_params) <= set(params)
    assert isinstance(cls.bad_params, tuple) and cls.bad_params, "declare at least one known-bad parameter set"
    for bad, message in cls.bad_params:
        assert isinstance(bad, dict) and bad and set(bad) <= set(params), bad
        assert isinstance(message, str) and message
    assert isinstance(cls.param_help, dict)
    assert sorted(cls.param_help) == sorted(params), "one help sentence per public constructor parameter"
    assert all(isinstance(h, str) and len(h) > 10 and "\n" not in h for h in cls.param_help.values())


def test_every_kind_is_enrolled():
    assert {k for k, _ in ENROLLED} == set(KINDS)
    assert {"badnets", "blended"} <= set(ATTACKS.names()) and "pruning-aware" in MODEL_ATTACKS.names()


# --------------------------------------------------------------------------- data-poisoning attacks
def _attack(name: str, **params):
    return make_attack(name, num_classes=3, channels=3, image_size=16, **params)


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name):
    cls = ATTACKS.get(name)
    ds = tiny_dataset(60, info=TINY_RGB_INFO)
    images, labels = ds.images.clone(), ds.labels.clone()
    atk = _attack(name, **cls.example_params)
    assert type(atk) is cls and atk.name == name and atk.to_spec()["attack"] == name
    assert cls.threat_model.strip()  # the attack catalogue's threat-model column
    a = atk.poison(ds, torch.Generator().manual_seed(0))
    b = atk.poison(ds, torch.Generator().manual_seed(0))
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)  # input never mutated
    assert torch.equal(a.dataset.images, b.dataset.images) and torch.equal(a.dataset.labels, b.dataset.labels)
    assert torch.equal(a.source_index, b.source_index)  # same seed, same poison set
    assert a.poisoned_mask.shape == a.dataset.labels.shape and a.dataset.images.dtype == ds.images.dtype
    rows = torch.nonzero(a.poisoned_mask).flatten()
    source_labels = ds.labels[a.source_index[rows]]
    # cover samples (not eligible) keep their label; a clean-label attack's rows are target-class, relabelled as such
    relabelled = (source_labels == atk.target) if cls.clean_label else atk.eligible(source_labels)
    assert len(rows) >= round(atk.poison_rate * len(ds)) and int(relabelled.sum()) == round(atk.poison_rate * len(ds))
    assert torch.equal(a.dataset.labels[rows][relabelled], atk.target_labels(source_labels[relabelled]))
    assert torch.equal(a.dataset.labels[rows][~relabelled], source_labels[~relabelled])
    # the trigger, batch-wise = one by one, pure, in range
    x = torch.rand(4, 3, 16, 16)
    before = x.clone()
    out = atk.apply_trigger(x)
    assert torch.equal(x, before) and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert torch.allclose(out, torch.cat([atk.apply_trigger(x[i : i + 1]) for i in range(4)]))
    # the spec, through real JSON, rebuilds the attack exactly, by the registry and by the class
    spec = json.loads(json.dumps(atk.to_spec()))
    assert attack_from_spec(spec) == atk and cls.from_spec(spec) == atk


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_bad_parameters(name):
    cls = ATTACKS.get(name)
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            _attack(name, **{**cls.example_params, **bad})
    with pytest.raises(ConfigError, match="no_such_parameter"):
        _attack(name, **cls.example_params, no_such_parameter=1)


# --------------------------------------------------------------------------- model-level attacks


@pytest.fixture(scope="module")
def clean_model_and_data():
    ds = tiny_dataset(96, info=TINY_RGB_INFO)
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)  # conv + BatchNorm + dropout
    fit(model, ds, TrainConfig(epochs=2, batch_size=16, progress=False))
    return model, ds


def _recording(calls: list[nn.Module]):
    """A monitor that records the models it is shown."""
    return lambda m: calls.append(m) or {"clean_accuracy": 0.5}


def _poisoning():
    return _attack("badnets", target=1, poison_rate=0.2, seed=3)


@pytest.mark.parametrize("name", MODEL_ATTACKS.names())
def test_model_attack_spec_round_trip_and_bad_parameters(name):
    cls = MODEL_ATTACKS.get(name)
    attack = cls(_poisoning(), **cls.example_params)
    spec = json.loads(json.dumps(attack.to_spec()))
    assert spec["model_attack"]["name"] == name == cls.name
    assert cls.threat_model.strip()  # the attack catalogue's threat-model column
    assert attack_from_spec(spec) == _poisoning()  # the evaluator's view: the poisoning inside
    assert cls.from_spec(spec).to_spec() == attack.to_spec()
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            cls(_poisoning(), **{**cls.example_params, **bad})


@pytest.mark.parametrize("name", MODEL_ATTACKS.names())
def test_model_attack_contract(name, clean_model_and_data):
    cls = MODEL_ATTACKS.get(name)
    clean, ds = clean_model_and_data
    clean = copy.deepcopy(clean).train()  # the caller's mode must survive
    before, images, labels = state_of(clean), ds.images.clone(), ds.labels.clone()
    config = TrainConfig(epochs=1, batch_size=16, progress=False)
    results = []
    for _ in range(2):
        model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)
        train_fn = cls(_poisoning(), **cls.example_params).trainer("gtsrb-cnn", ds, config, clean_model=clean)
        calls: list[nn.Module] = []
        history, extra = train_fn(model, _recording(calls))
        assert isinstance(history, TrainHistory) and len(history.epochs) == len(calls) >= 1
        assert extra["model_attack"]["name"] == name
        json.dumps(extra)  # goes into the attack spec
        assert no_hooks(model) and not model.training
        results.append(state_of(model))
    assert same_state(results[0], results[1])  # same seed, same model
    assert same_state(state_of(clean), before) and clean.training and no_hooks(clean)
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)


@pytest.mark.parametrize("name", MODEL_ATTACKS.names())
def test_model_attack_cleans_up_after_an_exception(name, clean_model_and_data):
    cls = MODEL_ATTACKS.get(name)
    clean, ds = clean_model_and_data
    for training in (True, False):
        clean = copy.deepcopy(clean).train(training)
        before = state_of(clean)
        model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)
        fresh = state_of(model)
        train_fn = cls(_poisoning(), **cls.example_params).trainer(
            "gtsrb-cnn", ds, TrainConfig(epochs=1, batch_size=16, progress=False), clean_model=clean)

        def failing_monitor(_m):
            raise RuntimeError("evaluator failed")

        with pytest.raises(RuntimeError, match="evaluator failed"):
            train_fn(model, failing_monitor)
        assert no_hooks(model) and same_state(state_of(model), fresh)
        assert clean.training == training and no_hooks(clean) and same_state(state_of(clean), before)


# --------------------------------------------------------------------------- triggers
@pytest.mark.parametrize("kind", TRIGGERS.names())
def test_trigger_contract(kind):
    cls = TRIGGERS.get(kind)
    assert cls.kind == kind
    for channels in (1, 3):
        trig = make_trigger(kind, channels, 16, **cls.example_params)
        assert type(trig) is cls and trig == make_trigger(kind, channels, 16, **cls.example_params)
        x = torch.rand(5, channels, 16, 16)
        before = x.clone()
        out = trig.apply(x)
        assert torch.equal(x, before) and out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
        assert torch.allclose(out, torch.cat([trig.apply(x[i : i + 1]) for i in range(5)]))
        data = json.loads(json.dumps(trig.to_dict()))
        assert data["kind"] == kind
        again = trigger_from_dict(data)
        assert type(again) is cls and torch.equal(again.apply(x), out)
    with pytest.raises(ConfigError, match="no_such_option"):
        make_trigger(kind, 1, 16, no_such_option=1, **cls.example_params)
    for bad, message in cls.bad_params:
        with pytest.raises(ConfigError, match=message):
            make_trigger(kind, 3, 16, **{**cls.example_params, **bad})


# --------------------------------------------------------------------------- models and datasets
def _dataset_for(architecture: str):
    """The first registered dataset whose inputs the architecture accepts (a model file names its dataset)."""
    for name in DATASETS.names():
        info = dataset_info(name)
        model, _ = create_model(architecture, info, seed=0)
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(1, *info.input_shape))
        except RuntimeError:
            continue
        return info
    raise AssertionError(f"no registered dataset fits {architecture}")


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name, tmp_path):
    info = _dataset_for(name)
    a, args = create_model(name, info, seed=1)
    b, _ = create_model(name, info, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    manifest = Manifest(architecture=name, arch_args=args, dataset=info.name, input_shape=list(info.input_shape),
                        num_classes=info.num_classes, class_names=list(info.class_names))
    save_model(tmp_path / "m.safetensors", a, manifest)
    loaded = load_model(tmp_path / "m.safetensors").model
    a.eval()
    x = torch.rand(2, *info.input_shape)
    assert torch.allclose(loaded(x), a(x))


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_registration(name):
    info = dataset_info(name)
    assert len(info.class_names) == info.num_classes
    assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert architecture_args(info)["num_classes"] == info.num_classes
    loader = DATASETS.get(name).load
    assert {"download", "writers"} <= set(inspect.signature(loader).parameters)
