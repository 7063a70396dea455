import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from backdoor_arena.errors import ConfigError, ModelFileError
from backdoor_arena.modelfile import METADATA_KEY, Manifest, load_model, read_manifest, save_model, tensors_sha256
from backdoor_arena.models import architecture_args, build_model
from tests.helpers import TINY_RGB_INFO

ARGS = architecture_args(TINY_RGB_INFO)


def make_manifest(**over):
    base = dict(architecture="gtsrb-cnn", arch_args=ARGS, dataset="tiny-rgb", input_shape=[3, 16, 16],
                num_classes=3, class_names=["a", "b", "c"], training={"seed": 1})
    return Manifest(**{**base, **over})


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = build_model("gtsrb-cnn", ARGS).eval()
    path = tmp_path / "m.safetensors"
    manifest = save_model(path, model, make_manifest())
    return path, model, manifest


def rewrite(path, tensors=None, manifest=None):
    """Write a safetensors file with the given tensors and raw manifest JSON (bypassing save_model)."""
    save_file(tensors, str(path), metadata={METADATA_KEY: manifest})


def resealed(fields: dict, tensors: dict) -> str:
    """Manifest JSON with both hashes recomputed: what someone who edits a file AND recomputes the hashes
    writes. The integrity hash cannot stop that; the consistency checks behind it must."""
    fields = {k: v for k, v in fields.items() if k not in ("manifest_sha256", "tensors_sha256")}
    return Manifest(**fields).sealed(tensors_sha256(tensors)).to_json()


def test_round_trip_same_outputs_and_manifest(saved):
    path, model, manifest = saved
    loaded = load_model(path)
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(loaded.model(x), model(x))
    assert loaded.manifest == manifest
    assert not loaded.model.training
    assert len(manifest.tensors_sha256) == 64
    assert read_manifest(path).training == {"seed": 1}


def test_file_is_a_safetensors_with_json_manifest_in_header(saved):
    path, _, _ = saved
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    manifest = json.loads(header["__metadata__"][METADATA_KEY])
    assert manifest["format_version"] == 2 and len(manifest["manifest_sha256"]) == 64
    assert manifest["pixel_range"] == [0.0, 1.0]
    assert manifest["architecture"] == "gtsrb-cnn"
    assert set(header) - {"__metadata__"} == set(build_model("gtsrb-cnn", ARGS).state_dict())


def test_unknown_architecture(saved, tmp_path):
    path, model, manifest = saved
    bad = tmp_path / "bad.safetensors"
    m = json.loads(manifest.to_json())
    m["architecture"] = "vgg99"
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    rewrite(bad, tensors, resealed(m, tensors))
    with pytest.raises(ModelFileError, match="unknown architecture 'vgg99'"):
        load_model(bad)


@pytest.mark.parametrize("change, message", [
    ("missing", "missing tensors"), ("extra", "unexpected tensors"), ("shape", "has shape"),
])
def test_tensor_set_mismatches(saved, tmp_path, change, message):
    path, model, manifest = saved
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    if change == "missing":
        tensors.pop("head.5.bias")
    elif change == "extra":
        tensors["head.9.weight"] = torch.zeros(2)
    else:
        tensors["head.5.bias"] = torch.zeros(7)
    bad = tmp_path / "bad.safetensors"
    rewrite(bad, tensors, resealed(json.loads(manifest.to_json()), tensors))
    with pytest.raises(ModelFileError, match=message):
        load_model(bad)


def test_hash_mismatch_when_weights_are_tampered(saved, tmp_path):
    path, model, manifest = saved
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    tensors["head.5.bias"][0] += 1.0  # a planted change, same shapes
    bad = tmp_path / "tampered.safetensors"
    rewrite(bad, tensors, manifest.to_json())
    with pytest.raises(ModelFileError, match="hash mismatch"):
        load_model(bad)


@pytest.mark.parametrize("keep", [0, 5, 100, -10])
def test_truncated_file(saved, tmp_path, keep):
    path, _, _ = saved
    raw = path.read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(raw[:keep] if keep >= 0 else raw[:keep])
    with pytest.raises(ModelFileError, match="truncated"):
        load_model(bad)


def test_pickle_file_is_refused_with_conversion_advice(tmp_path):
    pt = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, pt)
    with pytest.raises(ModelFileError, match=r"pickle.*weights_only=True.*backdoor-arena wrap"):
        load_model(pt)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ModelFileError, match="pickle"):
        load_model(legacy)


def test_missing_file_folder_and_bare_weights(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        load_model(tmp_path)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(ModelFileError, match="without a backdoor-arena manifest"):
        load_model(bare)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(junk)


def test_corrupt_manifest_and_future_version(saved, tmp_path):
    path, model, manifest = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = tmp_path / "bad.safetensors"
    rewrite(bad, tensors, "{not json")
    with pytest.raises(ModelFileError, match="not valid JSON"):
        load_model(bad)
    m = json.loads(manifest.to_json())
    m["format_version"] = 99
    rewrite(bad, tensors, json.dumps(m))
    with pytest.raises(ModelFileError, match="version 99"):
        load_model(bad)


def test_save_is_atomic_and_checks_suffix(tmp_path):
    model = build_model("gtsrb-cnn", ARGS)
    with pytest.raises(ConfigError, match=".safetensors"):
        save_model(tmp_path / "m.pt", model, make_manifest())
    save_model(tmp_path / "m.safetensors", model, make_manifest())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


# ---- integrity: one hash over the manifest and the tensors (issue 11) -------------------------------------
@pytest.mark.parametrize("field, value", [
    ("arch_args", {**ARGS, "mean": [0.1, 0.1, 0.1]}), ("arch_args", {**ARGS, "std": [1.0, 1.0, 1.0]}),
    ("class_names", ["x", "b", "c"]), ("num_classes", 4), ("dataset", "gtsrb"), ("input_shape", [3, 16, 17]),
    ("training", {"seed": 2}), ("pixel_range", [0.0, 255.0]), ("architecture", "badnet-mnist"),
    ("tensors_sha256", "0" * 64),
])
def test_editing_any_manifest_field_is_refused(saved, tmp_path, field, value):
    path, model, manifest = saved
    m = json.loads(manifest.to_json())
    m[field] = value
    bad = tmp_path / "edited.safetensors"
    rewrite(bad, {k: v.contiguous() for k, v in model.state_dict().items()}, json.dumps(m))
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    assert "\n" not in str(err.value) and ("hash mismatch" in str(err.value) or "pixel_range" in str(err.value))


def test_flipping_any_tensor_byte_is_refused(saved, tmp_path):
    path, _, _ = saved
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    start = 8 + n
    for offset in torch.linspace(start, len(raw) - 1, 12).long().tolist():
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        bad = tmp_path / "flip.safetensors"
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ModelFileError, match="hash mismatch"):
            load_model(bad)


