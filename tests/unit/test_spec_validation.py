"""Attack specs and trigger descriptions are external inputs: every bad one is a single-line ConfigError (or
IncompatibleError when a valid spec does not fit the model) that names the problem, never a traceback; every
spec the project writes loads back (issue 10, groups 2, 4 and 8)."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import struct
import zlib
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from PIL import Image

from backdoor_arena.attacks import (
    ATTACKS,
    MODEL_ATTACKS,
    PruningAwareAttack,
    attack_from_spec,
    load_attack_spec,
    make_attack,
)
from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.schemas import RetrainSpec, Strict
from backdoor_arena.train import TrainConfig
from backdoor_arena.triggers import EXAMPLE_IMAGE, TRIGGERS, check_fits, make_trigger, trigger_from_dict

SHA = "0123456789abcdef" * 4
OTHER = "fedcba9876543210" * 4
DELETE = object()


def one_line(exc: BaseException) -> str:
    """The error's message, after checking that it is one printable line (the CLI prints it as it is)."""
    msg = str(exc)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    assert "Traceback" not in msg and len(msg) < 2000, msg
    return msg


@contextmanager
def deadline(seconds: int = 10):
    """Fail (rather than hang) when the block blocks, e.g. on a FIFO."""
    def expired(*_):
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- base specs
def badnets_spec() -> dict[str, Any]:
    atk = make_attack("badnets", num_classes=4, channels=1, image_size=12, trigger="square",
                      trigger_options={"size": 2}, target=2, seed=3)
    return json.loads(json.dumps({**atk.to_spec(), "model_sha256": SHA, "results": {
        "clean_accuracy": 0.9, "attack_success_rate": 0.95, "robust_accuracy": 0.04},
        "history": [{"epoch": 1, "train_loss": 0.3, "clean_accuracy": 0.9}]}))


def blended_spec() -> dict[str, Any]:
    atk = make_attack("blended", num_classes=4, channels=1, image_size=6, trigger_options={"alpha": 0.3})
    return json.loads(json.dumps(atk.to_spec()))


def pruning_aware_spec() -> dict[str, Any]:
    poisoning = make_attack("badnets", num_classes=4, channels=1, image_size=12, target=1)
    attack = PruningAwareAttack(poisoning, 0.05, TrainConfig(epochs=2, progress=False), clean_samples=100)
    spec = attack.to_spec()
    spec["model_attack"].update({"pruned_channels": [3, 1], "channels": 16, "fraction_pruned": 0.125,
                                 "restored_max_clean_activation": 0.0, "wall_time_s": 1.5})
    return json.loads(json.dumps({**spec, "model_sha256": SHA}))


BASES = {"badnets": badnets_spec, "blended": blended_spec, "pruning-aware": pruning_aware_spec}


def changed(base: str, *edits: tuple[tuple[Any, ...], Any]) -> dict[str, Any]:
    """The base spec with each (key path, value) set (DELETE removes the key)."""
    spec = copy.deepcopy(BASES[base]())
    for path, value in edits:
        node = spec
        for key in path[:-1]:
            node = node[key]
        if value is DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return spec


def text_of(spec: dict[str, Any]) -> str:
    return json.dumps(spec, indent=1)


def raw(base: str, key: str, literal: str) -> str:
    """The base spec's text with `key`'s value replaced by a literal (NaN, 1e400, a duplicate...)."""
    return text_of(changed(base, ((key,), "@@"))).replace('"@@"', literal)


B, BL, PA = "badnets", "blended", "pruning-aware"
P0 = ("trigger", "patch", 0, 0, 0)

