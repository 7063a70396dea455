import pytest
import torch

from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.metrics import evaluate
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, TINY_RGB_INFO, tiny_dataset


def train_once(seed, optimizer="sgd"):
    ds = tiny_dataset(96)
    model, _ = create_model("emnist-cnn", TINY_INFO, seed)  # has dropout: exercises the seeded global RNG
    hist = fit(model, ds, TrainConfig(epochs=3, batch_size=16, lr=0.05 if optimizer == "sgd" else 0.003,
                                      optimizer=optimizer, seed=seed, progress=False),
               evaluate=lambda m: {"clean_accuracy": evaluate(m, ds)["clean_accuracy"]})
    return model, hist


def test_same_seed_same_weights_and_it_learns():
    a, hist = train_once(3)
    b, _ = train_once(3)
    c, _ = train_once(4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))
    assert len(hist.epochs) == 3 and hist.epochs[-1]["clean_accuracy"] == 1.0
    assert not a.training


def test_adam_learns_too():
    _, hist = train_once(0, "adam")
    assert hist.epochs[-1]["clean_accuracy"] >= 0.9


def test_training_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_once(0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("kw, message", [
    ({"epochs": 0}, "epochs"), ({"batch_size": -1}, "batch_size"), ({"optimizer": "rmsprop"}, "optimizer"),
    ({"lr": 0}, "lr"), ({"schedule": "step"}, "schedule"), ({"momentum": 1.0}, "momentum"),
])
def test_bad_config(kw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kw)


def test_model_dataset_mismatch_is_a_clear_error():
    model, _ = create_model("badnet-mnist", TINY_RGB_INFO, 0)  # built for 16x16 RGB
    with pytest.raises(IncompatibleError, match="does not accept"):
        fit(model, tiny_dataset(8), TrainConfig(epochs=1, progress=False))
