"""Transfer learning on a backdoored model (api.transfer, `backdoor-arena transfer`): the head is retrained
for a new task on frozen features; clean and triggered accuracy of the new task; strengthening."""

from __future__ import annotations

import json

import pytest
import torch

from backdoor_arena import api
from backdoor_arena.api.transfer import backdoor_channels, strengthen, task_labels
from backdoor_arena.attacks import load_attack_spec
from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.modelfile import load_model
from backdoor_arena.nn_tools import prune_site
from tests.helpers import run_cli


def test_task_labels_map_every_class_once():
    labels, names = task_labels("parity", "mnist", torch.arange(10))
    assert names == ("even", "odd") and labels.tolist() == [0, 1] * 5
    labels, names = task_labels("gtsrb-categories", "gtsrb", torch.arange(43))
    assert len(names) == 6 and (labels >= 0).all() and len(set(labels.tolist())) == 6
    with pytest.raises(IncompatibleError, match="relabels gtsrb"):
        task_labels("gtsrb-categories", "mnist", torch.arange(10))
    with pytest.raises(ConfigError, match="unknown transfer task"):
        task_labels("colours", "mnist", torch.arange(10))


def test_strengthening_scales_the_channels_the_trigger_raises(tiny_mnist_model, data_root):
    path, spec = tiny_mnist_model
    model = load_model(path).model.eval()
    atk = load_attack_spec(spec)
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 0.3
    chosen = backdoor_channels(model, x, atk.apply_trigger(x), 3)
    site = prune_site(model)
    acts = []
    handle = site.output_layer.register_forward_hook(lambda _m, _i, o: acts.append(torch.relu(o).mean((0, 2, 3))))
    with torch.no_grad():
        model(x)
        model(atk.apply_trigger(x))
        before = site.conv.weight.clone()
        strengthen(model, chosen, 4.0)
        model(atk.apply_trigger(x))
    handle.remove()
    rise = acts[1] - acts[0]
    assert rise[chosen[0]] == rise.max() and len(chosen) == 3
    assert torch.allclose(site.conv.weight[chosen], 4 * before[chosen])
    assert torch.allclose(acts[2][chosen], 4 * acts[1][chosen], rtol=1e-4)  # ReLU(k z) = k ReLU(z)


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory, data_root):
    """A BadNets MNIST model that has learned its backdoor (4x4 square, target 7, 20% poisoned, 2 epochs on
    3000 images), with its attack spec."""
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.data import load_dataset
    from backdoor_arena.train import TrainConfig

    out = tmp_path_factory.mktemp("transfer") / "bad.safetensors"
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(3000))
    test = load_dataset("mnist", "test", data_root)
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.2,
                      trigger="square", trigger_options={"size": 4})
    poisoned = atk.poison(train, torch.Generator().manual_seed(0))
    r = api.train_model("badnet-mnist", poisoned.dataset, test, TrainConfig(epochs=2, progress=False), out, atk, "t")
    return r.path, r.spec_path


def test_transfer_to_parity_and_the_command(backdoored, capsys, monkeypatch):
    path, spec = backdoored
    r = api.transfer(path, spec, task="parity", epochs=1, train_size=2000, lr=0.01)
    assert r.before["attack_success_rate"] > 0.5 and r.after["n_triggered"] == r.after["n_test"] - 1028  # not 7s
    assert r.after["clean_accuracy"] > 0.8  # the frozen digit features serve the new task
    assert 0 <= r.after["triggered_accuracy"] <= 1 and r.strengthened_channels == []
    s = api.transfer(path, spec, task="parity", epochs=1, train_size=2000, factor=5.0, channels=2)
    assert len(s.strengthened_channels) == 2 and s.after != r.after
    assert 0 <= r.after["triggered_accuracy_all"] <= 1 and r.from_scratch is False
    f = api.transfer(path, spec, task="parity", epochs=1, train_size=2000, from_scratch=True)
    assert f.from_scratch and f.after["clean_accuracy"] > 0.8 and f.after != r.after  # every fc layer re-initialised
    assert load_model(path).manifest.tensors_sha256 == api.info(path)["tensors_sha256"]  # the file is unchanged
    code, out, err = run_cli(["transfer", str(path), "--attack-spec", str(spec), "--task", "parity", "--epochs", "1",
                              "--train-size", "1000", "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["task"] == "parity"
    code, _out, err = run_cli(["transfer", str(path), "--attack-spec", str(spec), "--task", "gtsrb-categories"],
                              capsys, monkeypatch)
    assert code != 0 and "relabels gtsrb" in err