@pytest.mark.parametrize("field, value, message", [
    ("num_classes", 4, "contradicts itself"), ("class_names", ["a", "b"], "class names"),
    ("dataset", "imagenet", "does not know"), ("input_shape", [1, 16, 16], "contradicts itself"),
    ("arch_args", {**ARGS, "std": [0.0, 1.0, 1.0]}, "positive"),
    ("arch_args", {**ARGS, "mean": [0.5, 0.5]}, "one per channel"),
])
def test_a_resealed_but_inconsistent_manifest_is_refused(saved, tmp_path, field, value, message):
    """An editor who recomputes the hashes still cannot make the manifest contradict itself or the network."""
    path, model, manifest = saved
    m = json.loads(manifest.to_json())
    m[field] = value
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    bad = tmp_path / "resealed.safetensors"
    rewrite(bad, tensors, resealed(m, tensors))
    with pytest.raises(ModelFileError, match=message):
        load_model(bad)


@pytest.mark.parametrize("field, value", [
    ("architecture", ["gtsrb-cnn"]), ("num_classes", "3"), ("input_shape", [3, 16]), ("class_names", "abc"),
    ("training", []), ("format_version", "2"), ("arch_args", None), ("tensors_sha256", "xyz"),
])
def test_wrong_types_in_the_manifest_are_one_line_errors(saved, tmp_path, field, value):
    path, model, manifest = saved
    m = json.loads(manifest.to_json())
    m[field] = value
    bad = tmp_path / "typed.safetensors"
    rewrite(bad, {k: v.contiguous() for k, v in model.state_dict().items()}, json.dumps(m))
    with pytest.raises(ModelFileError) as err:
        load_model(bad)
    assert "\n" not in str(err.value)


def _header_file(path, header: dict, data: bytes = b"") -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "v": {"dtype": "F32", "shape": [2],
      "data_offsets": [4, 12]}}, bytes(12), "overlap"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(8), "needs 8"),
    ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, bytes(8), "dtype"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "shape"),
    ({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}, bytes(4), "shape"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, bytes(4), "malformed"),
    ({"__metadata__": {"backdoor_arena": 5}}, b"", "__metadata__"),
    ({f"t{i}": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]} for i in range(5000)}, b"", "more than"),
])
def test_hostile_headers_are_refused_before_allocation(tmp_path, header, data, message):
    bad = tmp_path / "hostile.safetensors"
    _header_file(bad, header, data)
    with pytest.raises(ModelFileError, match=message):
        load_model(bad)


def test_huge_header_length_and_duplicate_keys(tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    with pytest.raises(ModelFileError, match="more than"):
        load_model(bad)
    text = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    bad.write_bytes(struct.pack("<Q", len(text)) + text + b"\x00")
    with pytest.raises(ModelFileError, match="twice"):
        load_model(bad)


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    import os

    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(ModelFileError, match="FIFO"):
        load_model(fifo)
    with pytest.raises(ModelFileError, match="FIFO"):
        read_manifest(fifo)


def test_format_1_files_are_refused_with_the_way_out(saved, tmp_path):
    path, model, manifest = saved
    m = json.loads(manifest.to_json())
    m["format_version"] = 1
    bad = tmp_path / "old.safetensors"
    rewrite(bad, {k: v.contiguous() for k, v in model.state_dict().items()}, json.dumps(m))
    with pytest.raises(ModelFileError, match="backdoor-arena wrap"):
        load_model(bad)


# ---- fuzz: structured mutations of a valid file (hypothesis; the long run is benchmarks/fuzz_modelfile.py) --
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.fuzz_modelfile import MUTATIONS, check_outcome, mutate  # noqa: E402

_VALID: list = []


def _valid_file(tmp_dir) -> tuple[bytes, dict]:
    """A valid model file's bytes and tensors, made once (not a fixture argument: hypothesis would print it)."""
    if not _VALID:
        torch.manual_seed(0)
        model = build_model("gtsrb-cnn", ARGS).eval()
        save_model(tmp_dir / "valid.safetensors", model, make_manifest())
        _VALID.append(((tmp_dir / "valid.safetensors").read_bytes(), {k: v.clone() for k, v in model.state_dict().items()}))
    return _VALID[0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_load_unchanged_or_fail_with_model_file_error(tmp_path, data):
    raw, tensors = _valid_file(tmp_path)
    kind = data.draw(st.sampled_from(MUTATIONS))
    seed = data.draw(st.integers(0, 2**32 - 1))
    mutated = mutate(raw, kind, seed)
    outcome = check_outcome(mutated, tensors, tmp_path / "fuzz.safetensors")
    assert outcome in ("refused", "unchanged"), outcome
