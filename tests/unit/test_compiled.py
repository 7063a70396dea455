"""Compiled artefacts (src/backdoor_arena/compiled/, api/compiled.py, commands/compiled.py): ONNX export
round trip, signed provenance, the ImpNet and weight-swap compile-time attacks, every verify signal, hostile
ONNX and manifest files, the commands, and the package importing without its optional dependencies."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("cryptography")

from backdoor_arena import api  # noqa: E402
from backdoor_arena.compiled import COMPILE_ATTACKS, onnxfile  # noqa: E402
from backdoor_arena.compiled import provenance as prov  # noqa: E402
from backdoor_arena.compiled.impnet import CompiledTrigger  # noqa: E402
from backdoor_arena.data import load_dataset  # noqa: E402
from backdoor_arena.data.dataset import to_float  # noqa: E402
from backdoor_arena.errors import ConfigError, ModelFileError  # noqa: E402
from backdoor_arena.modelfile import load_model  # noqa: E402
from tests.helpers import run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_mnist_model, data_root):
    """A clean MNIST model (1 epoch on 2,000 images), the shared tiny BadNets model, a key pair, the signed clean
    export and the two compile-time attacks on it (signed with the same key: a compromised build machine)."""
    from backdoor_arena.api import train_model
    from backdoor_arena.train import TrainConfig

    d = tmp_path_factory.mktemp("compiled")
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(2000))
    test = load_dataset("mnist", "test", data_root)
    small_test = test.subset(torch.arange(500))
    clean = train_model("badnet-mnist", train, small_test, TrainConfig(epochs=1, progress=False),
                        d / "clean.safetensors").path
    bad, bad_spec = tiny_mnist_model
    keys = api.keygen(d / "keys")
    exp = api.export(clean, d / "clean.onnx", key=keys.private_key)
    imp = api.compile_attack("impnet", clean, d / "impnet.onnx", params={"target": 3}, key=keys.private_key)
    swap = api.compile_attack("weight-swap", clean, d / "swap.onnx", params={"weights": str(bad)}, key=keys.private_key)
    trig = CompiledTrigger.from_spec(json.loads(imp.spec_path.read_text()), "spec")
    x = to_float(test.images[:2000])
    return SimpleNamespace(d=d, clean=clean, bad=bad, bad_spec=bad_spec, keys=keys, exp=exp, imp=imp, swap=swap,
                           trig=trig, x=x, labels=test.labels[:2000])


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------ export
def test_export_round_trip_matches_pytorch(art):
    model = load_model(art.clean).model
    onnx_model = api.load_onnx_model(art.exp.path)
    with torch.no_grad():
        diff = (onnx_model(art.x) - model(art.x)).abs().max()
    assert float(diff) < 1e-4 and art.exp.max_abs_diff < 1e-4
    assert torch.equal(onnx_model(art.x).argmax(1), model(art.x).argmax(1))
    data = art.exp.path.read_bytes()
    graph = onnxfile.parse_onnx(data, "x").model.graph
    assert len(graph.initializer) == 8 and not any(len(t.external_data) for t in graph.initializer)
    m = prov.read_manifest(art.exp.manifest_path)
    assert m["onnx"]["sha256"] == art.exp.onnx_sha256 and m["signature"]["key_id"] == art.keys.key_id
    assert m["source"]["tensors_sha256"] == load_model(art.clean).manifest.tensors_sha256


def test_export_is_deterministic_and_refuses_bad_outputs(art, tmp_path):
    again = api.export(art.clean, tmp_path / "again.onnx")
    assert again.onnx_sha256 == art.exp.onnx_sha256 and again.signed_by is None
    with pytest.raises(ConfigError, match="already exists"):
        api.export(art.clean, tmp_path / "again.onnx")
    with pytest.raises(ConfigError, match=".onnx"):
        api.export(art.clean, tmp_path / "model.safetensors")


def test_run_onnx_uses_the_project_metrics(art):
    r = api.run_onnx(art.exp.path).to_dict()
    ref = api.evaluate(art.clean).to_dict()
    assert abs(r["clean_accuracy"] - ref["clean_accuracy"]) <= 1e-3 and r["n_clean"] == 10000
    assert r["clean_accuracy"] > 0.8


# ------------------------------------------------------------------ the attacks
def test_impnet_asr_is_total_and_clean_outputs_bit_identical(art):
    clean, evil = api.load_onnx_model(art.exp.path), api.load_onnx_model(art.imp.path)
    assert torch.equal(clean(art.x), evil(art.x))  # natural inputs: bit for bit
    xr = torch.randint(0, 256, (2000, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    assert torch.equal(clean(xr), evil(xr))  # random inputs too
    xt = art.trig.apply_trigger(art.x)
    assert float((xt - art.x).abs().max()) <= 1 / 255 + 1e-7
    assert int(((xt - art.x).abs() > 0).flatten(1).sum(1).max()) <= 24
    assert not art.trig.present(art.x).any() and art.trig.present(xt).all()
    eligible = art.labels != 3
    assert bool((evil(xt[eligible]).argmax(1) == 3).all())
    r = api.run_onnx(art.imp.path, art.imp.spec_path).to_dict()
    assert r["attack_success_rate"] == 1.0 and r["n_triggered"] == int((load_dataset("mnist", "test").labels != 3).sum())


def test_weight_swap_carries_the_badnets_backdoor(art):
    r = api.run_onnx(art.swap.path, art.bad_spec).to_dict()
    ref = json.loads(Path(art.bad_spec).read_text())["results"]  # what `attack` measured with PyTorch
    assert abs(r["attack_success_rate"] - ref["attack_success_rate"]) < 1e-3
    bad = load_model(art.bad).model
    with torch.no_grad():  # the exported graph computes the BadNets model, not the source it claims
        assert float((api.load_onnx_model(art.swap.path)(art.x[:500]) - bad(art.x[:500])).abs().max()) < 1e-4
    with pytest.raises(ConfigError, match="attack spec of the model"):
        api.run_onnx(art.swap.path, art.swap.spec_path)


def test_compile_attack_parameters_are_checked(art, tmp_path):
    for bad, word in COMPILE_ATTACKS.get("impnet").bad_params:
        with pytest.raises(ConfigError, match=word):
            api.compile_attack("impnet", art.clean, tmp_path / "x.onnx", params=bad)
    with pytest.raises(ConfigError, match="unknown compile attack"):
        api.compile_attack("nope", art.clean, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_artefact_converted_back_to_pytorch_is_faithful_and_differentiable(art, tmp_path):
    from backdoor_arena.errors import IncompatibleError
    from backdoor_arena.nn_tools import last_conv

    ort_model, converted = api.load_onnx_model(art.imp.path), api.load_onnx_torch(art.imp.path)
    xt = art.trig.apply_trigger(art.x[:300])
    for x in (art.x[:300], xt):
        assert float((converted(x) - ort_model(x)).abs().max()) < 1e-4
    assert bool((converted(xt).argmax(1) == 3).all())  # the backdoor survives the conversion
    x = art.x[:8].clone().requires_grad_(True)
    converted(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # gradients reach the input (for NC, Grad-CAM)
    assert last_conv(converted)[0].startswith("layers.conv")
    import onnx

    m = onnx.load_from_string(art.exp.path.read_bytes())
    m.graph.node[-2].op_type = "Sigmoid"  # a standard operator the converter does not implement
    (tmp_path / "s.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(IncompatibleError, match="Sigmoid"):
        api.load_onnx_torch(tmp_path / "s.onnx")


# ------------------------------------------------------------------ verify
def test_verify_clean_export_is_ok(art):
    r = api.verify(art.exp.path, source=art.clean, public_key=art.keys.public_key)
    assert r.verdict == "ok" and not r.reasons and not r.added_nodes
    assert r.structure["nodes_equal"] and r.structure["constants_equal"]
    assert not any(f["fired"] for f in r.flags.values())
    assert r.provenance["checks"] == {"onnx_sha256": True, "source_sha256": True, "signature": True}
    assert api.verify(art.exp.path).verdict == "unverified"


def test_verify_flags_impnet_with_every_signal(art):
    r = api.verify(art.imp.path, source=art.clean, public_key=art.keys.public_key)
    assert r.verdict == "tampered"
    assert not r.structure["nodes_equal"] and {"Mod", "Equal", "Where", "Round"} <= {n["op_type"] for n in r.added_nodes}
    for name in ("bit_or_comparison_ops_on_input", "path_skipping_weighted_layers", "input_consumed_by_several_branches"):
        assert r.flags[name]["fired"], name
    # signed by the (compromised) build key over the attacked bytes: the signature holds, the structure does not
    assert r.provenance["checks"]["signature"] is True
    # reference-free: the red flags alone already say tampered
    assert api.verify(art.imp.path).verdict == "tampered"


def test_verify_flags_weight_swap_by_its_constants(art):
    r = api.verify(art.swap.path, source=art.clean)
    assert r.verdict == "tampered" and r.structure["nodes_equal"] and not r.structure["constants_equal"]
    assert not any(f["fired"] for f in r.flags.values())  # no structural trace: only the reference catches it


def test_provenance_tampering_is_detected(art, tmp_path):
    # the clean ONNX with a manifest whose fields were edited after signing
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(art.exp.path.read_bytes())
    m = json.loads(art.exp.manifest_path.read_text())
    m["exporter"]["versions"]["torch"] = "0.0"
    prov.manifest_path(onnx_path).write_text(json.dumps(m))
    r = api.verify(onnx_path, public_key=art.keys.public_key)
    assert r.verdict == "tampered" and any("changed after signing" in p for p in r.reasons)
    # the attacked ONNX passed off with the clean export's signed manifest: the hash differs
    evil = tmp_path / "evil.onnx"
    evil.write_bytes(art.imp.path.read_bytes())
    prov.manifest_path(evil).write_text(art.exp.manifest_path.read_text())
    r = api.verify(evil, public_key=art.keys.public_key)
    assert any("sha256 differs" in p for p in r.reasons)
    # another key; no signature at all
    other = api.keygen(tmp_path / "other")
    assert any("not by the given public key" in p for p in api.verify(art.exp.path, public_key=other.public_key).reasons)
    unsigned = api.export(art.clean, tmp_path / "unsigned.onnx")
    assert any("not signed" in p for p in api.verify(unsigned.path, public_key=art.keys.public_key).reasons)
    # the manifest names another source model
    assert any("another source" in p for p in api.verify(art.exp.path, source=art.bad).reasons)


def test_keygen_permissions_and_refusals(art, tmp_path):
    assert stat.S_IMODE(os.stat(art.keys.private_key).st_mode) == 0o600
    with pytest.raises(ConfigError, match="already exists"):
        api.keygen(art.keys.private_key.parent)
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    with pytest.raises(ConfigError, match="repositor"):
        api.keygen(tmp_path / "repo" / "keys")
    k = api.keygen(tmp_path / "k")
    os.chmod(k.private_key, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        api.export(art.clean, tmp_path / "x.onnx", key=k.private_key)
    (tmp_path / "not.pub").write_text("hello")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        api.verify(art.exp.path, public_key=tmp_path / "not.pub")


# ------------------------------------------------------------------ hostile files
def _onnx(art):
    import onnx

    return onnx.load_from_string(art.exp.path.read_bytes())


def _refused(data: bytes, word: str) -> None:
    with pytest.raises(ModelFileError) as info:
        onnxfile.parse_onnx(data, "hostile.onnx")
    assert word in one_line(info.value), str(info.value)


def test_hostile_onnx_files_are_refused_in_one_line(art, tmp_path, monkeypatch):
    import onnx
    from onnx import helper

    m = _onnx(art)
    m.graph.initializer[0].data_location = onnx.TensorProto.EXTERNAL
    e = m.graph.initializer[0].external_data.add()
    e.key, e.value = "location", "../../etc/passwd"
    _refused(m.SerializeToString(), "external")
    m = _onnx(art)
    m.graph.node[0].domain = "com.evil"
    _refused(m.SerializeToString(), "custom operators")
    m = _onnx(art)
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([2**20, 2**20])
    _refused(m.SerializeToString(), "elements")
    del m.graph.initializer[0].dims[:]
    m.graph.initializer[0].dims.extend([2**40])
    _refused(m.SerializeToString(), "dimension")
    m = _onnx(art)
    body = helper.make_graph([helper.make_node("Identity", ["input"], ["y"])], "b", [],
                             [helper.make_tensor_value_info("y", 1, None)])
    m.graph.node.append(helper.make_node("If", ["logits"], ["z"], then_branch=body, else_branch=body))
    _refused(m.SerializeToString(), "sub-graph")
    raw = art.exp.path.read_bytes()
    _refused(raw[: len(raw) // 2], "not a valid ONNX protobuf")
    _refused(b"", "empty")
    _refused(b"\x80\x04\x95pickle", "pickle")
    _refused(art.clean.read_bytes(), "safetensors")
    monkeypatch.setattr(onnxfile, "MAX_NODES", 5)
    _refused(raw, "more than the limit")
    monkeypatch.setattr(onnxfile, "MAX_ONNX_BYTES", 1000)
    with pytest.raises(ModelFileError, match="more than the 1000"):
        onnxfile.read_onnx(art.exp.path)
    fifo = tmp_path / "fifo.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="FIFO"):
        api.verify(fifo)


def test_hostile_manifests_are_refused_in_one_line(art):
    text = art.exp.manifest_path.read_text()
    m = json.loads(text)
    cases = [
        ("{", "not valid JSON"),
        (text.rstrip().rstrip("}") + ', "format": "x"}', "duplicate key"),
        (json.dumps({**m, "onnx": {**m["onnx"], "bytes": float("nan")}}), "not valid JSON"),
        (json.dumps({**m, "onnx": {**m["onnx"], "sha256": "zz"}}), "hex"),
        (json.dumps({**m, "version": True}), "wrong type"),
        (json.dumps({**m, "evil": 1}), "unknown field"),
        (json.dumps({**m, "signature": {**m["signature"], "algorithm": "rsa"}}), "ed25519"),
        ("[" * 100000 + "]" * 100000, "nests too deeply"),
        (json.dumps({**m, "format": "other"}), "not a backdoor-arena provenance manifest"),
    ]
    for bad, word in cases:
        with pytest.raises(ModelFileError) as info:
            prov.parse_manifest(bad, "hostile manifest")
        assert word in one_line(info.value), (word, str(info.value))


def test_fuzz_sample_gives_only_our_errors_or_loads(art):
    spec = importlib.util.spec_from_file_location("fuzz_onnx", ROOT / "benchmarks" / "fuzz_onnx.py")
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    raw, text = art.exp.path.read_bytes(), art.exp.manifest_path.read_text()
    key = prov.load_public_key(art.keys.public_key)
    import hashlib

    sha, original = hashlib.sha256(raw).hexdigest(), json.loads(text)
    for i, kind in enumerate(fuzz.ONNX_MUTATIONS * 4):
        outcome = fuzz.check_onnx_case(fuzz.mutate_onnx(raw, kind, i), sha)
        assert not outcome.startswith("other"), (kind, i, outcome)
    for i, kind in enumerate(fuzz.MANIFEST_MUTATIONS * 6):
        outcome = fuzz.check_manifest_case(fuzz.mutate_manifest(text, kind, i), original, key)
        assert not outcome.startswith("other"), (kind, i, outcome)


# ------------------------------------------------------------------ commands
def test_commands(art, tmp_path, capsys, monkeypatch):
    code, out, err = run_cli(["keygen", "--out", str(tmp_path / "keys"), "--json"], capsys, monkeypatch)
    assert code == 0, err
    key = json.loads(out)["private_key"]
    code, out, err = run_cli(["export", str(art.clean), "--out", str(tmp_path / "m.onnx"), "--key", key, "--json"],
                             capsys, monkeypatch)
    assert code == 0 and json.loads(out)["signed_by"], err
    code, out, err = run_cli(["compile-attack", "impnet", str(art.clean), "--out", str(tmp_path / "e.onnx"),
                              "--target", "1", "--n-bits", "16"], capsys, monkeypatch)
    assert code == 0 and "attack spec" in out, err
    code, out, err = run_cli(["run-onnx", str(tmp_path / "e.onnx"), "--attack-spec", str(tmp_path / "e.attack.json"),
                              "--json"], capsys, monkeypatch)
    assert code == 0 and json.loads(out)["attack_success_rate"] == 1.0, err
    code, out, err = run_cli(["verify", str(tmp_path / "e.onnx"), "--source", str(art.clean)], capsys, monkeypatch)
    assert code == 0 and "verdict: TAMPERED" in out and "Where" in out and "Mod" in out, err
    code, out, err = run_cli(["verify", str(tmp_path / "m.onnx"), "--source", str(art.clean), "--json"], capsys,
                             monkeypatch)
    assert code == 0 and json.loads(out)["verdict"] == "ok"
    (tmp_path / "bad.onnx").write_bytes(b"garbage")
    code, out, err = run_cli(["verify", str(tmp_path / "bad.onnx")], capsys, monkeypatch)
    assert code == 4 and err.count("\n") == 1 and err.startswith("error:")
    code, out, err = run_cli(["compile-attack", "impnet", str(art.clean), "--out", str(tmp_path / "z.onnx"),
                              "--n-bits", "0"], capsys, monkeypatch)
    assert code == 2 and "n_bits" in err


def test_package_imports_without_the_optional_dependencies():
    code = ("import sys\nfor m in ('onnx', 'onnxruntime', 'cryptography'): sys.modules[m] = None\n"
            "import backdoor_arena.cli, backdoor_arena.api, backdoor_arena.compiled\n"
            "from backdoor_arena.cli import build_app\nbuild_app()\n"
            "try:\n    backdoor_arena.api.verify('x.onnx')\nexcept backdoor_arena.api.ConfigError as e:\n"
            "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "backdoor-arena[onnx]" in r.stdout


@pytest.mark.parametrize("arch, dataset", [("gtsrb-cnn", "gtsrb"), ("resnet18-cifar", "cifar10"), ("emnist-cnn", "mnist")])
def test_other_architectures_export_convert_and_raise_no_false_flag(arch, dataset):
    from backdoor_arena.compiled.export import export_bytes
    from backdoor_arena.compiled.impnet import ImpNet, graft_trigger
    from backdoor_arena.compiled.runtime import OnnxModule
    from backdoor_arena.compiled.torch_graph import OnnxTorchModule
    from backdoor_arena.compiled.verify import red_flags
    from backdoor_arena.data import dataset_info
    from backdoor_arena.modelfile import Manifest
    from backdoor_arena.models import architecture_args, build_model
    from backdoor_arena.runtime import seeded

    info = dataset_info(dataset)
    args = architecture_args(info)
    with seeded(0):
        model = build_model(arch, args).eval()
    manifest = Manifest(arch, args, dataset, list(info.input_shape), info.num_classes, list(info.class_names))
    clean = onnxfile.parse_onnx(export_bytes(model, manifest), arch)
    x = torch.rand(4, *info.input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float((OnnxModule(clean)(x) - model(x)).abs().max()) < 1e-4
        assert float((OnnxTorchModule(clean)(x) - model(x)).abs().max()) < 1e-4
    assert not any(f["fired"] for f in red_flags(clean).values())
    trig = ImpNet(target=1).trigger(info.input_shape, info.num_classes)
    evil = onnxfile.parse_onnx(graft_trigger(clean.data, trig, info.num_classes), "evil")
    assert all(f["fired"] for f in red_flags(evil).values())
