import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from backdoor_arena.errors import ConfigError, ModelFileError
from backdoor_arena.modelfile import METADATA_KEY, Manifest, load_model, read_manifest, save_model
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
    assert manifest["format_version"] == 1
    assert manifest["pixel_range"] == [0.0, 1.0]
    assert manifest["architecture"] == "gtsrb-cnn"
    assert set(header) - {"__metadata__"} == set(build_model("gtsrb-cnn", ARGS).state_dict())


def test_unknown_architecture(saved, tmp_path):
    path, model, manifest = saved
    bad = tmp_path / "bad.safetensors"
    m = json.loads(manifest.to_json())
    m["architecture"] = "vgg99"
    rewrite(bad, {k: v.contiguous() for k, v in model.state_dict().items()}, json.dumps(m))
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
    rewrite(bad, tensors, manifest.to_json())
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
    with pytest.raises(ModelFileError, match="not a safetensors file"):
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