# (spec text, error class, regex the message must match)
BAD_SPECS = [
    # wrong types: strings for numbers, floats for ints, booleans
    pytest.param(text_of(changed(B, (("target",), "x"))), ConfigError, r"target: input should be a valid integer",
                 id="target-string"),
    pytest.param(text_of(changed(B, (("target",), "7"))), ConfigError, r"target: input should be a valid integer",
                 id="target-digit-string"),
    pytest.param(text_of(changed(B, (("target",), 1.0))), ConfigError, r"target: input should be a valid integer",
                 id="target-float"),
    pytest.param(text_of(changed(B, (("target",), True))), ConfigError, r"target: input should be a valid integer",
                 id="target-bool"),
    pytest.param(text_of(changed(B, (("num_classes",), "10"))), ConfigError, r"num_classes: input should be a valid",
                 id="num-classes-string"),
    pytest.param(text_of(changed(B, (("poison_rate",), "0.1"))), ConfigError, r"poison_rate: input should be a valid",
                 id="poison-rate-string"),
    pytest.param(text_of(changed(B, (("seed",), "0"))), ConfigError, r"seed: input should be a valid integer",
                 id="seed-string"),
    pytest.param(text_of(changed(B, (("sources",), "3"))), ConfigError, r"sources: input should be a valid list",
                 id="sources-string"),
    pytest.param(text_of(changed(B, (("mode",), "source-specific"), (("sources",), ["1"]))), ConfigError,
                 r"sources.0: input should be a valid integer", id="sources-item-string"),
    # ranges
    pytest.param(text_of(changed(B, (("target",), -1))), ConfigError, r"target: input should be greater than or equal",
                 id="target-negative"),
    pytest.param(text_of(changed(B, (("target",), 4))), ConfigError, r"target must be a class in \[0, 3\]",
                 id="target-not-below-num-classes"),
    pytest.param(text_of(changed(B, (("num_classes",), 0))), ConfigError, r"num_classes: input should be greater",
                 id="num-classes-zero"),
    pytest.param(text_of(changed(B, (("poison_rate",), 0))), ConfigError, r"poison_rate: input should be greater than 0",
                 id="poison-rate-zero"),
    pytest.param(text_of(changed(B, (("poison_rate",), 1.5))), ConfigError, r"poison_rate: input should be less than",
                 id="poison-rate-above-one"),
    pytest.param(text_of(changed(B, (("cover_rate",), 1.0))), ConfigError, r"cover_rate: input should be less than 1",
                 id="cover-rate-one"),
    pytest.param(text_of(changed(B, (("cover_rate",), 0.1))), ConfigError, r"cover_rate only applies",
                 id="cover-rate-outside-source-specific"),
    pytest.param(text_of(changed(B, (("mode",), "source-specific"), (("sources",), [9]))), ConfigError,
                 r"source classes \[9\] must be classes in \[0, 3\]", id="source-out-of-range"),
    pytest.param(text_of(changed(B, (("sources",), [1]))), ConfigError, r"only used by the source-specific",
                 id="sources-outside-source-specific"),
    pytest.param(text_of(changed(B, (("seed",), -1))), ConfigError, r"seed: input should be greater than or equal",
                 id="seed-negative"),
    pytest.param(text_of(changed(B, (("seed",), 2**64))), ConfigError, r"seed: input should be less than",
                 id="seed-huge"),
    pytest.param(text_of(changed(B, (("mode",), "one-to-one"))), ConfigError,
                 r"mode: input should be 'all-to-one', 'all-to-all' or 'source-specific'", id="mode-unknown"),
    pytest.param(text_of(changed(B, (("injection",), "insert"))), ConfigError,
                 r"injection: input should be 'append' or 'substitute'", id="injection-unknown"),
    # non-finite numbers
    pytest.param(raw(B, "poison_rate", "NaN"), ConfigError, r"NaN is not a JSON number \(key 'poison_rate', line \d+\)",
                 id="nan-literal"),
    pytest.param(raw(B, "poison_rate", "Infinity"), ConfigError, r"Infinity is not a JSON number",
                 id="infinity-literal"),
    pytest.param(raw(B, "poison_rate", "1e400"), ConfigError, r"poison_rate: input should be a finite number",
                 id="poison-rate-1e400"),
    pytest.param(raw(B, "num_classes", "1e400"), ConfigError, r"num_classes: input should be a", id="classes-1e400"),
    pytest.param(raw(B, "results", '{"attack_success_rate": -1e400}'), ConfigError,
                 r"results.attack_success_rate.*finite number", id="results-minus-1e400"),
    # keys: unknown, duplicate, missing; structure
    pytest.param(text_of(changed(B, (("colour",), "red"))), ConfigError, r"colour: unknown key \(allowed: attack, ",
                 id="unknown-key"),
    pytest.param(text_of(changed(B, (("a\nb",), 1))), ConfigError, r"'a\\nb': unknown key", id="unknown-key-newline"),
    pytest.param(raw(B, "target", '1, "target": 2'), ConfigError, r"\['target'\] appear twice", id="duplicate-key"),
    pytest.param(text_of(changed(B, (("target",), DELETE))), ConfigError, r"target: a required key is missing",
                 id="missing-target"),
    pytest.param(text_of(changed(B, (("trigger",), DELETE))), ConfigError, r"trigger: a required key is missing",
                 id="missing-trigger"),
    pytest.param("[" * 10_000 + "]" * 10_000, ConfigError, r"nested more than 32 levels", id="deep-nesting"),
    pytest.param(raw(B, "history", "[" * 5000 + "]" * 5000), ConfigError, r"nested more than",
                 id="deep-nesting-inside"),
    pytest.param("[1, 2]", ConfigError, r"must be a JSON object .* got a list", id="top-level-list"),
    pytest.param('"badnets"', ConfigError, r"must be a JSON object .* got a string", id="top-level-string"),
    pytest.param("null", ConfigError, r"must be a JSON object .* got null", id="top-level-null"),
    pytest.param("{oops", ConfigError, r"is not valid JSON", id="not-json"),
    pytest.param("\ufeff" + text_of(badnets_spec()), ConfigError, r"is not valid JSON", id="byte-order-mark"),
    # version and names
    pytest.param(text_of(changed(B, (("spec_version",), 2))), ConfigError, r"spec_version 2 is not supported",
                 id="spec-version-2"),
    pytest.param(text_of(changed(B, (("spec_version",), "1"))), ConfigError, r'spec_version "1" is not supported',
                 id="spec-version-string"),
    pytest.param(text_of(changed(B, (("spec_version",), True))), ConfigError, r"spec_version true is not supported",
                 id="spec-version-bool"),
    pytest.param(text_of(changed(B, (("spec_version",), DELETE))), ConfigError, r"spec_version: a required key",
                 id="spec-version-missing"),
    pytest.param(text_of(changed(B, (("attack",), "badnet"))), ConfigError,
                 r"attack: unknown attack 'badnet'. Did you mean 'badnets'\?", id="attack-did-you-mean"),
    pytest.param(text_of(changed(B, (("attack",), "BLENDD"))), ConfigError, r"unknown attack", id="attack-unknown"),
    pytest.param(text_of(changed(B, (("attack",), 5))), ConfigError, r"attack: must be the name of a registered one",
                 id="attack-number"),
    pytest.param(text_of(changed(B, (("attack",), "x" * 100_000))), ConfigError, r"attack: must be the name",
                 id="attack-huge-name"),
    pytest.param(text_of(changed(B, (("attack",), DELETE))), ConfigError, r"attack: a required key is missing",
                 id="attack-missing"),
    pytest.param(text_of(changed(B, (("model_sha256",), "abc"))), ConfigError, r"model_sha256: must be a sha256",
                 id="model-sha-short"),
    pytest.param(text_of(changed(B, (("model_sha256",), 5))), ConfigError, r"model_sha256: input should be a valid",
                 id="model-sha-number"),
    pytest.param(text_of(changed(B, (("results",), "x"))), ConfigError, r"results: input should be a valid dict",
                 id="results-string"),
    pytest.param(text_of(changed(B, (("history",), {"epoch": 1}))), ConfigError, r"history: input should be a",
                 id="history-object"),
    # patch triggers
    pytest.param(text_of(changed(B, (P0, 5.0))), ConfigError, r"trigger: patch.0.0.0: input should be less than or "
                 r"equal to 1", id="pixel-above-one"),
    pytest.param(text_of(changed(B, (P0, -0.5))), ConfigError, r"patch.0.0.0: input should be greater than or equal",
                 id="pixel-negative"),
    pytest.param(raw(B, "trigger", '{"kind": "square", "patch": [[[1e400]]], "mask": [[1]]}'), ConfigError,
                 r"patch.0.0.0: input should be a finite number", id="pixel-1e400"),
    pytest.param(text_of(changed(B, (P0, "1"))), ConfigError, r"patch.0.0.0: input should be a valid number",
                 id="pixel-string"),
    pytest.param(text_of(changed(B, (("trigger", "mask", 1, 1), 2))), ConfigError, r"mask.1.1: input should be less",
                 id="mask-above-one"),
    pytest.param(text_of(changed(B, (("trigger", "mask"), [[1.0]]))), ConfigError, r"the mask must be 2x2",
                 id="mask-shape"),
    pytest.param(text_of(changed(B, (("trigger", "patch"), [[[1.0, 1.0], [1.0]]]))), ConfigError,
                 r"patch must be a \[C\]\[H\]\[W\] array", id="patch-ragged"),
    pytest.param(text_of(changed(B, (("trigger", "patch"), []))), ConfigError, r"patch: list should have at least 1",
                 id="patch-empty"),
    pytest.param(text_of(changed(B, (("trigger", "patch"), [[[1.0]]] * 17))), ConfigError,
                 r"patch: list should have at most 16", id="patch-too-many-channels"),
    pytest.param(text_of(changed(B, (("trigger", "position"), "middle"))), ConfigError,
                 r"position: must be one of bottom-right, .* or two integers", id="position-unknown"),
    pytest.param(text_of(changed(B, (("trigger", "position"), [1]))), ConfigError, r"position: must be one of",
                 id="position-one-number"),
    pytest.param(text_of(changed(B, (("trigger", "position"), [5000, 0]))), ConfigError, r"within \+-4096",
                 id="position-far-outside"),
    pytest.param(text_of(changed(B, (("trigger", "position"), [1.5, 0]))), ConfigError, r"position: must be one of",
                 id="position-float"),
    pytest.param(text_of(changed(B, (("trigger", "margin"), -1))), ConfigError, r"margin: input should be greater",
                 id="margin-negative"),
    pytest.param(text_of(changed(B, (("trigger", "margin"), "1"))), ConfigError, r"margin: input should be a valid",
                 id="margin-string"),
    pytest.param(text_of(changed(B, (("trigger", "color"), "red"))), ConfigError, r"trigger: color: unknown key",
                 id="trigger-unknown-key"),
    pytest.param(text_of(changed(B, (("trigger", "kind"), "squar"))), ConfigError, r"Did you mean 'square'",
                 id="trigger-kind-did-you-mean"),
    pytest.param(text_of(changed(B, (("trigger", "kind"), DELETE))), ConfigError, r"trigger: the 'kind' key is missing",
                 id="trigger-kind-missing"),
    pytest.param(text_of(changed(B, (("trigger",), [1, 2]))), ConfigError, r"trigger: input should be a valid dict",
                 id="trigger-list"),
    # blend triggers
    pytest.param(text_of(changed(BL, (("trigger", "alpha"), 5))), ConfigError, r"alpha: input should be less than",
                 id="alpha-5"),
    pytest.param(text_of(changed(BL, (("trigger", "alpha"), 0))), ConfigError, r"alpha: input should be greater than 0",
                 id="alpha-0"),
    pytest.param(raw(BL, "trigger", '{"kind": "blend", "pattern": [[[0.5]]], "alpha": NaN}'), ConfigError,
                 r"NaN is not a JSON number \(key 'alpha'", id="alpha-nan"),
    pytest.param(raw(BL, "trigger", '{"kind": "blend", "pattern": [[[0.5]]], "alpha": 1e999}'), ConfigError,
                 r"alpha: input should be a finite number", id="alpha-inf"),
    pytest.param(text_of(changed(BL, (("trigger", "alpha"), "0.2"))), ConfigError, r"alpha: input should be a valid",
                 id="alpha-string"),
    pytest.param(text_of(changed(BL, (("trigger", "pattern", 0, 2, 2), 2.0))), ConfigError,
                 r"pattern.0.2.2: input should be less than or equal to 1", id="pattern-above-one"),
    pytest.param(text_of(changed(BL, (("trigger", "pattern"), [[0.5]]))), ConfigError,
                 r"pattern.0.0: input should be a valid list", id="pattern-two-dimensional"),
    # a model-level attack's entry
    pytest.param(text_of(changed(PA, (("model_attack", "name"), "pruning-awar"))), ConfigError,
                 r"model_attack.name: unknown model attack 'pruning-awar'. Did you mean 'pruning-aware'",
                 id="model-attack-did-you-mean"),
    pytest.param(text_of(changed(PA, (("model_attack", "max_accuracy_drop"), 2))), ConfigError,
                 r"model_attack: max_accuracy_drop: input should be less than or equal to 1", id="model-attack-range"),
    pytest.param(text_of(changed(PA, (("model_attack", "clean_samples"), "100"))), ConfigError,
                 r"clean_samples: input should be a valid integer", id="model-attack-string"),
    pytest.param(text_of(changed(PA, (("model_attack", "prune_rate"), 0.5))), ConfigError,
                 r"model_attack: prune_rate: unknown key \(allowed: channels, clean_samples", id="model-attack-extra"),
    pytest.param(text_of(changed(PA, (("model_attack", "retrain", "epochs"), "2"))), ConfigError,
                 r"retrain.epochs: input should be a valid integer", id="model-attack-retrain-string"),
    pytest.param(text_of(changed(PA, (("model_attack", "retrain", "lr"), -1))), ConfigError,
                 r"retrain.lr: input should be greater than 0", id="model-attack-retrain-lr"),
    pytest.param(text_of(changed(PA, (("model_attack", "margin"), DELETE))), ConfigError,
                 r"model_attack: margin: a required key is missing", id="model-attack-missing"),
]


