"""Pruning, fine-tuning, fine-pruning, DP-SGD and the pruning-aware attack's parts, on tiny data."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from backdoor_arena.attacks import MODEL_ATTACKS, PruningAwareAttack, make_attack
from backdoor_arena.attacks.pruning_aware import restore_dormant
from backdoor_arena.defenses import clean_holdout
from backdoor_arena.defenses.dp import DPSGD, check_dp_params, private_fit
from backdoor_arena.defenses.finetuning import FinePruning, FineTuning
from backdoor_arena.defenses.pruning import Pruning
from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.nn_tools import (
    freeze_channels,
    frozen_channels,
    mean_channel_activations,
    prune_by_activation,
    prune_site,
    zero_channels,
)
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, TINY_RGB_INFO, run_cli, tiny_dataset

_CACHE: dict = {}


def trained(arch="gtsrb-cnn", info=TINY_RGB_INFO, epochs=4):
    """A small trained model (trained once per module; each caller gets its own copy)."""
    key = (arch, info.name, epochs)
    if key not in _CACHE:
        ds = tiny_dataset(96, info=info)
        model, _ = create_model(arch, info, 0)
        fit(model, ds, TrainConfig(epochs=epochs, batch_size=16, lr=0.05, progress=False))
        _CACHE[key] = (model, ds)
    model, ds = _CACHE[key]
    return copy.deepcopy(model), ds


def channel_output(model, site, x):
    layer = site.bn if site.bn is not None else site.conv
    out = []
    h = layer.register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        h.remove()
    return out[0]


def test_pruned_channel_outputs_exactly_zero_after_batchnorm():
    model, ds = trained()
    site = prune_site(model)
    assert site.bn is not None and site.channels == 128
    with torch.no_grad():  # running statistics that would give a BN channel a non-zero output
        site.bn.running_mean.uniform_(-1, 1)
    zero_channels(site, [3, 5])
    out = channel_output(model, site, torch.rand(4, 3, 16, 16))
    assert torch.equal(out[:, [3, 5]], torch.zeros_like(out[:, [3, 5]]))
    assert out[:, 4].abs().sum() > 0


def test_activations_are_means_of_the_relu_output():
    model, ds = trained("emnist-cnn", TINY_INFO, epochs=2)
    site = prune_site(model)
    assert site.bn is None
    x = ds.float_images()[:10]
    expected = torch.relu(channel_output(model, site, x)).mean(dim=(0, 2, 3))
    got = mean_channel_activations(model, site, ds.images[:10], batch_size=3)
    assert torch.allclose(got, expected, atol=1e-5)


def test_pruning_stops_at_the_accuracy_budget_and_keeps_the_whole_curve():
    model, ds = trained()
    r = prune_by_activation(model, ds, max_accuracy_drop=0.1, step=8)
    drops = [r.baseline_accuracy - row["holdout_accuracy"] for row in r.curve]
    assert [row["pruned"] for row in r.curve] == list(range(0, 129, 8))  # full curve, to 100%
    k = len(r.pruned)
    allowed = [row["pruned"] for row, d in zip(r.curve, drops, strict=True) if d <= 0.1]
    first_bad = next(row["pruned"] for row, d in zip(r.curve, drops, strict=True) if d > 0.1)
    assert k == max(p for p in allowed if p < first_bad)
    assert r.pruned == r.order[:k]
    out = channel_output(r.model, prune_site(r.model), ds.float_images()[:5])
    assert out[:, r.pruned].abs().sum() == 0
    # the order is by increasing mean activation
    acts = mean_channel_activations(model, prune_site(model), ds.images)
    assert torch.all(acts[r.order][1:] >= acts[r.order][:-1])


def test_frozen_channels_stay_zero_while_training():
    model, ds = trained()
    site = prune_site(model)
    zero_channels(site, [0, 1, 2])
    handles = freeze_channels(site, [0, 1, 2])
    try:
        fit(model, ds, TrainConfig(epochs=1, batch_size=16, weight_decay=1e-3, progress=False))
    finally:
        for h in handles:
            h.remove()
    assert all(p[[0, 1, 2]].abs().sum() == 0 for p in site.parameters())
    assert all(p[3:].abs().sum() > 0 for p in site.parameters())


def test_frozen_channels_removes_its_hooks_also_when_training_fails():
    model, ds = trained()
    site = prune_site(model)
    zero_channels(site, [0, 1])
    with pytest.raises(RuntimeError, match="evaluator failed"), frozen_channels(site, [0, 1]):
        assert all(p._backward_hooks for p in site.parameters())
        fit(model, ds, TrainConfig(epochs=1, batch_size=16, progress=False),
            evaluate=lambda _m: (_ for _ in ()).throw(RuntimeError("evaluator failed")))
    assert not any(p._backward_hooks for p in site.parameters())
    assert all(p[[0, 1]].abs().sum() == 0 for p in site.parameters())  # held at zero until the failure


def test_fine_pruning_holds_pruned_channels_and_records_both_stages():
    model, ds = trained()
    monitor_calls = []
    r = FinePruning(max_accuracy_drop=0.05, epochs=2, step=32).repair(
        model, ds, monitor=lambda m: monitor_calls.append(1) or {"clean_accuracy": 0.5})
    pruned = r.info["pruned_channels"]
    assert pruned and all(p[pruned].abs().sum() == 0 for p in prune_site(r.model).parameters())
    stages = [row["stage"] for row in r.curve]
    assert stages.count("fine-tune") == 3 and stages[0] == "prune"
    assert len(monitor_calls) == len(r.curve)


def test_restored_channels_are_dormant_on_clean_data():
    model, ds = trained("emnist-cnn", TINY_INFO, epochs=2)
    clean_model, _ = trained("emnist-cnn", TINY_INFO, epochs=3)
    site = prune_site(model)
    zero_channels(site, [1, 4, 9])
    restore_dormant(model, clean_model, [1, 4, 9], ds.images, margin=0.1)
    assert torch.equal(site.conv.weight[[1, 4, 9]], prune_site(clean_model).conv.weight[[1, 4, 9]])
    acts = mean_channel_activations(model, site, ds.images)
    assert torch.all(acts[[1, 4, 9]] == 0)
    pre = channel_output(model, site, ds.float_images())
    assert pre[:, [1, 4, 9]].max() <= -0.1 + 1e-4  # the margin below zero


def _badnets(**kw):
    return make_attack("badnets", num_classes=3, channels=3, image_size=16, **{"target": 1, **kw})


@pytest.mark.parametrize("make, message", [
    (lambda: Pruning(max_accuracy_drop=1.5), "max_accuracy_drop"),
    (lambda: Pruning(step=0), "step"),
    (lambda: FineTuning(epochs=0), "epochs"),
    (lambda: FineTuning(lr=-1), "lr"),
    (lambda: FinePruning(optimizer="rmsprop"), "optimizer"),
    (lambda: FinePruning(max_accuracy_drop=-0.1), "max_accuracy_drop"),
    (lambda: DPSGD(noise=0), "dp_noise"),
    (lambda: DPSGD(clip=-1.0), "dp_clip"),
    (lambda: DPSGD(delta=2), "dp_delta"),
    (lambda: private_fit(None, None, TrainConfig(), clip=1.0, noise=None, delta=1e-5), "both"),
    (lambda: private_fit(None, None, TrainConfig(), clip=1.0, noise=1.0, delta=0), "dp_delta"),
    (lambda: PruningAwareAttack(_badnets(), prune_accuracy_drop=2), "prune_accuracy_drop"),
    (lambda: PruningAwareAttack(None), "data-poisoning attack"),
])
def test_bad_parameters_raise_config_errors(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5])
def test_clean_fraction_outside_unit_interval(fraction):
    with pytest.raises(ConfigError, match="fraction"):
        clean_holdout(tiny_dataset(20), fraction)


def test_model_without_a_conv_layer_is_refused():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(144, 4))
    with pytest.raises(IncompatibleError, match="no convolutional layer"):
        Pruning().repair(mlp, tiny_dataset(16))


def test_wrong_shape_clean_set_is_one_line_error():
    model, _ = trained()
    with pytest.raises(IncompatibleError, match="does not accept"):
        Pruning().repair(model, tiny_dataset(16))  # 1x12x12 images for a 3x16x16 model
    with pytest.raises(ConfigError, match="empty"):
        FineTuning().repair(model, tiny_dataset(16, info=TINY_RGB_INFO).subset(torch.arange(0)))


def test_dp_sgd_records_epsilon_is_deterministic_and_leaves_a_plain_model():
    ds = tiny_dataset(128, info=TINY_INFO)
    a = DPSGD("emnist-cnn", clip=1.0, noise=1.0, epochs=1, batch_size=32, seed=1).fit(ds)
    b = DPSGD("emnist-cnn", clip=1.0, noise=1.0, epochs=1, batch_size=32, seed=1).fit(ds)
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                   strict=True))
    assert 0 < a.epsilon < math.inf and a.privacy["steps"] == 4 and a.history[-1]["epsilon"] == a.epsilon
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    for _ in range(4):
        acc.step(noise_multiplier=1.0, sample_rate=32 / 128)
    assert a.epsilon == pytest.approx(acc.get_epsilon(1e-5))
    for m in a.model.modules():
        assert not m._forward_hooks and not m._backward_hooks and not m._forward_pre_hooks
    assert not any(hasattr(p, attr) for p in a.model.parameters() for attr in ("grad_sample", "summed_grad"))
    more_noise = DPSGD("emnist-cnn", clip=1.0, noise=4.0, epochs=1, batch_size=32, seed=1).fit(ds)
    assert more_noise.epsilon < a.epsilon


def test_private_fit_reproduces_the_run_recorded_before_dp_left_the_training_loop():
    """Recorded with DP-SGD inside train.fit (TrainConfig.dp_*), before the refactor that moved it to
    defenses/dp.py on the loop's adapter: same seed, same numbers (bit-identical on the recording machine;
    the tolerance only absorbs thread-count rounding, ~1e-8 relative)."""
    ds = tiny_dataset(128, info=TINY_INFO)
    model, _ = create_model("emnist-cnn", TINY_INFO, 1)
    seen = []
    history = private_fit(model, ds, TrainConfig(epochs=2, batch_size=32, lr=0.05, seed=1, progress=False),
                          clip=1.0, noise=1.0, delta=1e-5, evaluate=lambda m: seen.append(m) or {"x": 1.0})
    flat = torch.cat([v.double().flatten() for v in model.state_dict().values()])
    assert float(flat.sum()) == pytest.approx(9.1074984648047, rel=1e-6)
    assert float((flat ** 2).sum()) == pytest.approx(88.22639957556248, rel=1e-6)
    assert [e["train_loss"] for e in history.epochs] == pytest.approx([1.358725219964981, 1.439812104217708],
                                                                       rel=1e-6)
    assert [e["train_accuracy"] for e in history.epochs] == [0.328125, 0.3359375]
    assert [e["epsilon"] for e in history.epochs] == pytest.approx([4.870641742929558, 6.253144612851234],
                                                                    rel=1e-12)
    assert [list(e) for e in history.epochs] == [["epoch", "train_loss", "train_accuracy", "epoch_time_s",
                                                   "epsilon", "x"]] * 2  # the record's order, as before
    assert {k: v for k, v in history.privacy.items() if k != "epsilon"} == {
        "mechanism": "dp-sgd", "library": "opacus", "accountant": "rdp", "sampling": "poisson", "clip": 1.0,
        "noise_multiplier": 1.0, "delta": 1e-05, "sample_rate": 0.25, "steps": 8}
    assert history.privacy["epsilon"] == pytest.approx(6.253144612851234, rel=1e-12)
    assert seen == [model, model]  # the evaluator sees the caller's model, not Opacus' wrapper
    assert not model.training and not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_the_training_loop_imports_no_defense():
    import ast
    import importlib
    from pathlib import Path

    source = Path(importlib.import_module("backdoor_arena.train").__file__).read_text()
    tree = ast.parse(source)
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert imported and not [m for m in imported if "defenses" in m or "attacks" in m]
    assert "set_threads" not in source and "set_num_threads" not in source  # no process-wide state
    assert not any(f.startswith("dp_") for f in TrainConfig.__dataclass_fields__)


def test_check_dp_params_lists_every_problem():
    assert check_dp_params(None, None, 1e-5) == []
    problems = check_dp_params(-1.0, 0.0, 2.0)
    assert len(problems) == 3 and "dp_clip" in problems[0] and "dp_noise" in problems[1] and "dp_delta" in problems[2]
    assert "both" in check_dp_params(None, 1.0, 1e-5)[0]


def test_dp_sgd_clips_each_example():
    """With no noise to speak of and lr 1, one step moves the weights by at most clip (averaged)."""
    ds = tiny_dataset(64, info=TINY_INFO)
    model, _ = create_model("emnist-cnn", TINY_INFO, 0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    private_fit(model, ds, TrainConfig(epochs=1, batch_size=64, lr=1.0, momentum=0.0, schedule="constant",
                                       progress=False), clip=0.01, noise=1e-6, delta=1e-5)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # batch = dataset (sample rate 1): 64 examples, each clipped to 0.01, averaged over 64: |step| <= 0.01
    assert 0 < (after - before).norm() <= 0.0101


def test_dp_sgd_refuses_batchnorm_models():
    model, _ = create_model("gtsrb-cnn", TINY_RGB_INFO, 0)
    with pytest.raises(IncompatibleError, match="BatchNorm"):
        private_fit(model, tiny_dataset(16, info=TINY_RGB_INFO), TrainConfig(epochs=1, progress=False),
                    clip=1.0, noise=1.0, delta=1e-5)
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_pruning_aware_attack_is_a_registered_model_attack_with_a_spec_round_trip():
    assert MODEL_ATTACKS.get("pruning-aware") is PruningAwareAttack
    attack = PruningAwareAttack(_badnets(), 0.02, TrainConfig(epochs=2, progress=False), clean_samples=500,
                                margin=0.3)
    spec = attack.to_spec()
    assert spec["model_attack"] == {"name": "pruning-aware", "max_accuracy_drop": 0.02, "clean_samples": 500,
                                    "margin": 0.3, "retrain": TrainConfig(epochs=2).to_dict()}
    again = PruningAwareAttack.from_spec(spec)
    assert again.to_spec() == spec and again.poisoning == attack.poisoning
    with pytest.raises(ConfigError, match="model_attack"):
        PruningAwareAttack.from_spec(_badnets().to_spec())



@pytest.mark.parametrize("args, code, message", [
    (["defend", "pruning", "missing.safetensors", "--out", "r.safetensors"], 4, "does not exist"),
    (["defend", "fine-pruning", "missing.safetensors", "--out", "r.safetensors", "--clean-fraction", "0"], 2,
     "clean-fraction"),
    (["defend", "fine-tuning", "missing.safetensors", "--out", "r.safetensors", "--clean-fraction", "1.5"], 2,
     "clean-fraction"),
    (["defend", "fine-tuning", "missing.safetensors", "--out", "r.safetensors", "--epochs", "0"], 2, "epochs"),
    (["defend", "pruning", "missing.safetensors", "--out", "r.pt"], 2, ".safetensors"),
    (["attack", "badnets", "--dataset", "mnist", "--model", "badnet-mnist", "--dp-clip", "1", "--out",
      "x.safetensors"], 2, "dp_noise"),
    (["train", "--dataset", "mnist", "--model", "badnet-mnist", "--dp-clip", "1", "--dp-noise", "-1", "--out",
      "x.safetensors"], 2, "dp_noise"),
    (["attack", "pruning-aware", "--poisoning", "trojan", "--dataset", "mnist", "--model", "badnet-mnist",
      "--out", "x.safetensors"], 2, "unknown attack"),
])
def test_cli_errors_are_one_line(args, code, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    got, out, err = run_cli(args, capsys, monkeypatch)
    assert got == code, err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_defend_commands_have_help(capsys, monkeypatch):
    for sub in ("pruning", "fine-tuning", "fine-pruning", "compare"):
        code, out, _ = run_cli(["defend", sub, "--help"], capsys, monkeypatch)
        assert code == 0 and "Usage" in out
