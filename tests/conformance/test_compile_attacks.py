"""Conformance of compile-time attacks (COMPILE_ATTACKS, src/backdoor_arena/compiled/impnet.py): every registered
one declares its parameters like every plugin, rejects known-bad parameters with a one-line ConfigError naming the
parameter, is reachable from the CLI, and (impnet) grafts a trigger that leaves other outputs bit-identical."""

from __future__ import annotations

import inspect

import pytest
import torch

from backdoor_arena.compiled import COMPILE_ATTACKS
from backdoor_arena.errors import ConfigError

ENROLLED = COMPILE_ATTACKS.names()


def test_enrolled():
    assert {"impnet", "weight-swap"} <= set(ENROLLED)


@pytest.mark.parametrize("name", ENROLLED)
def test_declares_its_parameters(name):
    cls = COMPILE_ATTACKS.get(name)
    params = [p.name for p in inspect.signature(cls).parameters.values()]
    assert isinstance(cls.example_params, dict) and set(cls.example_params) <= set(params)
    assert isinstance(cls.bad_params, tuple) and cls.bad_params
    assert sorted(cls.param_help) == sorted(params)
    assert all(isinstance(h, str) and len(h) > 10 and "\n" not in h for h in cls.param_help.values())
    cls(**cls.example_params)  # constructors store; no file is touched


@pytest.mark.parametrize("name", ENROLLED)
def test_bad_parameters_are_one_line_config_errors(name):
    cls = COMPILE_ATTACKS.get(name)
    for bad, word in cls.bad_params:
        with pytest.raises(ConfigError) as info:
            cls(**{**cls.example_params, **bad})
        assert word in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ENROLLED)
def test_reachable_from_the_cli(name, capsys, monkeypatch):
    from tests.helpers import run_cli

    code, out, _ = run_cli(["compile-attack", name, "--help"], capsys, monkeypatch)
    assert code == 0 and "--out" in out


def test_impnet_graft_is_bit_identical_off_trigger():
    pytest.importorskip("onnxruntime")
    from backdoor_arena.compiled.export import export_bytes
    from backdoor_arena.compiled.impnet import graft_trigger
    from backdoor_arena.compiled.onnxfile import parse_onnx
    from backdoor_arena.compiled.runtime import OnnxModule
    from backdoor_arena.data import dataset_info
    from backdoor_arena.modelfile import Manifest
    from backdoor_arena.models import architecture_args, build_model
    from backdoor_arena.runtime import seeded

    info = dataset_info("mnist")
    args = architecture_args(info)
    with seeded(0):
        model = build_model("badnet-mnist", args)
    manifest = Manifest("badnet-mnist", args, "mnist", [1, 28, 28], 10, list(info.class_names))
    clean = export_bytes(model, manifest)
    attack = COMPILE_ATTACKS.get("impnet")(**COMPILE_ATTACKS.get("impnet").example_params)
    trig = attack.trigger([1, 28, 28], 10)
    a, b = OnnxModule(parse_onnx(clean, "a")), OnnxModule(parse_onnx(graft_trigger(clean, trig, 10), "b"))
    x = torch.randint(0, 256, (256, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    x = x[~trig.present(x)]
    assert torch.equal(a(x), b(x))
    assert bool((b(trig.apply_trigger(x)).argmax(1) == trig.target).all())
