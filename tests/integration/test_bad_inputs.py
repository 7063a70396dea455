"""Every bad input a one-line error, nothing lost (issue 10): a table of bad inputs across every command,
each asserting the exit code, a single stderr line that names the problem, no traceback, and that no file
under the working folder changed (a failing command writes nothing, creates no folder, replaces nothing)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from backdoor_arena.data import cifar10, gtsrb, mnist
from backdoor_arena.modelfile import Manifest, load_model, save_model
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
QUICK = str(REPO / "configs" / "fl" / "quick.toml")


def _png(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height (the pixels are never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def _write_spec(path: Path, spec: dict, **changes) -> str:
    spec = json.loads(json.dumps(spec))
    for dotted, value in changes.items():
        target = spec
        *parents, key = dotted.split("__")
        for p in parents:
            target = target[p]
        target[key] = value
    path.write_text(json.dumps(spec))
    return str(path)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_mnist_model):
    """Every bad (and a few good) input files, made once; tests copy them into their own folder."""
    root = tmp_path_factory.mktemp("inputs")
    model, spec = tiny_mnist_model
    shutil.copy(model, root / "model.safetensors")
    shutil.copy(spec, root / "model.attack.json")
    good = json.loads(Path(spec).read_text())
    raw = (root / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    # model files
    (root / "empty.safetensors").write_bytes(b"")
    (root / "junk.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    (root / "truncated.safetensors").write_bytes(raw[: len(raw) // 2])
    flipped = bytearray(raw)
    flipped[8 + n + 100] ^= 0xFF
    (root / "tampered.safetensors").write_bytes(bytes(flipped))
    header = json.loads(raw[8:8 + n])
    manifest = json.loads(header["__metadata__"]["backdoor_arena"])
    for name, field, value in (("edited", "num_classes", 9), ("listarch", "architecture", ["badnet-mnist"]),
                               ("edited-norm", "arch_args", {**manifest["arch_args"], "mean": [0.0]})):
        header2 = json.loads(raw[8:8 + n])
        m = dict(manifest, **{field: value})
        header2["__metadata__"]["backdoor_arena"] = json.dumps(m)
        text = json.dumps(header2).encode()
        (root / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    (root / "hugeheader.safetensors").write_bytes(struct.pack("<Q", 2**40) + b"{}")
    torch.save({"w": torch.zeros(2)}, root / "pickle.safetensors")
    torch.save({"w": torch.zeros(2)}, root / "weights.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(root / "bare.safetensors"))
    loaded = load_model(root / "model.safetensors")
    m = loaded.manifest
    fields = {k: getattr(m, k) for k in ("architecture", "arch_args", "input_shape", "num_classes", "class_names")}
    save_model(root / "gtsrbnamed.safetensors", loaded.model, Manifest(dataset="gtsrb", training={}, **fields))
    # attack specs
    specs = {
        "spec-target-str": {"target": "x"}, "spec-target-numstr": {"target": "7"}, "spec-rate-str": {"poison_rate": "a"},
        "spec-classes-str": {"num_classes": "ten"}, "spec-rate-big": {"poison_rate": 5}, "spec-target-big": {"target": 99},
        "spec-sources-str": {"sources": ["a"]}, "spec-unknown-key": {"surprise": 1}, "spec-version": {"spec_version": 9},
        "spec-attack-unknown": {"attack": "badnet"}, "spec-mode": {"mode": "one-to-one"},
        "spec-trigger-size": {"trigger__size": 99}, "spec-trigger-kind": {"trigger__kind": "laser"},
        "spec-hash": {"model_sha256": "ab" * 32}, "spec-classes": {"num_classes": 43},
    }
    for name, changes in specs.items():
        _write_spec(root / f"{name}.json", good, **changes)
    (root / "spec-nan.json").write_text(json.dumps(good).replace(f'"poison_rate": {good["poison_rate"]}',
                                                                   '"poison_rate": NaN'))
    (root / "spec-deep.json").write_text("[" * 100000 + "]" * 100000)
    (root / "spec-notjson.json").write_text("{target: 7")
    (root / "spec-list.json").write_text("[1, 2, 3]")
    (root / "spec-empty.json").write_text("")
    (root / "spec-binary.json").write_bytes(b"\xff\xfe\x00garbage")
    blended = {"spec_version": 1, "attack": "blended", "num_classes": 10, "target": 7, "mode": "all-to-one",
               "sources": [], "poison_rate": 0.1, "injection": "append", "seed": 0, "cover_rate": 0.0,
               "trigger": {"kind": "blend", "alpha": 5, "seed": 0, "pattern_shape": [1, 28, 28]}}
    (root / "spec-alpha.json").write_text(json.dumps(blended))
    # trigger images
    (root / "big.png").write_bytes(_png(20000, 20000))
    (root / "notpng.png").write_bytes(b"this is not an image")
    # scenarios
    quick = Path(QUICK).read_text()
    (root / "nonutf8.toml").write_bytes(quick.encode() + b"\n# \xff\xfe\n")
    (root / "nested.toml").write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    (root / "badsyntax.toml").write_text("name = \n[federation\n")
    for name, old, new in (("nanlr", "client_lr = 0.1", "client_lr = nan"), ("inflr", "client_lr = 0.1", "client_lr = inf"),
                           ("clients", "clients_per_round = 15", "clients_per_round = 100000"),
                           ("rounds", "rounds = 12", "rounds = -3"), ("agg", 'name = "fedavg"', 'name = "fedavgg"'),
                           ("unknownkey", "rounds = 12", "rounds = 12\nroundz = 3")):
        assert old in quick, old
        (root / f"{name}.toml").write_text(quick.replace(old, new))
    # zoo folders
    for name, lines in (("zoo-malformed", ["{not json"]), ("zoo-list", ["[1, 2]"]),
                        ("zoo-traversal", [json.dumps({"name": "../../../elsewhere/m", "backdoored": False})]),
                        ("zoo-empty", []), ("zoo-nan", ['{"name": "model-00", "backdoored": false, "clean_accuracy": NaN}']),
                        ("zoo-dup", [json.dumps({"name": "model-00", "backdoored": False})] * 2),
                        ("zoo-missing", [json.dumps({"name": "model-00", "backdoored": False})]),
                        ("zoo-badtype", [json.dumps({"name": "model-00", "backdoored": "yes"})])):
        (root / name / "specs").mkdir(parents=True)
        (root / name / "models").mkdir()
        (root / name / "specs" / "truth.jsonl").write_text("".join(line + "\n" for line in lines))
    (root / "notazoo").mkdir()
    (root / "notazoo" / "stuff.txt").write_text("x")
    (root / "afile.txt").write_text("a file, not a folder")
    (root / "adir").mkdir()
    (root / "folder.safetensors").mkdir()
    (root / "existing.safetensors").write_bytes(raw)
    (root / "nonempty").mkdir()
    (root / "nonempty" / "keep.txt").write_text("keep me")
    return root


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.join(dirpath, d)] = "dir"
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[p] = "fifo" if Path(p).is_fifo() else hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


M = "{in}/model.safetensors"
S = "{in}/model.attack.json"
T = ["--dataset", "mnist", "--model", "badnet-mnist"]
A = ["attack", "badnets", *T]

CASES = [
    # ---- 1. usage errors (typer/click) ------------------------------------------------------------------
    ("epochs-not-int", ["train", *T, "--epochs", "abc", "--out", "x.safetensors"], 2, "Invalid value for '--epochs'"),
    ("unknown-command", ["trian"], 2, "No such command 'trian'"),
    ("unknown-subcommand", ["defend", "prunning", M, "--out", "x.safetensors"], 2, "Did you mean 'pruning'"),
    ("unknown-option", ["train", *T, "--epoch", "3", "--out", "x.safetensors"], 2, "No such option"),
    ("missing-option", ["train", "--dataset", "mnist", "--out", "x.safetensors"], 2, "Missing option '--model'"),
    ("missing-argument", ["evaluate"], 2, "Missing argument"),
    ("unknown-detector", ["detect", "neural-cleans", M], 2, "Did you mean 'neural-cleanse'"),
    ("unknown-attack", ["attack", "trojan", *T, "--out", "x.safetensors"], 2, "No such command 'trojan'"),
    ("lr-not-float", ["train", *T, "--lr", "fast", "--out", "x.safetensors"], 2, "Invalid value for '--lr'"),
    ("source-not-int", [*A, "--mode", "source-specific", "--source", "x", "--out", "x.safetensors"], 2, "Invalid value for '--source'"),
    ("extra-argument", ["info", M, "extra"], 2, "unexpected extra argument"),
    ("fl-no-scenario", ["fl", "run"], 2, "Missing argument"),
    ("detect-bool-value", ["detect", "neural-cleanse", M, "--batched", "maybe"], 2, "unexpected extra argument"),
    # ---- 2. option values (the project's checks) ----------------------------------------------------------
    ("dataset-typo", ["train", "--dataset", "mnst", "--model", "badnet-mnist", "--out", "x.safetensors"], 2, "Did you mean 'mnist'"),
    ("model-unknown", ["train", "--dataset", "mnist", "--model", "lenet", "--out", "x.safetensors"], 2, "unknown model architecture"),
    ("out-suffix", ["train", *T, "--out", "x.pt"], 2, ".safetensors"),
    ("epochs-zero", ["train", *T, "--epochs", "0", "--out", "x.safetensors"], 2, "epochs must be"),
    ("epochs-negative", ["train", *T, "--epochs", "-2", "--out", "x.safetensors"], 2, "epochs must be"),
    ("lr-negative", ["train", *T, "--lr", "-0.1", "--out", "x.safetensors"], 2, "lr must be"),
    ("lr-nan", ["train", *T, "--lr", "nan", "--out", "x.safetensors"], 2, "lr must be"),
    ("lr-inf", ["train", *T, "--lr", "inf", "--out", "x.safetensors"], 2, "lr must be"),
    ("batch-zero", ["train", *T, "--batch-size", "0", "--out", "x.safetensors"], 2, "batch_size must be"),
    ("optimizer", ["train", *T, "--optimizer", "rmsprop", "--out", "x.safetensors"], 2, "optimizer must be"),
    ("schedule", ["train", *T, "--schedule", "linear", "--out", "x.safetensors"], 2, "schedule must be"),
    ("momentum", ["train", *T, "--momentum", "1.5", "--out", "x.safetensors"], 2, "momentum must be"),
    ("weight-decay", ["train", *T, "--weight-decay", "-1", "--out", "x.safetensors"], 2, "weight_decay must be"),
    ("seed-overflow", ["train", *T, "--seed", "1180591620717411303424", "--out", "x.safetensors"], 2, "seed must be"),
    ("seed-negative", ["train", *T, "--seed", "-1", "--out", "x.safetensors"], 2, "seed must be"),
    ("dp-clip-alone", ["train", *T, "--dp-clip", "1", "--out", "x.safetensors"], 2, "dp"),
    ("dp-noise-negative", ["train", *T, "--dp-clip", "1", "--dp-noise", "-1", "--out", "x.safetensors"], 2, "noise"),
    ("dp-delta", ["train", *T, "--dp-clip", "1", "--dp-noise", "1", "--dp-delta", "2", "--out", "x.safetensors"], 2, "delta"),
    ("poison-rate-big", [*A, "--poison-rate", "1.5", "--out", "x.safetensors"], 2, "poison_rate"),
    ("poison-rate-zero", [*A, "--poison-rate", "0", "--out", "x.safetensors"], 2, "poison_rate"),
    ("poison-rate-nan", [*A, "--poison-rate", "nan", "--out", "x.safetensors"], 2, "poison_rate"),
    ("target-big", [*A, "--target", "10", "--out", "x.safetensors"], 2, "target"),
    ("target-negative", [*A, "--target", "-1", "--out", "x.safetensors"], 2, "target"),
    ("mode", [*A, "--mode", "one-to-one", "--out", "x.safetensors"], 2, "mode"),
    ("injection", [*A, "--injection", "insert", "--out", "x.safetensors"], 2, "injection"),
    ("source-without-mode", [*A, "--source", "3", "--out", "x.safetensors"], 2, "source"),
    ("source-missing", [*A, "--mode", "source-specific", "--out", "x.safetensors"], 2, "source class"),
    ("source-is-target", [*A, "--mode", "source-specific", "--source", "0", "--target", "0", "--out", "x.safetensors"], 2, "source"),
    ("cover-rate-mode", [*A, "--cover-rate", "0.1", "--out", "x.safetensors"], 2, "cover_rate"),
    ("position-text", [*A, "--position", "1,x", "--out", "x.safetensors"], 2, "ROW,COL"),
    ("position-name", [*A, "--position", "middle", "--out", "x.safetensors"], 2, "position"),
    ("position-outside", [*A, "--position", "40,40", "--out", "x.safetensors"], 2, "does not fit"),
    ("trigger-size-big", [*A, "--trigger", "square", "--trigger-size", "100", "--out", "x.safetensors"], 2, "size"),
    ("trigger-size-zero", [*A, "--trigger", "square", "--trigger-size", "0", "--out", "x.safetensors"], 2, "size"),
    ("trigger-kind", [*A, "--trigger", "laser", "--out", "x.safetensors"], 2, "laser"),
    ("color-name", [*A, "--color", "mauve", "--out", "x.safetensors"], 2, "colour"),
    ("color-values", [*A, "--color", "1,0,0", "--out", "x.safetensors"], 2, "1 value"),
    ("color-range", [*A, "--color", "2", "--out", "x.safetensors"], 2, "[0, 1]"),
    ("color-nan", [*A, "--color", "nan", "--out", "x.safetensors"], 2, "colour"),
    ("margin-negative", [*A, "--margin", "-3", "--out", "x.safetensors"], 2, "margin"),
    ("blend-alpha", ["attack", "blended", *T, "--alpha", "5", "--out", "x.safetensors"], 2, "alpha"),
    ("blend-alpha-nan", ["attack", "blended", *T, "--alpha", "nan", "--out", "x.safetensors"], 2, "alpha"),
    ("blend-trigger", ["attack", "blended", *T, "--trigger", "square", "--out", "x.safetensors"], 2, "noise"),
    ("wanet-strength", ["attack", "wanet", *T, "--strength", "-1", "--out", "x.safetensors"], 2, "warp strength must be a number in (0, 100]"),
    ("wanet-cross-ratio", ["attack", "wanet", *T, "--cross-ratio", "-1", "--out", "x.safetensors"], 2, "cross_ratio must be a number in [0, 100]"),
    ("sig-train-delta", ["attack", "sig", *T, "--train-delta", "2", "--out", "x.safetensors"], 2, "train_delta must be a number in (0, 1]"),
    ("lc-steps", ["attack", "label-consistent", *T, "--steps", "0", "--out", "x.safetensors"], 2, "steps must be an integer from 1 to 10000"),
    ("badnets-trigger-param", ["attack", "badnets", *T, "--strength", "4", "--out", "x.safetensors"], 2, "trigger kind 'pattern' does not take ['strength']"),
    ("image-missing", [*A, "--trigger", "image:nope.png", "--out", "x.safetensors"], 2, "does not exist"),
    ("image-empty-path", [*A, "--trigger", "image:", "--out", "x.safetensors"], 2, "empty"),
    ("image-bomb", [*A, "--trigger", "image:{in}/big.png", "--out", "x.safetensors"], 2, "4096x4096"),
    ("image-not-image", [*A, "--trigger", "image:{in}/notpng.png", "--out", "x.safetensors"], 2, "notpng.png"),
    ("image-fifo", [*A, "--trigger", "image:{in}/fifo.png", "--out", "x.safetensors"], 2, "FIFO"),
    ("image-dir", [*A, "--trigger", "image:{in}/adir", "--out", "x.safetensors"], 2, "folder"),
    ("pruning-aware-drop", ["attack", "pruning-aware", *T, "--prune-accuracy-drop", "2", "--out", "x.safetensors"], 2, "prune_accuracy_drop"),
    ("pruning-aware-dp", ["attack", "pruning-aware", *T, "--dp-clip", "1", "--dp-noise", "1", "--out", "x.safetensors"], 2, "DP-SGD"),
    ("pruning-aware-poisoning", ["attack", "pruning-aware", *T, "--poisoning", "trojan", "--out", "x.safetensors"], 2, "unknown attack"),
    ("clean-fraction-zero", ["defend", "pruning", M, "--out", "x.safetensors", "--clean-fraction", "0"], 2, "clean"),
    ("clean-fraction-big", ["detect", "neural-cleanse", M, "--clean-fraction", "2"], 2, "clean"),
    ("defend-param-bad", ["defend", "pruning", M, "--out", "x.safetensors", "--max-accuracy-drop", "-1"], 2, "max_accuracy_drop"),
    ("defend-param-unknown", ["defend", "pruning", M, "--out", "x.safetensors", "-p", "stepz=3"], 2, "stepz"),
    ("defend-param-syntax", ["defend", "pruning", M, "--out", "x.safetensors", "-p", "step"], 2, "key=value"),
    ("defend-json-option", ["defend", "nc-unlearning", M, "--out", "x.safetensors", "--detector", "{steps"], 2, "JSON"),
    ("defend-detector-key", ["defend", "nc-unlearning", M, "--out", "x.safetensors", "--detector", '{"stepz": 3}'], 2, "stepz"),
    ("detect-param-unknown", ["detect", "neural-cleanse", M, "-p", "stepz=3"], 2, "stepz"),
    ("detect-param-range", ["detect", "strip", M, "-p", "frr=2"], 2, "frr"),
    ("detect-option-range", ["detect", "strip", M, "--frr", "2"], 2, "frr"),
    ("detect-n-eval", ["detect", "strip", M, "--n-eval", "0"], 2, "n_eval"),
    ("detect-spectral-eps", ["detect", "spectral", M, "-p", "epsilon=0"], 2, "epsilon"),
    ("detect-clean-dataset", ["detect", "neural-cleanse", M, "--clean-dataset", "fashion-mnist"], 5, "trained on 'mnist'"),
    ("scan-param-name", ["scan", M, "-o", "scan", "-p", "steps=3"], 2, "DETECTOR.key=value"),
    ("scan-param-detector", ["scan", M, "-o", "scan", "-p", "strip.frr=0.1"], 2, "unknown model detectors"),
    ("scan-detector-unknown", ["scan", M, "-o", "scan", "-d", "nope"], 2, "unknown model detectors"),
    ("scan-time-budget", ["scan", M, "-o", "scan", "--time-budget", "-1"], 2, "time budget"),
    ("scan-calibration-missing", ["scan", M, "-o", "scan", "--calibration", "{in}/none.json"], 2, "does not exist"),
    ("scan-calibration-corrupt", ["scan", M, "-o", "scan", "--calibration", "{in}/notpng.png"], 2, "not JSON"),
    ("scan-zoo-not-a-zoo", ["scan-zoo", "{in}/nonempty", "-o", "sz"], 2, "not a zoo folder"),
    ("scan-calibrate-not-a-zoo", ["scan-calibrate", "{in}/nonempty", "-o", "c.json"], 2, "not a zoo folder"),
    ("transfer-task", ["transfer", M, "--attack-spec", S, "--task", "nope"], 2, "task"),
    ("transfer-spec-missing", ["transfer", M, "--attack-spec", "nope.json", "--task", "parity"], 2, "does not exist"),
    ("zoo-build-zero", ["zoo", "build", "--out", "z", "--clean", "0", "--backdoored", "0"], 2, "at least one model"),
    ("zoo-build-negative", ["zoo", "build", "--out", "z", "--clean", "-1"], 2, "non-negative"),
    ("zoo-build-epochs", ["zoo", "build", "--out", "z", "--epochs", "0"], 2, "epochs"),
    ("zoo-build-dataset", ["zoo", "build", "--out", "z", "--dataset", "imagenet"], 2, "unknown dataset"),
    ("zoo-build-patch-sizes", ["zoo", "build", "--out", "z", "--patch-sizes", "4,x"], 2, "comma-separated integers"),
    ("zoo-build-patch-too-big", ["zoo", "build", "--out", "z", "--patch-sizes", "20"], 2, "from 1 to 14"),
    ("zoo-build-poison-rates", ["zoo", "build", "--out", "z", "--poison-rates", "0.1,2"], 2, "numbers in (0, 1)"),
    ("zoo-build-blend-alphas", ["zoo", "build", "--out", "z", "--blend-alphas", "high"], 2, "comma-separated numbers"),
    ("zoo-eval-detector", ["zoo", "evaluate", "{in}/zoo-missing", "--detector", "strip"], 2, "model detector"),
    ("threads-env", ["list"], 2, "BACKDOOR_ARENA_THREADS"),
    # ---- 3. model files -----------------------------------------------------------------------------------
    ("model-missing", ["evaluate", "missing.safetensors"], 4, "does not exist"),
    ("model-missing-info", ["info", "missing.safetensors"], 4, "does not exist"),
    ("model-dir", ["info", "{in}/adir"], 4, "folder"),
    ("model-fifo-info", ["info", "{in}/fifo.safetensors"], 4, "FIFO"),
    ("model-fifo-evaluate", ["evaluate", "{in}/fifo.safetensors"], 4, "FIFO"),
    ("model-device", ["info", "/dev/null"], 4, "device"),
    ("model-empty", ["info", "{in}/empty.safetensors"], 4, "truncated"),
    ("model-junk", ["info", "{in}/junk.safetensors"], 4, "not valid JSON"),
    ("model-truncated", ["evaluate", "{in}/truncated.safetensors"], 4, "truncated"),
    ("model-tampered", ["evaluate", "{in}/tampered.safetensors"], 4, "hash mismatch"),
    ("model-edited", ["info", "{in}/edited.safetensors"], 4, "hash mismatch"),
    ("model-edited-norm", ["evaluate", "{in}/edited-norm.safetensors"], 4, "manifest"),
    ("model-list-architecture", ["info", "{in}/listarch.safetensors"], 4, "architecture"),
    ("model-huge-header", ["info", "{in}/hugeheader.safetensors"], 4, "more than"),
    ("model-pickle", ["evaluate", "{in}/pickle.safetensors"], 4, "pickle"),
    ("model-pt", ["evaluate", "{in}/weights.pt"], 4, "pickle"),
    ("model-bare", ["info", "{in}/bare.safetensors"], 4, "without a backdoor-arena manifest"),
    ("model-newline-name", ["info", "{in}/new\nline.safetensors"], 4, "does not exist"),
    ("defend-model-missing", ["defend", "pruning", "missing.safetensors", "--out", "x.safetensors"], 4, "does not exist"),
    ("defend-model-tampered", ["defend", "fine-tuning", "{in}/tampered.safetensors", "--out", "x.safetensors"], 4, "hash mismatch"),
    ("detect-model-pickle", ["detect", "strip", "{in}/pickle.safetensors"], 4, "pickle"),
    ("scan-model-truncated", ["scan", "{in}/truncated.safetensors", "-o", "scan"], 4, "truncated"),
    ("wrap-pickle", ["wrap", "{in}/weights.pt", "--model", "badnet-mnist", "--dataset", "mnist", "--out", "w.safetensors"], 4, "pickle"),
    ("wrap-wrong-arch", ["wrap", "{in}/bare.safetensors", "--model", "badnet-mnist", "--dataset", "mnist", "--out", "w.safetensors"], 4, "missing tensors"),
    ("wrap-fifo", ["wrap", "{in}/fifo.safetensors", "--model", "badnet-mnist", "--dataset", "mnist", "--out", "w.safetensors"], 4, "FIFO"),
    ("clean-model-missing", ["attack", "pruning-aware", *T, "--clean-model", "nope.safetensors", "--out", "x.safetensors"], 4, "does not exist"),
    # ---- 6. a model whose manifest names another dataset ----------------------------------------------------
    ("defend-other-dataset", ["defend", "pruning", "{in}/gtsrbnamed.safetensors", "--out", "x.safetensors"], 5, "gtsrb"),
    ("detect-other-dataset", ["detect", "neural-cleanse", "{in}/gtsrbnamed.safetensors"], 5, "gtsrb"),
    ("evaluate-other-dataset", ["evaluate", "{in}/gtsrbnamed.safetensors"], 5, "gtsrb"),
    ("scan-other-dataset", ["scan", "{in}/gtsrbnamed.safetensors", "-o", "scan"], 5, "gtsrb"),
    # ---- 2. attack specs --------------------------------------------------------------------------------------
    ("spec-missing", ["evaluate", M, "--attack-spec", "nope.json"], 2, "does not exist"),
    ("spec-dir", ["evaluate", M, "--attack-spec", "{in}/adir"], 2, "folder"),
    ("spec-fifo", ["evaluate", M, "--attack-spec", "{in}/fifo.json"], 2, "FIFO"),
    ("spec-notjson", ["evaluate", M, "--attack-spec", "{in}/spec-notjson.json"], 2, "not valid JSON"),
    ("spec-empty", ["evaluate", M, "--attack-spec", "{in}/spec-empty.json"], 2, "empty"),
    ("spec-binary", ["evaluate", M, "--attack-spec", "{in}/spec-binary.json"], 2, "UTF-8"),
    ("spec-list", ["evaluate", M, "--attack-spec", "{in}/spec-list.json"], 2, "object"),
    ("spec-deep", ["evaluate", M, "--attack-spec", "{in}/spec-deep.json"], 2, "nested"),
    ("spec-nan", ["evaluate", M, "--attack-spec", "{in}/spec-nan.json"], 2, "NaN"),
    ("spec-target-str", ["evaluate", M, "--attack-spec", "{in}/spec-target-str.json"], 2, "target"),
    ("spec-target-numstr", ["evaluate", M, "--attack-spec", "{in}/spec-target-numstr.json"], 2, "target"),
    ("spec-rate-str", ["evaluate", M, "--attack-spec", "{in}/spec-rate-str.json"], 2, "poison_rate"),
    ("spec-classes-str", ["evaluate", M, "--attack-spec", "{in}/spec-classes-str.json"], 2, "num_classes"),
    ("spec-rate-big", ["evaluate", M, "--attack-spec", "{in}/spec-rate-big.json"], 2, "poison_rate"),
    ("spec-target-big", ["evaluate", M, "--attack-spec", "{in}/spec-target-big.json"], 2, "target"),
    ("spec-sources-str", ["evaluate", M, "--attack-spec", "{in}/spec-sources-str.json"], 2, "sources"),
    ("spec-unknown-key", ["evaluate", M, "--attack-spec", "{in}/spec-unknown-key.json"], 2, "surprise"),
    ("spec-version", ["evaluate", M, "--attack-spec", "{in}/spec-version.json"], 2, "version"),
    ("spec-attack-unknown", ["evaluate", M, "--attack-spec", "{in}/spec-attack-unknown.json"], 2, "badnets"),
    ("spec-mode", ["evaluate", M, "--attack-spec", "{in}/spec-mode.json"], 2, "mode"),
    ("spec-trigger-size", ["evaluate", M, "--attack-spec", "{in}/spec-trigger-size.json"], 2, "size"),
    ("spec-trigger-kind", ["evaluate", M, "--attack-spec", "{in}/spec-trigger-kind.json"], 2, "laser"),
    ("spec-alpha", ["evaluate", M, "--attack-spec", "{in}/spec-alpha.json"], 2, "alpha"),
    ("spec-hash", ["evaluate", M, "--attack-spec", "{in}/spec-hash.json"], 5, "--force"),
    ("spec-classes", ["evaluate", M, "--attack-spec", "{in}/spec-classes.json"], 5, "43"),
    ("defend-spec-hash", ["defend", "pruning", M, "--out", "x.safetensors", "--attack-spec", "{in}/spec-hash.json"], 5, "another model"),
    ("detect-spec-bad", ["detect", "strip", M, "--attack-spec", "{in}/spec-target-str.json"], 2, "target"),
    # ---- 3. outputs -------------------------------------------------------------------------------------------
    ("defend-out-is-input", ["defend", "pruning", M, "--out", M], 2, "also an input"),
    ("defend-out-is-spec-side", ["defend", "pruning", M, "--out", "{in}/existing.safetensors"], 2, "--overwrite"),
    ("train-out-exists", ["train", *T, "--out", "{in}/existing.safetensors"], 2, "--overwrite"),
    ("attack-out-exists", [*A, "--out", "{in}/existing.safetensors"], 2, "--overwrite"),
    ("attack-spec-exists", [*A, "--out", "{in}/model2.safetensors"], 2, "model2.attack.json"),
    ("wrap-out-exists", ["wrap", "{in}/bare.safetensors", "--model", "badnet-mnist", "--dataset", "mnist", "--out", "{in}/existing.safetensors"], 2, "--overwrite"),
    ("wrap-out-is-input", ["wrap", "{in}/existing.safetensors", "--model", "badnet-mnist", "--dataset", "mnist", "--out", "{in}/existing.safetensors", "--overwrite"], 2, "also an input"),
    ("out-is-dir", ["train", *T, "--out", "{in}/folder.safetensors"], 2, "folder"),
    ("out-under-file", ["train", *T, "--out", "{in}/afile.txt/x.safetensors"], 2, "is a file"),
    ("out-under-proc", ["train", *T, "--out", "/proc/x.safetensors"], 2, "cannot be created"),
    ("out-under-sys", ["train", *T, "--out", "/sys/x.safetensors"], 2, "cannot be created"),
    ("detect-out-file", ["detect", "strip", M, "--out", "{in}/afile.txt"], 2, "is a file"),
    ("detect-out-nonempty", ["detect", "strip", M, "--out", "{in}/nonempty"], 2, "--overwrite"),
    ("detect-fails-no-folder", ["detect", "strip", M, "--out", "newdir", "-p", "nosuch=1"], 2, "nosuch"),
    ("scan-out-file", ["scan", M, "-o", "{in}/afile.txt"], 2, "is a file"),
    ("scan-out-nonempty", ["scan", M, "-o", "{in}/nonempty"], 2, "--overwrite"),
    ("demo-out-nonempty", ["demo", "--out", "{in}/nonempty"], 2, "--overwrite"),
    ("demo-out-file", ["demo", "--out", "{in}/afile.txt"], 2, "is a file"),
    ("fl-out-file", ["fl", "run", QUICK, "--out", "{in}/afile.txt"], 2, "is a file"),
    ("fl-out-nonempty", ["fl", "run", QUICK, "--out", "{in}/nonempty"], 2, "--overwrite"),
    ("zoo-build-not-a-zoo", ["zoo", "build", "--out", "{in}/notazoo"], 2, "not a zoo folder"),
    ("zoo-build-out-file", ["zoo", "build", "--out", "{in}/afile.txt"], 2, "is a file"),
    ("compare-out-file", ["defend", "compare", "--out", "{in}/afile.txt"], 2, "is a file"),
    ("compare-model-missing", ["defend", "compare", "--out", "cmp", "--mnist-model", "nope.safetensors"], 2, "does not exist"),
    ("evaluate-data-root", ["evaluate", M, "--data-root", "nonexistent/x"], 3, "missing"),
    ("train-data-root", ["train", "--dataset", "gtsrb", "--model", "gtsrb-cnn", "--data-root", "empty", "--out", "x.safetensors"], 3, "missing"),
    # ---- 5. FL scenarios ----------------------------------------------------------------------------------
    ("fl-missing", ["fl", "validate", "nope.toml"], 2, "does not exist"),
    ("fl-dir", ["fl", "validate", "{in}/adir"], 2, "folder"),
    ("fl-fifo", ["fl", "validate", "{in}/fifo.toml"], 2, "FIFO"),
    ("fl-nonutf8", ["fl", "validate", "{in}/nonutf8.toml"], 2, "UTF-8"),
    ("fl-nested", ["fl", "validate", "{in}/nested.toml"], 2, "nested"),
    ("fl-syntax", ["fl", "validate", "{in}/badsyntax.toml"], 2, "line"),
    ("fl-nan-lr", ["fl", "validate", "{in}/nanlr.toml"], 2, "client_lr"),
    ("fl-inf-lr", ["fl", "validate", "{in}/inflr.toml"], 2, "client_lr"),
    ("fl-clients", ["fl", "validate", "{in}/clients.toml"], 2, "539"),
    ("fl-rounds", ["fl", "validate", "{in}/rounds.toml"], 2, "rounds"),
    ("fl-aggregator", ["fl", "validate", "{in}/agg.toml"], 2, "Did you mean 'fedavg'"),
    ("fl-unknown-key", ["fl", "validate", "{in}/unknownkey.toml"], 2, "roundz"),
    ("fl-override-syntax", ["fl", "validate", QUICK, "federation.rounds"], 2, "key=value"),
    ("fl-override-nan", ["fl", "validate", QUICK, "federation.client_lr=nan"], 2, "client_lr"),
    ("fl-override-key", ["fl", "validate", QUICK, "federation.roundz=3"], 2, "roundz"),
    ("fl-override-type", ["fl", "validate", QUICK, 'federation.rounds="ten"'], 2, "rounds"),
    ("fl-run-nan", ["fl", "run", "{in}/nanlr.toml", "--out", "flout"], 2, "client_lr"),
    ("fl-run-clients", ["fl", "run", "{in}/clients.toml", "--out", "flout"], 2, "539"),
    ("fl-attack-param", ["fl", "validate", QUICK, "attack.boost=-1"], 2, "boost"),
    ("fl-aggregator-param", ["fl", "validate", QUICK, 'aggregator.name="norm-clip"', "aggregator.max_norm=nan"], 2, "max_norm"),
    # ---- 7. zoo folders ----------------------------------------------------------------------------------
    ("zoo-not-a-zoo", ["zoo", "evaluate", "{in}/notazoo"], 2, "not a zoo folder"),
    ("zoo-malformed", ["zoo", "evaluate", "{in}/zoo-malformed"], 2, "line 1"),
    ("zoo-list-line", ["zoo", "evaluate", "{in}/zoo-list"], 2, "JSON object"),
    ("zoo-traversal", ["zoo", "evaluate", "{in}/zoo-traversal"], 2, "no path"),
    ("zoo-empty", ["zoo", "evaluate", "{in}/zoo-empty"], 2, "no records"),
    ("zoo-nan", ["zoo", "evaluate", "{in}/zoo-nan"], 2, "NaN"),
    ("zoo-dup", ["zoo", "evaluate", "{in}/zoo-dup"], 2, "twice"),
    ("zoo-missing-model", ["zoo", "evaluate", "{in}/zoo-missing"], 4, "does not exist"),
    ("zoo-badtype", ["zoo", "evaluate", "{in}/zoo-badtype"], 2, "backdoored"),
    ("zoo-build-resume-bad", ["zoo", "build", "--out", "{in}/zoo-malformed"], 2, "line 1"),
    ("device-train", ["train", *T, "--device", "cuda:99", "--out", "x.safetensors"], 2, "--device cuda:99"),
    ("device-attack", [*A, "--device", "cuda:99", "--out", "x.safetensors"], 2, "--device cuda:99"),
    ("device-demo", ["demo", "--device", "cuda:99", "--out", "dm"], 2, "--device cuda:99"),
    ("device-defend", ["defend", "fine-tuning", M, "--out", "r.safetensors", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-defend-compare", ["defend", "compare", "--out", "cmp", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-detect", ["detect", "mntd", M, "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-detect-cpu-only", ["detect", "neural-cleanse", M, "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-scan", ["scan", M, "-o", "scan", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-scan-zoo", ["scan-zoo", "{in}/nonempty", "-o", "sz", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-zoo-build", ["zoo", "build", "--out", "zb", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-fl-run", ["fl", "run", QUICK, "--out", "flout", "--device", "cuda:99"], 2, "--device cuda:99"),
    ("device-transfer", ["transfer", M, "--attack-spec", S, "--task", "parity", "--device", "cuda:99"], 2, "--device cuda:99"),
]


@pytest.fixture()
def workdir(tmp_path, inputs, monkeypatch):
    """A fresh copy of the inputs under tmp_path/in (plus FIFOs), the cwd at tmp_path, every download mirror
    pointing at a dead local port (no test reaches the internet, and an offline error comes at once)."""
    shutil.copytree(inputs, tmp_path / "in", symlinks=True)
    for name in ("fifo.safetensors", "fifo.json", "fifo.toml", "fifo.png"):
        os.mkfifo(tmp_path / "in" / name)
    (tmp_path / "in" / "model2.attack.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    dead = "http://127.0.0.1:9/"
    for folder in mnist.URLS:
        monkeypatch.setitem(mnist.URLS, folder, (dead,))
    monkeypatch.setattr(cifar10, "URLS", (dead + cifar10.ARCHIVE,))
    monkeypatch.setattr(gtsrb, "BASE_URL", dead)
    return tmp_path


def test_the_table_covers_every_group_and_is_large():
    assert len(CASES) >= 150 and len({c[0] for c in CASES}) == len(CASES)
    commands = {c[1][0] for c in CASES}
    assert {"train", "attack", "evaluate", "info", "wrap", "defend", "detect", "scan", "zoo", "fl", "demo"} <= commands


@pytest.mark.parametrize("name, args, code, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(name, args, code, message, workdir, capsys, monkeypatch):
    if name == "threads-env":
        monkeypatch.setenv("BACKDOOR_ARENA_THREADS", "many")
    args = [a.replace("{in}", str(workdir / "in")) for a in args]
    before = _snapshot(workdir)
    got, out, err = run_cli(args, capsys, monkeypatch)
    assert got == code, f"exit {got}: {err}{out[-500:]}"
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert message in err, err
    assert _snapshot(workdir) == before  # nothing written, created or replaced


def test_defend_refuses_its_own_input_before_any_work(workdir, capsys, monkeypatch):
    model = workdir / "in" / "model.safetensors"
    before = model.read_bytes()
    spent = []
    monkeypatch.setattr("backdoor_arena.api.defending.load_model", lambda *a, **k: spent.append(1))
    code, _, err = run_cli(["defend", "pruning", str(model), "--out", str(model), "--overwrite"], capsys, monkeypatch)
    assert code == 2 and "also an input" in err and not spent  # refused before the model was even read
    assert model.read_bytes() == before


def test_overwrite_is_needed_to_replace_an_output(workdir, capsys, monkeypatch, tiny_mnist_model):
    model = workdir / "in" / "model.safetensors"
    out = workdir / "repaired.safetensors"
    args = ["defend", "pruning", str(model), "--out", str(out), "-q", "--json", "-p", "step=32"]  # coarse: fast
    code, first, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    written = out.read_bytes()
    code, _, err = run_cli(args, capsys, monkeypatch)
    assert code == 2 and "--overwrite" in err and out.read_bytes() == written
    out.write_bytes(b"stale")
    code, _, err = run_cli([*args, "--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    # replaced by the same (deterministic) weights; the manifest differs only in its wall time
    assert load_model(out).manifest.tensors_sha256 == json.loads(first)["tensors_sha256"]


def test_a_bare_command_or_group_prints_help_without_a_traceback(capsys, monkeypatch):
    for args in ([], ["defend"], ["detect"], ["zoo"], ["fl"], ["attack"]):
        code, out, err = run_cli(args, capsys, monkeypatch)
        assert code == 0 and "Usage" in out and "Traceback" not in out + err, (args, err)


def test_an_unexpected_exception_is_one_line_naming_the_traceback_file(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def broken(*args, **kwargs):
        raise RuntimeError("a planted bug")

    monkeypatch.setattr("backdoor_arena.api.info", broken)
    code, _, err = run_cli(["info", "x.safetensors"], capsys, monkeypatch)
    assert code == 1 and err.count("\n") == 1 and "this is a bug" in err and "a planted bug" in err
    crash = [p for p in tmp_path.iterdir() if p.name.startswith("backdoor-arena-crash-")]
    assert len(crash) == 1 and "Traceback" in crash[0].read_text() and str(crash[0]) in err
    code, _, err = run_cli(["info", "x.safetensors", "--debug"], capsys, monkeypatch)
    assert code == 1 and "Traceback" in err and "a planted bug" in err


def test_interrupt_exits_130_with_nothing_half_written(workdir, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("backdoor_arena.api.training.fit", interrupted)
    before = _snapshot(workdir)
    code, _, err = run_cli(["train", *T, "--epochs", "1", "--out", "x.safetensors", "-q"], capsys, monkeypatch)
    assert code == 130 and err == "interrupted\n"
    assert _snapshot(workdir) == before


def test_stdout_to_a_full_device_is_one_line(tiny_mnist_model):
    import subprocess
    import sys

    model, _ = tiny_mnist_model
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "backdoor_arena", "info", str(model)], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "No space left" in r.stderr, r.stderr


def test_dataset_names_are_matched_case_insensitively():
    from backdoor_arena.data import dataset_info

    assert dataset_info("MNIST").name == "mnist"
