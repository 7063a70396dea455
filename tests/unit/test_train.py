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


class Recorder:
    """A toy TrainAdapter: batches of two rows taken from the end of the epoch's order; records its calls."""

    def __init__(self, fail_in_prepare=False):
        self.calls, self.fail_in_prepare = [], fail_in_prepare

    def prepare(self, model, optimizer, n, config):
        self.calls.append(("prepare", n))
        if self.fail_in_prepare:
            raise RuntimeError("prepare failed")
        return model, optimizer

    def indices(self, order, step, generator):
        self.calls.append(("indices", step))
        return order.flip(0)[2 * step : 2 * step + 2] if step % 2 == 0 else order[:0]  # odd steps: empty

    def epoch_record(self):
        return {"adapter_steps": sum(1 for c in self.calls if c[0] == "indices")}

    def close(self):
        self.calls.append(("close",))


def test_an_adapter_draws_the_batches_and_is_closed_also_on_failure():
    ds = tiny_dataset(16)
    model, _ = create_model("emnist-cnn", TINY_INFO, 0)
    rec = Recorder()
    hist = fit(model, ds, TrainConfig(epochs=2, batch_size=4, progress=False), adapter=rec,
               evaluate=lambda m: {"clean_accuracy": 0.0})
    assert rec.calls[0] == ("prepare", 16) and rec.calls[-1] == ("close",)
    assert [c[1] for c in rec.calls if c[0] == "indices"] == [0, 1, 2, 3] * 2  # ceil(16 / 4) steps per epoch
    assert [e["adapter_steps"] for e in hist.epochs] == [4, 8]
    assert list(hist.epochs[0]) == ["epoch", "train_loss", "train_accuracy", "epoch_time_s", "adapter_steps",
                                    "clean_accuracy"]
    failing = Recorder()
    with pytest.raises(RuntimeError, match="evaluator failed"):
        fit(model, ds, TrainConfig(epochs=1, batch_size=4, progress=False), adapter=failing,
            evaluate=lambda m: (_ for _ in ()).throw(RuntimeError("evaluator failed")))
    assert failing.calls[-1] == ("close",)
    early = Recorder(fail_in_prepare=True)
    with pytest.raises(RuntimeError, match="prepare failed"):
        fit(model, ds, TrainConfig(epochs=1, batch_size=4, progress=False), adapter=early)
    assert early.calls == [("prepare", 16), ("close",)]


def test_fit_leaves_the_process_thread_count_alone(monkeypatch):
    monkeypatch.setenv("BACKDOOR_ARENA_THREADS", "1")  # what the old loop applied on every call
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fit(create_model("emnist-cnn", TINY_INFO, 0)[0], tiny_dataset(8), TrainConfig(epochs=1, progress=False))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
