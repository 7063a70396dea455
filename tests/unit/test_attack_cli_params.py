"""`backdoor-arena attack <kind>`: each data-poisoning attack's own parameters and every trigger's own
parameters are options generated from the registries (constructor keywords + `param_help`); what the user types
reaches the attack spec exactly, bad values are the classes' one-line errors, and a catalogue setting
(`attack wanet --strength 4 --cross-ratio 0`) runs from the command line and learns its backdoor."""

from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import struct

import numpy as np
import pytest
import torch
import typer

from backdoor_arena import registries
from backdoor_arena.attacks import load_attack_spec, make_attack
from backdoor_arena.cli import build_app
from backdoor_arena.commands.attack_options import COVERED_TRIGGER_PARAMS
from backdoor_arena.data import load_dataset, mnist
from tests.helpers import run_cli


def _attack_flags() -> dict[str, set[str]]:
    group = typer.main.get_command(build_app()).commands["attack"]
    return {name: {o for p in cmd.params for o in p.opts} for name, cmd in group.commands.items()}


def _own_keywords(cls) -> set[str]:
    base = [c for c in cls.__mro__ if "build" in vars(c)][-1]
    return set(inspect.signature(cls.build).parameters) - set(inspect.signature(base.build).parameters)


def test_every_attack_and_trigger_parameter_is_an_option():
    flags = _attack_flags()
    trigger_keywords = set()
    for kind in registries.TRIGGERS.names():
        trigger_keywords |= set(inspect.signature(registries.TRIGGERS.get(kind).build).parameters)
    trigger_keywords -= {*COVERED_TRIGGER_PARAMS}
    assert {"strength", "grid_size", "delta", "frequency", "epsilon", "seed"} <= trigger_keywords
    for name in registries.ATTACKS.names():
        own = _own_keywords(registries.ATTACKS.get(name))
        for keyword in own:
            assert "--" + keyword.replace("_", "-") in flags[name], (name, keyword)
        for keyword in trigger_keywords:  # a name the command already uses gets the trigger- prefix
            plain, prefixed = "--" + keyword.replace("_", "-"), "--trigger-" + keyword.replace("_", "-")
            assert (prefixed if keyword in own or keyword == "seed" else plain) in flags[name], (name, keyword)
    assert {"--cross-ratio", "--strength", "--grid-size", "--trigger-seed"} <= flags["wanet"]
    assert {"--epsilon", "--trigger-epsilon", "--steps", "--surrogate-epochs", "--reference"} <= flags["label-consistent"]
    assert {"--train-delta", "--delta", "--frequency"} <= flags["sig"]
    assert {"--num-neurons", "--steps", "--reference"} <= flags["trojannn"]
    assert {"--strength", "--trigger-seed"} <= flags["nc-evasive"]  # model-level attacks take trigger options too
    assert {"--margin", "--attack-margin"} <= flags["pruning-aware"]  # the trigger's margin and the attack's


def test_no_attack_command_has_a_flag_twice():
    group = typer.main.get_command(build_app()).commands["attack"]
    for name, cmd in group.commands.items():
        opts = [o for p in cmd.params for o in p.opts]
        assert len(opts) == len(set(opts)), name


# (command options, the same attack through make_attack): the spec the command writes must be that one's
SETTINGS = [
    (["wanet", "--strength", "4", "--cross-ratio", "0", "--grid-size", "3", "--trigger-seed", "2"],
     ("wanet", {"cross_ratio": 0.0, "trigger_options": {"strength": 4.0, "grid_size": 3, "seed": 2}})),
    (["sig", "--train-delta", "0.25", "--delta", "1.0", "--frequency", "3", "--injection", "substitute"],
     ("sig", {"train_delta": 0.25, "injection": "substitute", "trigger_options": {"delta": 1.0, "frequency": 3.0}})),
    (["label-consistent", "--epsilon", "0.3", "--steps", "2", "--surrogate-epochs", "1", "--trigger-size", "5"],
     ("label-consistent", {"epsilon": 0.3, "steps": 2, "surrogate_epochs": 1, "trigger_options": {"size": 5}})),
    (["invisible", "--epsilon", "0.1", "--trigger-seed", "3"],
     ("invisible", {"trigger_options": {"epsilon": 0.1, "seed": 3}})),
    (["blended", "--trigger-seed", "4", "--alpha", "0.3"], ("blended", {"trigger_options": {"alpha": 0.3, "seed": 4}})),
]


