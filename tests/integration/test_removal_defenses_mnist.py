"""Removal defenses on real MNIST with short training: a BadNets model (pattern, target 7) repaired by
fine-pruning through the CLI, every defense through the API, the pruning-aware attack, DP-SGD training."""

from __future__ import annotations

import json
import math

import pytest
import torch

from backdoor_arena.api import DPSettings, make_monitor, train_model
from backdoor_arena.attacks import PruningAwareAttack, make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.defenses import clean_holdout
from backdoor_arena.defenses.finetuning import FinePruning, FineTuning
from backdoor_arena.defenses.pruning import Pruning
from backdoor_arena.metrics import evaluate
from backdoor_arena.modelfile import load_model, read_manifest
from backdoor_arena.nn_tools import mean_channel_activations, prune_site
from backdoor_arena.train import TrainConfig
from tests.helpers import run_cli

N_TRAIN = 12000


def _attack():
    return make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, trigger="pattern",
                       poison_rate=0.1)


@pytest.fixture(scope="module")
def mnist(data_root):
    train = load_dataset("mnist", "train", data_root)
    test = load_dataset("mnist", "test", data_root)
    return train, test


@pytest.fixture(scope="module")
def backdoored(tmp_path_factory, mnist):
    """BadNets on 12k MNIST training images, 2 epochs: the backdoor is learned (checked here)."""
    train, test = mnist
    atk = _attack()
    poisoned = atk.poison(train.subset(torch.arange(N_TRAIN)), torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("removal") / "bad.safetensors"
    r = train_model("badnet-mnist", poisoned.dataset, test, TrainConfig(epochs=2, progress=False), out, atk, "t")
    assert r.metrics["attack_success_rate"] > 0.95 and r.metrics["clean_accuracy"] > 0.97
    return r.path, r.spec_path, atk



def test_defend_fine_pruning_cli_removes_the_backdoor(backdoored, tmp_path, capsys, monkeypatch):
    path, spec, _ = backdoored
    before_sha = read_manifest(path).tensors_sha256
    out = tmp_path / "repaired.safetensors"
    code, stdout, err = run_cli(["defend", "fine-pruning", str(path), "--out", str(out), "--clean-fraction", "0.05",
                                 "--attack-spec", str(spec), "--epochs", "3", "--json", "--quiet"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(stdout)
    before, after = r["before"], r["after"]
    assert all(0 <= m[k] <= 1 for m in (before, after) for k in ("clean_accuracy", "attack_success_rate"))
    assert before["attack_success_rate"] > 0.95
    # This 2-epoch, 12k-image model is not the issue's model: fine-pruning lowers its ASR (the issue's bar,
    # ASR < 10% at <= 2 points on the full 4-epoch model, is the slow test below and docs/removal-defenses.md)
    assert after["attack_success_rate"] < before["attack_success_rate"] - 0.2
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.02
    assert r["clean_samples"] == 3000 and 0 < r["fraction_pruned"] < 1
    # the repaired model is a normal model file recording the defense; the input file is untouched
    loaded = load_model(out)
    assert loaded.manifest.architecture == "badnet-mnist"
    defense = loaded.manifest.training["defense"]
    assert defense["name"] == "fine-pruning" and defense["clean_fraction"] == 0.05
    assert "attack_success_rate" not in json.dumps(loaded.manifest.training)  # no attack information
    assert read_manifest(path).tensors_sha256 == before_sha and load_model(path).manifest.tensors_sha256 == before_sha
    png, jsonl = out.with_name("repaired.curve.png"), out.with_name("repaired.curve.jsonl")
    assert png.stat().st_size > 1000 and jsonl.is_file()
    # without a spec: accuracy only
    code, stdout, err = run_cli(["defend", "pruning", str(path), "--out", str(tmp_path / "p.safetensors"), "--json",
                                 "--quiet", "-p", "step=32"], capsys, monkeypatch)  # coarse steps: what is reported
    assert code == 0, err
    r = json.loads(stdout)
    assert set(r["before"]) == {"clean_accuracy"} and set(r["after"]) == {"clean_accuracy"}


def test_defend_nc_unlearning_cli_unlearns_the_reversed_trigger(backdoored, tmp_path, capsys, monkeypatch):
    path, spec, _ = backdoored
    out = tmp_path / "unlearned.safetensors"
    code, stdout, err = run_cli(["defend", "nc-unlearning", str(path), "--out", str(out), "--attack-spec", str(spec),
                                 "--detector", '{"steps": 100, "batch_size": 16}', "--json", "--quiet"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(stdout)
    assert r["before"]["attack_success_rate"] > 0.95
    assert r["after"]["attack_success_rate"] < 0.1
    assert r["after"]["clean_accuracy"] >= r["before"]["clean_accuracy"] - 0.02
    defense = load_model(out).manifest.training["defense"]
    assert defense["name"] == "nc-unlearning" and defense["params"]["detector"]["steps"] == 100
    assert out.with_name("unlearned.curve.png").stat().st_size > 1000


def test_each_defense_on_real_mnist_never_mutates_its_input(backdoored, mnist):
    path, _, atk = backdoored
    train, test = mnist
    _, clean = clean_holdout(train, 0.05, 0)
    model = load_model(path).model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    base = evaluate(model, test, atk)
    monitor = make_monitor(test, atk, 1000)

    pruned = Pruning(step=2).repair(model, clean, monitor=monitor)
    drops = [pruned.info["holdout_accuracy_before"] - row["holdout_accuracy"] for row in pruned.curve
             if row["fraction_pruned"] <= pruned.info["fraction_pruned"]]
    assert max(drops) <= 0.04 and pruned.info["fraction_pruned"] > 0.3
    assert pruned.curve[-1]["fraction_pruned"] == 1.0 and "attack_success_rate" in pruned.curve[0]

    tuned = FineTuning(epochs=2).repair(model, clean, monitor=monitor)
    assert evaluate(tuned.model, test)["clean_accuracy"] >= base["clean_accuracy"] - 0.01
    assert [row["epoch"] for row in tuned.curve] == [0, 1, 2]

    fp = FinePruning(epochs=2, step=2).repair(model, clean)
    assert evaluate(fp.model, test, atk)["attack_success_rate"] < base["attack_success_rate"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def pruning_aware(mnist):
    """The pruning-aware attack of Liu et al. on 12k MNIST images (reduced scale)."""
    train, _ = mnist
    subset = train.subset(torch.arange(N_TRAIN))
    attack = PruningAwareAttack(_attack(), prune_accuracy_drop=0.01, clean_samples=3000,
                                retrain=TrainConfig(epochs=2, progress=False))
    return attack.train("badnet-mnist", subset, TrainConfig(epochs=1, progress=False))


def test_pruning_aware_attack_hides_the_backdoor_from_pruning(mnist, pruning_aware):
    """The restored channels are dormant on the defender's clean set, so pruning takes them first."""
    train, test = mnist
    model, record = pruning_aware
    restored = record["pruned_channels"]
    assert record["restored_max_clean_activation"] == 0 and 0 < len(restored) < record["channels"]
    assert evaluate(model, test, _attack())["attack_success_rate"] > 0.8
    _, clean = clean_holdout(train, 0.05, 0)
    site = prune_site(model)
    acts = mean_channel_activations(model, site, clean.images)
    # dormant on the attacker's clean images exactly; on the defender's (other) images, all but
    others = [c for c in range(site.channels) if c not in restored]
    assert acts[restored].max() < 1e-4 < acts[others].min()
    assert site.conv.weight[restored].abs().sum() > 0  # restored with weights, not left at zero
    order = Pruning(full_curve=False).repair(model, clean).info["pruned_channels"]
    assert set(order[: len(restored)]) == set(restored)


def test_headline_nc_unlearning_removes_the_pruning_aware_backdoor_at_reduced_scale(mnist, pruning_aware):
    """docs/removal-defenses.md's headline (full scale: `make test-slow`): where fine-pruning leaves the pruning-aware
    backdoor in place, Neural Cleanse unlearning removes it at a small cost in clean accuracy."""
    from backdoor_arena.defenses.neural_cleanse import NeuralCleanseUnlearning

    train, test = mnist
    model, _ = pruning_aware
    atk = _attack()
    before = evaluate(model, test, atk)
    assert before["attack_success_rate"] > 0.8
    _, clean = clean_holdout(train, 0.05, 0)
    repaired = NeuralCleanseUnlearning(epochs=2, detector={"steps": 100, "batch_size": 16}).repair(model, clean).model
    after = evaluate(repaired, test, atk)
    assert after["attack_success_rate"] < 0.1
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.03


def test_dp_sgd_training_records_epsilon_in_the_manifest(mnist, tmp_path):
    train, test = mnist
    atk = _attack()
    poisoned = atk.poison(train.subset(torch.arange(6000)), torch.Generator().manual_seed(0))
    config = TrainConfig(epochs=1, batch_size=128, lr=0.1, progress=False)
    r = train_model("badnet-mnist", poisoned.dataset, test, config, tmp_path / "dp.safetensors", atk, "dp",
                    dp=DPSettings(clip=1.0, noise=1.0, delta=1e-5))
    privacy = load_model(r.path).manifest.training["privacy"]
    assert privacy["delta"] == 1e-5 and privacy["clip"] == 1.0 and privacy["noise_multiplier"] == 1.0
    assert 0 < privacy["epsilon"] < math.inf and privacy["sampling"] == "poisson"
    assert load_model(r.path).manifest.training["config"]["dp_noise"] == 1.0
    assert r.metrics["clean_accuracy"] > 0.5  # it learns despite the noise


@pytest.mark.slow
def test_fine_pruning_meets_the_issue_bar_on_the_full_badnets_model(mnist):
    """BadNets pattern, target 7, 10%, 4 epochs on all of MNIST; 5% clean data: ASR < 10% at <= 2 points."""
    train, test = mnist
    atk = _attack()
    poisoned = atk.poison(train, torch.Generator().manual_seed(0))
    from backdoor_arena.train import create_model, fit

    model, _ = create_model("badnet-mnist", train.info, 0)
    fit(model, poisoned.dataset, TrainConfig(epochs=4, progress=False))
    _, clean = clean_holdout(train, 0.05, 0)
    before = evaluate(model, test, atk)
    after = evaluate(FinePruning().repair(model, clean).model, test, atk)
    assert before["attack_success_rate"] > 0.99
    assert after["attack_success_rate"] < 0.10
    assert after["clean_accuracy"] >= before["clean_accuracy"] - 0.02


@pytest.mark.slow
def test_pruning_aware_defeats_pruning_at_full_scale(mnist):
    """Full scale (60k images, 4 epochs): pruning leaves the backdoor in place. (Fine-pruning at lr 0.01
    did not remove it either on badnet-mnist: see docs/removal-defenses.md.) Neural Cleanse's unlearning
    does."""
    from backdoor_arena.defenses.neural_cleanse import NeuralCleanseUnlearning

    train, test = mnist
    model, _ = PruningAwareAttack(_attack()).train("badnet-mnist", train, TrainConfig(epochs=4, progress=False))
    _, clean = clean_holdout(train, 0.05, 0)
    pruned = Pruning(full_curve=False).repair(model, clean).model
    before = evaluate(model, test, _attack())
    assert before["attack_success_rate"] > 0.95
    assert evaluate(pruned, test, _attack())["attack_success_rate"] > 0.5
    unlearned = evaluate(NeuralCleanseUnlearning(detector={"steps": 200, "batch_size": 16}).repair(model, clean).model,
                         test, _attack())
    assert unlearned["attack_success_rate"] < 0.02
    assert unlearned["clean_accuracy"] >= before["clean_accuracy"] - 0.02
