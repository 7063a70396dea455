"""BadNets on real MNIST, trained as in the demo (4 epochs): the paper's behaviour, the issue's thresholds."""

from __future__ import annotations

import pytest
import torch

from backdoor_arena import api, load_attack_spec, load_dataset, load_model, make_attack
from backdoor_arena.metrics import evaluate

EPOCHS = 4


@pytest.fixture(scope="session")
def mnist_models(tmp_path_factory, data_root):
    out = tmp_path_factory.mktemp("mnist-models")
    common = {"epochs": EPOCHS, "seed": 0, "data_root": data_root, "progress": False}
    clean = api.train("mnist", "badnet-mnist", out / "clean.safetensors", **common)
    a2o = api.attack("badnets", "mnist", "badnet-mnist", out / "a2o.safetensors", target=7, trigger="pattern",
                     poison_rate=0.1, injection="append", **common)
    a2a = api.attack("badnets", "mnist", "badnet-mnist", out / "a2a.safetensors", mode="all-to-all",
                     trigger="pattern", poison_rate=0.1, injection="append", **common)
    return {"clean": clean, "a2o": a2o, "a2a": a2a}


def test_clean_badnet_mnist_reaches_99_percent(mnist_models):
    assert mnist_models["clean"].metrics["clean_accuracy"] >= 0.990


def test_all_to_one_backdoor_is_learned_without_hurting_accuracy(mnist_models):
    m = mnist_models["a2o"].metrics
    assert m["clean_accuracy"] >= 0.990
    assert m["attack_success_rate"] >= 0.995
    assert m["n_triggered"] == 10000 - 1028  # every test input except the 1,028 true 7s


def test_all_to_all_backdoor(mnist_models):
    clean, m = mnist_models["clean"].metrics, mnist_models["a2a"].metrics
    assert m["clean_accuracy"] >= clean["clean_accuracy"] - 0.01
    assert m["attack_success_rate"] >= 0.98


def test_clean_model_ignores_the_trigger(data_root, mnist_models):
    # the spec was made for the a2o model: evaluating another model with it needs force (refused otherwise)
    with pytest.raises(api.IncompatibleError, match="--force"):
        api.evaluate(mnist_models["clean"].path, mnist_models["a2o"].spec_path, data_root=data_root)
    r = api.evaluate(mnist_models["clean"].path, mnist_models["a2o"].spec_path, data_root=data_root, force=True)
    assert r["attack_success_rate"] < 0.02 and r["robust_accuracy"] > 0.97


def test_files_round_trip_and_spec_stays_outside_the_model(data_root, mnist_models):
    a2o = mnist_models["a2o"]
    r = api.evaluate(a2o.path, a2o.spec_path, data_root=data_root)
    assert r["attack_success_rate"] == a2o.metrics["attack_success_rate"]
    manifest = api.info(a2o.path)
    text = str(manifest)
    assert "attack_success_rate" not in text and "poison" not in text and "badnets" not in text
    assert manifest["training"]["seed"] == 0 and manifest["training"]["versions"]["torch"]
    assert manifest["training"]["metrics"]["clean_accuracy"] == a2o.metrics["clean_accuracy"]


def test_source_specific_with_cover_fires_on_the_source_class_only(tmp_path, data_root):
    """3 -> 8 with TaCT-style cover samples: triggered 3s become 8s, other triggered digits keep their label."""
    r = api.attack("badnets", "mnist", "badnet-mnist", tmp_path / "ss.safetensors", mode="source-specific",
                   sources=(3,), target=8, trigger="pattern", poison_rate=0.05, cover_rate=0.05, epochs=3, seed=0,
                   data_root=data_root, progress=False)
    assert r.metrics["n_triggered"] == 1010  # the test split's 3s
    assert r.metrics["attack_success_rate"] >= 0.95
    spec = load_attack_spec(r.spec_path)
    everyone = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=8, trigger="pattern")
    assert everyone.trigger == spec.trigger
    test = load_dataset("mnist", "test", data_root)
    others = test.subset(torch.nonzero(test.labels != 3).flatten())
    assert evaluate(load_model(r.path).model, others, everyone)["attack_success_rate"] < 0.05
