"""A new plugin is one file and one registration: a toy detector, attack and aggregator (tests/toy_plugins/)
are reachable from the CLI (listed by --help, and a run works) and enrolled in the conformance suite with no
table anywhere."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def toys():
    module = importlib.import_module("tests.toy_plugins")
    yield module
    module.unregister_all()
    for name in [m for m in sys.modules if m.startswith("tests.toy_plugins")]:
        del sys.modules[name]


def test_toy_detector_from_the_cli(toys, tiny_mnist_model, capsys, monkeypatch):
    model, _spec = tiny_mnist_model
    code, out, err = run_cli(["detect", "--help"], capsys, monkeypatch)
    assert code == 0 and "toy-logit-gap" in out
    code, out, err = run_cli(["detect", "toy-logit-gap", "--help"], capsys, monkeypatch)
    assert code == 0 and "--n-samples" in out and "Clean images used." in out  # generated from the plugin
    code, out, err = run_cli(["detect", "toy-logit-gap", str(model), "--n-samples", "64", "--json", "-q"],
                             capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    assert r["detector"] == "toy-logit-gap" and r["kind"] == "model" and r["params"] == {"n_samples": 64}
    assert len(r["mean_logits"]) == 10 and isinstance(r["score"], float)


def test_toy_attack_from_the_cli(toys, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["attack", "--help"], capsys, monkeypatch)
    assert code == 0 and "toy-corner" in out
    bad = tmp_path / "toy.safetensors"
    code, out, err = run_cli(["attack", "toy-corner", "--dataset", "mnist", "--model", "badnet-mnist", "--target", "3",
                              "--epochs", "1", "--out", str(bad), "--json", "-q"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    spec = json.loads(Path(r["attack_spec"]).read_text())
    assert spec["attack"] == "toy-corner" and spec["trigger"]["kind"] == "square"
    assert r["attack_success_rate"] > 0.9  # the toy trigger is learned
    from backdoor_arena.modelfile import read_manifest

    holdout = read_manifest(bad).training["defender_holdout"]  # kept out of poisoning and training by default
    assert holdout == {"fraction": 0.05, "seed": 0, "split": "train", "n": 3000}
    # the evaluator rebuilds the toy attack from its spec through the registry
    code, out, err = run_cli(["evaluate", str(bad), "--attack-spec", r["attack_spec"], "--json"], capsys, monkeypatch)
    assert code == 0, err
    assert json.loads(out)["attack_success_rate"] == pytest.approx(r["attack_success_rate"])


def test_toy_aggregator_from_the_cli(toys, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["list"], capsys, monkeypatch)
    assert code == 0 and "toy-median" in out.split("aggregators:")[1].splitlines()[0]
    overrides = ['aggregator.name="toy-median"', "federation.rounds=2", "federation.clients_per_round=5",
                 'federation.engine="sequential"', "warmup.rounds=0", "warmup.pretrain_samples=2000",
                 "data.test_samples=200"]
    code, out, err = run_cli(["fl", "validate", str(REPO / "configs/fl/quick.toml"), *overrides], capsys, monkeypatch)
    assert code == 0 and "aggregator toy-median" in out, err
    code, out, err = run_cli(["fl", "run", str(REPO / "configs/fl/quick.toml"), *overrides, "--out",
                              str(tmp_path / "fl"), "--json", "-q"], capsys, monkeypatch)
    assert code == 0, err
    records = [json.loads(line) for line in (tmp_path / "fl" / "records.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert records[-1]["config"]["aggregator"]["name"] == "toy-median"


def test_toys_are_enrolled_in_the_conformance_suite():
    """Registered before collection (as a pytest plugin), the toys get the same conformance tests as every
    built-in plugin, with no per-plugin table: their names appear in the collected test ids, and they pass."""
    cmd = [sys.executable, "-m", "pytest", "tests/conformance", "-p", "tests.toy_plugins", "-k", "toy", "-q",
           "-p", "no:cacheprovider"]
    listed = subprocess.run([*cmd, "--collect-only"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    ids = [line for line in listed.stdout.splitlines() if "::" in line]
    for toy, where in (("toy-logit-gap", "test_detectors.py"), ("toy-corner", "test_plugins.py"),
                       ("toy-median", "test_aggregators.py")):
        mine = [i for i in ids if toy in i]
        assert any(where in i for i in mine), f"{toy} is not enrolled in {where}: {mine}"
        assert len(mine) >= 3, mine
    ran = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert f"{len(ids)} passed" in ran.stdout