@pytest.mark.parametrize("options, same", SETTINGS, ids=[s[0][0] for s in SETTINGS])
def test_the_options_reach_the_attack_spec(options, same, tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.safetensors"
    code, _out, err = run_cli(["attack", *options, "--dataset", "tiny28", "--model", "badnet-mnist", "--epochs", "1",
                               "--quiet", "--defender-holdout", "0", "--out", str(out)], capsys, monkeypatch)
    assert code == 0, err
    name, params = same
    # the command's --poison-rate defaults to 0.1 for every attack (the clean-label classes' own default: 0.05)
    expected = make_attack(name, num_classes=3, channels=3, image_size=28, poison_rate=0.1, **params).to_spec()
    written = load_attack_spec(tmp_path / "m.attack.json").to_spec()
    assert written == expected
    assert written != make_attack(name, num_classes=3, channels=3, image_size=28, poison_rate=0.1).to_spec()


def test_trojannn_options_pick_the_neurons_and_steps(tmp_path, capsys, monkeypatch):
    out = tmp_path / "t.safetensors"
    code, _out, err = run_cli(["attack", "trojannn", "--num-neurons", "3", "--steps", "2", "--dataset", "tiny28",
                               "--model", "badnet-mnist", "--epochs", "1", "--quiet", "--out", str(out)],
                              capsys, monkeypatch)
    assert code == 0, err
    spec = json.loads((tmp_path / "t.attack.json").read_text())
    assert len(spec["neurons"]) == 3 and spec["steps"] == 2


@pytest.mark.parametrize("options, message", [
    (["wanet", "--strength", "-1"], "strength"), (["wanet", "--cross-ratio", "-1"], "cross_ratio"),
    (["wanet", "--grid-size", "1"], "grid_size"), (["sig", "--train-delta", "2"], "train_delta"),
    (["label-consistent", "--epsilon", "0"], "epsilon"), (["trojannn", "--num-neurons", "0"], "num_neurons"),
    (["badnets", "--strength", "4"], "does not take ['strength']"), (["invisible", "--epsilon", "2"], "epsilon"),
])
def test_a_bad_value_is_the_class_one_line_error(options, message, tmp_path, capsys, monkeypatch):
    code, _out, err = run_cli(["attack", *options, "--dataset", "tiny28", "--model", "badnet-mnist", "--out",
                               str(tmp_path / "x.safetensors")], capsys, monkeypatch)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def _idx_gz(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def test_the_catalogue_wanet_setting_runs_from_the_command_line(tmp_path, data_root, capsys, monkeypatch):
    """`attack wanet --strength 4 --cross-ratio 0` (docs/attacks.md) on a 3,000-image MNIST subset (a data root
    holding seeded subsets of the real files) learns its backdoor."""
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    real = {split: load_dataset("mnist", split, data_root) for split in ("train", "test")}
    for prefix, split, n in (("train", "train", 3000), ("t10k", "test", 500)):
        full = real[split]
        pick = torch.randperm(len(full), generator=g)[:n].sort().values
        for kind, array in (("images-idx3-ubyte.gz", full.images[pick, 0].numpy()),
                            ("labels-idx1-ubyte.gz", full.labels[pick].numpy())):
            data = _idx_gz(array)
            (root / "mnist" / f"{prefix}-{kind}").write_bytes(data)
            monkeypatch.setitem(mnist.MD5["mnist"], f"{prefix}-{kind}", hashlib.md5(data).hexdigest())
    common = ["--dataset", "mnist", "--model", "badnet-mnist", "--epochs", "2", "--data-root", str(root), "--quiet",
              "--json"]
    code, out, err = run_cli(["attack", "wanet", "--strength", "4", "--cross-ratio", "0", *common, "--out",
                              str(tmp_path / "w.safetensors")], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    # a clean model sends 2% of these warped digits to the target (docs/attacks.md); 2 epochs on 3,000 images
    assert r["attack_success_rate"] > 0.6 and r["clean_accuracy"] > 0.85, r
    spec = json.loads((tmp_path / "w.attack.json").read_text())
    assert spec["cross_ratio"] == 0 and spec["trigger"]["strength"] == 4
