"""The command line: --help everywhere, one-line errors with exit codes, JSON output."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import run_cli as run

COMMANDS = ["train", "attack", "evaluate", "info", "wrap", "demo", "list"]




@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys, monkeypatch):
    code, out, _ = run([command, "--help"], capsys, monkeypatch)
    assert code == 0 and "Usage" in out


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_argument_has_help_and_help_shows_it(capsys, monkeypatch):
    """Typer < 0.21 (flwr 1.42 pins it) loses every argument's help text with click >= 8.5 (pyproject pins
    click below it); and a help text must survive Typer's Rich markup ("[matrix]" is a TOML table here)."""
    import typer

    from backdoor_arena.cli import build_app

    root = typer.main.get_command(build_app())
    missing = [f"{' '.join(path)} {p.name}" for path, c in _commands(root) for p in c.params
               if isinstance(p, typer.core.TyperArgument) and not p.help]
    assert not missing, f"arguments without help: {missing}"
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(["fl", "matrix", "--help"], capsys, monkeypatch)
    assert code == 0 and "Matrix file: a scenario with a [matrix] table" in out
    assert "aggregator of SCENARIO's [matrix] table" in out


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "backdoor_arena", "list"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "badnet-mnist" in r.stdout and "gtsrb" in r.stdout and "badnets" in r.stdout


@pytest.mark.parametrize("args, code, message", [
    (["evaluate", "missing.safetensors"], 4, "does not exist"),
    (["info", "missing.safetensors"], 4, "does not exist"),
    (["train", "--dataset", "mnst", "--model", "badnet-mnist", "--out", "x.safetensors"], 2, "Did you mean 'mnist'"),
    (["train", "--dataset", "mnist", "--model", "lenet", "--out", "x.safetensors"], 2, "unknown model architecture"),
    (["train", "--dataset", "mnist", "--model", "badnet-mnist", "--out", "x.pt"], 2, ".safetensors"),
    (["train", "--dataset", "mnist", "--model", "badnet-mnist", "--epochs", "0", "--out", "x.safetensors"], 2,
     "epochs must be"),
    (["attack", "badnets", "--dataset", "mnist", "--model", "badnet-mnist", "--poison-rate", "1.5", "--out",
      "x.safetensors"], 2, "poison_rate"),
    (["attack", "trojan", "--dataset", "mnist", "--model", "badnet-mnist", "--out", "x.safetensors"], 2,
     "No such command 'trojan'"),
    (["attack", "badnets", "--dataset", "mnist", "--model", "badnet-mnist", "--position", "1,x", "--out",
      "x.safetensors"], 2, "ROW,COL"),
    (["attack", "badnets", "--dataset", "mnist", "--model", "badnet-mnist", "--trigger", "image:nope.png", "--out",
      "x.safetensors"], 2, "does not exist"),
    (["train", "--dataset", "gtsrb", "--model", "badnet-mnist", "--epochs", "1", "--data-root", "{empty}",
      "--out", "x.safetensors"], 3, "missing"),
])
def test_errors_are_one_line_with_exit_codes(args, code, message, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("urllib.request.urlopen", _offline)
    args = [a.replace("{empty}", str(tmp_path / "empty")) for a in args]
    got, out, err = run(args, capsys, monkeypatch)
    assert got == code, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list(tmp_path.glob("x.*"))  # nothing half-written


def _offline(*args, **kwargs):
    raise OSError("network is unreachable (test)")


def test_pickle_gets_conversion_advice(capsys, monkeypatch, tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "m.pt")
    code, _, err = run(["evaluate", str(tmp_path / "m.pt")], capsys, monkeypatch)
    assert code == 4 and "pickle" in err and "backdoor-arena wrap" in err


def test_evaluate_json_and_info(capsys, monkeypatch, tiny_mnist_model):
    model, spec = tiny_mnist_model
    code, out, err = run(["evaluate", str(model), "--attack-spec", str(spec), "--json"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= r[key] <= 1.0
    code, out, _ = run(["evaluate", str(model), "--json"], capsys, monkeypatch)
    assert "attack_success_rate" not in json.loads(out)
    code, out, _ = run(["info", str(model)], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["architecture"] == "badnet-mnist"


def test_wrap_converts_bare_weights(capsys, monkeypatch, tmp_path, tiny_mnist_model):
    from safetensors.torch import save_file

    from backdoor_arena.modelfile import load_model

    model, _ = tiny_mnist_model
    weights = {k: v.contiguous() for k, v in load_model(model).model.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    out = tmp_path / "wrapped.safetensors"
    code, _, err = run(["wrap", str(tmp_path / "w.safetensors"), "--model", "badnet-mnist", "--dataset", "mnist",
                        "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    assert torch.equal(load_model(out).model.head[1].weight, weights["head.1.weight"])
    before = out.read_bytes()
    code, _, err = run(["wrap", str(tmp_path / "w.safetensors"), "--model", "badnet-mnist", "--dataset", "mnist",
                        "--out", str(out)], capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == before  # never replaced silently
    code, _, err = run(["wrap", str(tmp_path / "w.safetensors"), "--model", "emnist-cnn", "--dataset", "mnist",
                        "--out", str(out), "--overwrite"], capsys, monkeypatch)
    assert code == 4 and "missing tensors" in err and out.read_bytes() == before