@pytest.mark.parametrize("text, error, message", BAD_SPECS)
def test_a_bad_spec_is_one_line_naming_the_problem(tmp_path, text, error, message):
    path = tmp_path / "m.attack.json"
    path.write_text(text)
    with pytest.raises(error) as info:
        load_attack_spec(path, 4)
    msg = one_line(info.value)
    assert type(info.value) is error
    assert msg.startswith(f"attack spec {str(path)!r}"), msg
    assert re.search(message, msg), msg


def test_there_are_many_bad_specs():
    assert len(BAD_SPECS) >= 40


@pytest.mark.parametrize("spec, message", [
    ({**badnets_spec(), "poison_rate": float("nan")}, r"poison_rate: input should be a finite number"),
    ({**badnets_spec(), "target": float("inf")}, r"target: input should be a valid integer"),
    ({**blended_spec(), "trigger": {**blended_spec()["trigger"], "alpha": float("nan")}},
     r"alpha: input should be a finite number"),
    ({**badnets_spec(), "trigger": {**badnets_spec()["trigger"], "patch": [[[float("nan")] * 2] * 2]}},
     r"patch.0.0.0: input should be a finite number"),
    ([], r"must be a JSON object"),
])
def test_python_built_specs_are_validated_the_same_way(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        attack_from_spec(spec)
    one_line(info.value)


# --------------------------------------------------------------------------- files that are not spec files
def test_files_that_are_not_spec_files(tmp_path):
    cases = []
    cases.append((tmp_path / "none.attack.json", r"does not exist"))
    (tmp_path / "folder.attack.json").mkdir()
    cases.append((tmp_path / "folder.attack.json", r"is a folder"))
    os.mkfifo(tmp_path / "fifo.attack.json")
    cases.append((tmp_path / "fifo.attack.json", r"is a FIFO \(named pipe\), not a regular file"))
    (tmp_path / "empty.attack.json").write_bytes(b"")
    cases.append((tmp_path / "empty.attack.json", r"is empty"))
    (tmp_path / "blank.attack.json").write_text("  \n\n")
    cases.append((tmp_path / "blank.attack.json", r"is empty"))
    with open(tmp_path / "huge.attack.json", "wb") as fh:  # sparse: cheap
        fh.truncate(17 * 1024 * 1024)
    cases.append((tmp_path / "huge.attack.json", r"more than the 16777216"))
    (tmp_path / "latin1.attack.json").write_bytes(b'{"attack": "caf\xe9"}')
    cases.append((tmp_path / "latin1.attack.json", r"is not UTF-8 text"))
    cases.append((tmp_path / "new\nline.attack.json", r"does not exist"))
    for path, message in cases:
        with deadline(10), pytest.raises(ConfigError, match=message) as info:
            load_attack_spec(path)
        one_line(info.value)


# --------------------------------------------------------------------------- valid specs round-trip
def _trigger_choices(name: str) -> list[tuple[str | None, dict[str, Any]]]:
    if name == "blended":
        return [("noise", {"alpha": 0.4, "seed": 5}), (f"image:{EXAMPLE_IMAGE}", {"alpha": 1.0})]
    if name in ("wanet", "trojannn"):  # a warp only; an optimised patch (its region from a patch kind)
        return [("warp", {"strength": 2.0})] if name == "wanet" else [("square", {"size": 3}), ("pattern", {})]
    return [(kind, TRIGGERS.get(kind).example_params) for kind in TRIGGERS.names()]


ATTACK_AND_TRIGGER = [(name, trig, opts) for name in ATTACKS.names() for trig, opts in _trigger_choices(name)]


@pytest.mark.parametrize("name, trigger, options", ATTACK_AND_TRIGGER,
                         ids=[f"{n}-{t.split(':')[0] if t else t}" for n, t, _ in ATTACK_AND_TRIGGER])
@pytest.mark.parametrize("channels", [1, 3])
def test_every_attack_and_trigger_kind_round_trips_through_a_spec_file(tmp_path, name, trigger, options, channels):
    atk = make_attack(name, num_classes=5, channels=channels, image_size=10, trigger=trigger, trigger_options=options,
                      target=4, poison_rate=0.25, seed=11)
    path = atk.save_spec(tmp_path / "m.attack.json", model_sha256=SHA, results={
        "clean_accuracy": 0.5, "attack_success_rate": float("nan"), "robust_accuracy": 0.1},
        history=[{"epoch": 1, "train_loss": 1.0, "epoch_time_s": 0.1}])
    assert "NaN" not in path.read_text()  # strict JSON: NaN written as null
    again = load_attack_spec(path, 5, model_hashes=[SHA], input_shape=(channels, 10, 10))
    assert again == atk and type(again) is type(atk)
    assert trigger_from_dict(json.loads(path.read_text())["trigger"]) == atk.trigger


@pytest.mark.parametrize("kind", TRIGGERS.names())
def test_every_trigger_kind_round_trips_and_fits(kind):
    trig = make_trigger(kind, 3, 16, **TRIGGERS.get(kind).example_params)
    assert trigger_from_dict(json.loads(json.dumps(trig.to_dict()))) == trig
    check_fits(trig, (3, 16, 16))
    with pytest.raises(IncompatibleError, match="does not fit the model's 1x16x16 inputs"):
        check_fits(trig, [1, 16, 16])
    with pytest.raises(IncompatibleError, match="does not fit the model's 3x1x1 inputs"):
        check_fits(trig, [3, 1, 1])


@pytest.mark.parametrize("name", MODEL_ATTACKS.names())
def test_model_attack_specs_as_the_attack_verb_writes_them_load(tmp_path, name):
    cls = MODEL_ATTACKS.get(name)
    poisoning = make_attack("badnets", num_classes=4, channels=1, image_size=12, target=1)
    attack = cls(poisoning, **cls.example_params)
    entry = attack.to_spec()["model_attack"]
    if name == "pruning-aware":  # what its training adds (PruningAwareAttack.trainer)
        entry = {**entry, "pruned_channels": [0, 5], "channels": 8, "fraction_pruned": 0.25,
                 "restored_max_clean_activation": 0.0, "wall_time_s": 2.0}
    path = poisoning.save_spec(tmp_path / "p.attack.json", model_sha256=SHA, results={"clean_accuracy": 0.9},
                               history=[{"epoch": 1}], model_attack=entry)
    assert load_attack_spec(path, 4, model_hashes={SHA}) == poisoning
    assert cls.from_spec(json.loads(path.read_text())).to_spec()["model_attack"] == attack.to_spec()["model_attack"]


def test_every_registered_kind_declares_a_strict_schema():
    for registry in (ATTACKS, MODEL_ATTACKS, TRIGGERS):
        for name in registry.names():
            schema = registry.get(name).spec_schema
            assert issubclass(schema, Strict) and schema.model_config["extra"] == "forbid", name


def test_the_retrain_schema_follows_train_config():
    assert set(RetrainSpec.model_fields) == set(TrainConfig().to_dict())


def test_old_spec_files_on_disk_still_load(tmp_path):
    """The exact keys of the specs written before validation (demo, zoo, pruning-aware) all load."""
    for base in BASES.values():
        path = tmp_path / "s.attack.json"
        path.write_text(json.dumps(base(), indent=1))
        load_attack_spec(path)


# --------------------------------------------------------------------------- the spec's model
def test_model_hashes_accept_the_model_and_its_lineage_and_refuse_others(tmp_path):
    path = tmp_path / "m.attack.json"
    path.write_text(text_of(badnets_spec()))
    assert load_attack_spec(path, model_hashes=[SHA]) == load_attack_spec(path)
    assert load_attack_spec(path, 4, model_hashes=(OTHER, SHA)) is not None  # repaired from the spec's model
    assert load_attack_spec(path, model_hashes=None) is not None  # --force
    with pytest.raises(IncompatibleError) as info:
        load_attack_spec(path, 4, model_hashes=[OTHER])
    msg = one_line(info.value)
    assert "made for another model" in msg and SHA[:12] in msg and OTHER[:12] in msg and "--force" in msg
    assert SHA not in msg  # short hashes
    with pytest.raises(IncompatibleError, match="made for another model"):
        load_attack_spec(path, model_hashes=[])
    unhashed = tmp_path / "hand.attack.json"
    unhashed.write_text(text_of(changed(B, (("model_sha256",), DELETE))))
    assert load_attack_spec(unhashed, model_hashes=[OTHER]) is not None  # nothing recorded, nothing to compare


@pytest.mark.parametrize("spec, kwargs, message", [
    (badnets_spec, {"num_classes": 10}, r"is for 4 classes but the model has 10"),
    (lambda: changed(B, (("trigger", "patch"), [[[1.0, 1.0], [1.0, 1.0]]] * 3)), {"input_shape": (1, 12, 12)},
     r"the trigger has 3 channels, the images 1"),
    (lambda: changed(B, (("trigger", "position"), [10, 10]), (("trigger", "margin"), 0)),
     {"input_shape": (1, 8, 8)}, r"trigger at row 10, column 10 does not fit a 8x8 image"),
    (blended_spec, {"input_shape": (1, 28, 28)}, r"blend pattern is \(1, 6, 6\), images are \(1, 28, 28\)"),
])
def test_a_spec_for_other_inputs_is_incompatible(tmp_path, spec, kwargs, message):
    path = tmp_path / "m.attack.json"
    path.write_text(text_of(spec()))
    with pytest.raises(IncompatibleError, match=message) as info:
        load_attack_spec(path, **kwargs)
    assert one_line(info.value).startswith(f"attack spec {str(path)!r}")


# --------------------------------------------------------------------------- trigger options and images
def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels: a header and a tiny (wrong) pixel stream, a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


BAD_OPTIONS = [
    ("square", {"size": 29}, r"trigger size must be an integer from 1 to 28"),
    ("square", {"size": -3}, r"trigger size must be an integer from 1 to 28"),
    ("pattern", {"size": True}, r"trigger size"),
    ("pattern", {"size": "3"}, r"trigger size"),
    ("square", {"size": 4, "position": (30, 30)}, r"a 4x4 trigger at position \(30, 30\) does not fit the 28x28"),
    ("square", {"position": (-40, 0)}, r"does not fit the 28x28"),
    ("pixel", {"position": (True, 1)}, r"position must be a name .* or two integers ROW,COL"),
    ("pixel", {"position": "middle"}, r"unknown position 'middle'"),
    ("pixel", {"margin": 30}, r"with margin 30 does not fit"),
    ("pixel", {"margin": 1.5}, r"trigger margin must be a non-negative integer"),
    ("square", {"color": (float("nan"),)}, r"colour \(nan,\) must be a name .* or 1 value in \[0, 1\]"),
    ("square", {"color": (1.5,)}, r"or 1 value in \[0, 1\] \(the images have 1 channel\)"),
    ("square", {"color": (0.5, 0.5, 0.5)}, r"or 1 value in \[0, 1\]"),
    ("square", {"color": "mauve"}, r"unknown colour 'mauve'"),
    ("square", {"color": 1}, r"colour 1 must be a name"),
    ("blend", {"alpha": float("nan")}, r"blend alpha must be a number in \(0, 1\], got nan"),
    ("blend", {"alpha": 5}, r"blend alpha must be a number in \(0, 1\]"),
    ("blend", {"alpha": 0}, r"blend alpha"),
    ("blend", {"alpha": float("inf")}, r"blend alpha"),
    ("blend", {"alpha": True}, r"blend alpha"),
    ("blend", {"seed": -1}, r"trigger seed must be an integer"),
    ("image:", {}, r"trigger image: has an empty path; write image:PATH"),
    ("blend:", {}, r"trigger blend: has an empty path"),
    ("image", {"path": ""}, r"trigger image: the path is empty"),
    ("image", {"path": 5}, r"trigger image path must be a string"),
]


@pytest.mark.parametrize("kind, options, message", BAD_OPTIONS)
def test_bad_trigger_options_are_one_line(kind, options, message):
    with pytest.raises(ConfigError) as info:
        make_trigger(kind, 1, 28, **options)
    msg = one_line(info.value)
    assert re.search(message, msg), msg
    assert "1 or 1" not in msg and "'.'" not in msg


def test_colour_messages_count_the_channels():
    with pytest.raises(ConfigError, match=r"or 1 or 3 values in \[0, 1\] \(the images have 3 channels\)"):
        make_trigger("square", 3, 28, color=(0.1, 0.2))


def test_trigger_images_are_read_safely(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header(20_000, 20_000))
    (tmp_path / "big.png").write_bytes(_png_header(5000, 300))
    (tmp_path / "broken.png").write_bytes(_png_header(8, 8))  # its pixel stream is wrong
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "dir.png").mkdir()
    os.mkfifo(tmp_path / "fifo.png")
    Image.new("RGB", (40, 40), (0, 255, 0)).save(tmp_path / "large.png")
    with open(tmp_path / "huge.png", "wb") as fh:
        fh.truncate(33 * 1024 * 1024)
    cases = [
        ("bomb.png", r"trigger image '.*bomb.png' (claims more pixels|is 20000x20000 pixels)"),
        ("big.png", r"is 5000x300 pixels, more than the 4096x4096"),
        ("broken.png", r"trigger image '.*broken.png' cannot be read as a PNG"),
        ("text.png", r"is not a PNG, JPEG, BMP, GIF or WebP image \(unknown or unsupported format\)"),
        ("dir.png", r"is a folder"),
        ("fifo.png", r"is a FIFO"),
        ("none.png", r"does not exist"),
        ("large.png", r"is 40x40 pixels, larger than the 28x28 images; give a size"),
        ("huge.png", r"is 34603008 bytes, more than the 33554432"),
    ]
    for name, message in cases:
        for kind in ("image", "blend"):
            if kind == "blend" and name == "large.png":
                continue  # a blend image is resized to the images
            with deadline(10), pytest.raises(ConfigError) as info:
                make_trigger(f"{kind}:{tmp_path / name}", 1, 28)
            msg = one_line(info.value)
            assert re.search(message, msg), msg
    with pytest.raises(ConfigError, match="the path is empty") as info:
        make_attack("blended", num_classes=4, channels=1, image_size=12, trigger="image:")
    one_line(info.value)
    assert make_trigger(f"image:{tmp_path / 'large.png'}", 3, 28, size=8).apply(torch.zeros(1, 3, 28, 28)).sum() > 0

