"""EMNIST writers from LEAF FEMNIST JSON and TFF EMNIST HDF5 files: round trip (orientation, background,
writer ids), clients, digits-only filter, one-line errors, and a scenario that uses the files."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoor_arena.errors import ConfigError, DatasetError
from backdoor_arena.federated import load_leaf_femnist, load_tff_emnist, partition_by_writer
from backdoor_arena.federated.config import load_scenario

# Writer id -> labels. Sorted ids give writer indices 0, 1, 2. Writer f0004_01 writes only letters.
WRITERS = {"f0003_10": [7, 7, 3, 12], "f0001_22": [1, 7, 7, 40], "f0002_05": [0, 7, 7], "f0004_01": [20, 55]}
ORDER = sorted(WRITERS)
GRAY = 128  # stored as GRAY/255, must come back as 255 - GRAY


def _image(w: int, i: int) -> np.ndarray:
    """A 28x28 image in the files' convention (background 1.0, ink 0.0) with an asymmetric mark: ink at
    (row 2 + w, column 5 + i), so a transpose or flip moves it; one gray pixel at (20, 3)."""
    img = np.ones((28, 28))
    img[2 + w, 5 + i] = 0.0
    img[20, 3] = GRAY / 255
    return img


def _expected(w: int, i: int) -> np.ndarray:
    """The same image in this project's convention: uint8, ink 255 on a 0 background."""
    out = np.zeros((28, 28), np.uint8)
    out[2 + w, 5 + i] = 255
    out[20, 3] = 255 - GRAY
    return out


def _leaf_doc(users: list[str]) -> dict:
    data = {u: {"x": [_image(ORDER.index(u), i).ravel().tolist() for i in range(len(WRITERS[u]))], "y": WRITERS[u]}
            for u in users}
    return {"users": users, "num_samples": [len(WRITERS[u]) for u in users], "user_data": data}


@pytest.fixture()
def leaf_dir(tmp_path):
    """Two files, as LEAF writes them (at most 100 writers per file), writers not in sorted order."""
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "all_data_0_niid_0_keep_0_train_9.json").write_text(json.dumps(_leaf_doc(["f0003_10", "f0001_22"])))
    (folder / "all_data_1_niid_0_keep_0_train_9.json").write_text(json.dumps(_leaf_doc(["f0004_01", "f0002_05"])))
    return folder


def _check_round_trip(d, name: str) -> None:
    assert d.info.name == name and d.num_classes == 62 and d.info.input_shape == (1, 28, 28)
    assert d.info.class_names[:11] == tuple("0123456789A") and d.info.class_names[-1] == "z"
    assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64 and d.groups.dtype == torch.int64
    assert len(d) == sum(map(len, WRITERS.values()))
    # Samples come writer by writer in sorted-id order, each writer's in file order.
    expected_labels = [y for u in ORDER for y in WRITERS[u]]
    expected_groups = [k for k, u in enumerate(ORDER) for _ in WRITERS[u]]
    assert d.labels.tolist() == expected_labels and d.groups.tolist() == expected_groups
    expected_images = np.stack([_expected(k, i) for k, u in enumerate(ORDER) for i in range(len(WRITERS[u]))])
    assert np.array_equal(d.images[:, 0].numpy(), expected_images)
    flat = d.images.double().div(255)
    assert d.info.mean[0] == pytest.approx(float(flat.mean()), abs=1e-4)
    assert d.info.std[0] == pytest.approx(float(flat.std(unbiased=False)), abs=1e-4)


def test_leaf_round_trip_orientation_background_and_writers(leaf_dir):
    d = load_leaf_femnist(leaf_dir)
    _check_round_trip(d, "leaf-femnist")
    assert int(d.images[0, 0, 0, 0]) == 0  # background black, like MNIST
    single = load_leaf_femnist(leaf_dir / "all_data_1_niid_0_keep_0_train_9.json")
    assert sorted(set(single.groups.tolist())) == [0, 1]  # ids index the writers of the files read


def test_leaf_invert_false_keeps_the_stored_values(leaf_dir):
    d = load_leaf_femnist(leaf_dir, invert=False)
    assert int(d.images[0, 0, 0, 0]) == 255 and int(d.images[0, 0, 20, 3]) == GRAY


def test_partition_by_writer_gives_one_client_per_writer(leaf_dir):
    fed = partition_by_writer(load_leaf_femnist(leaf_dir))
    assert fed.client_ids == (0, 1, 2, 3)
    assert fed.sizes().tolist() == [len(WRITERS[u]) for u in ORDER]
    for k, u in enumerate(ORDER):
        assert fed.client(k).labels.tolist() == WRITERS[u]


def test_digits_only_keeps_labels_below_10_and_writer_ids(leaf_dir):
    d = load_leaf_femnist(leaf_dir, digits_only=True)
    assert d.info.name == "leaf-femnist-digits" and d.num_classes == 10 and len(d.info.class_names) == 10
    assert d.labels.tolist() == [1, 7, 7, 0, 7, 7, 7, 7, 3]
    fed = partition_by_writer(d)
    assert fed.client_ids == (0, 1, 2)  # f0004_01 wrote no digits: no client, ids unchanged
    assert fed.sizes().tolist() == [3, 3, 3]
    # the kept images are the right ones (writer 0's digit images are its samples 0, 1, 2)
    assert np.array_equal(fed.client(0).images[:, 0].numpy(), np.stack([_expected(0, i) for i in range(3)]))


def _write_json(tmp_path, doc, name="bad.json"):
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def _doc_with(**changes):
    doc = _leaf_doc(["f0001_22"])
    entry = doc["user_data"]["f0001_22"]
    for key, value in changes.items():
        if key in ("x", "y"):
            entry[key] = value
        else:
            doc[key] = value
    return doc


PIX = [1.0] * 784
LEAF_BAD = {
    "missing path": (None, "does not exist"),
    "empty folder": ("folder", "holds no .json files"),
    "not json": ("{users: [", "is not JSON"),
    "missing keys": ({"users": ["a"]}, "lacks key(s) 'num_samples', 'user_data'"),
    "not a dict": ([1, 2], "lacks key(s) 'users'"),
    "user without data": (_doc_with(user_data={}), "has no user_data entry"),
    "ragged x": (_doc_with(x=[PIX, PIX[:700], PIX, PIX]), "x is ragged (images of 700, 784 values)"),
    "wrong pixel count": (_doc_with(x=[PIX[:783]] * 4), "images have 783 values, expected 784"),
    "label out of range": (_doc_with(y=[1, 7, 7, 62]), "label 62 is out of range 0..61"),
    "negative label": (_doc_with(y=[1, 7, -1, 3]), "label -1 is out of range"),
    "float labels": (_doc_with(y=[1.5, 7, 7, 3]), "labels must be integers"),
    "label count": (_doc_with(y=[1, 7, 7]), "expected 4 labels"),
    "num_samples mismatch": (_doc_with(num_samples=[5]), "num_samples says 5 but x holds 4"),
    "0..255 pixels": (_doc_with(x=[[255.0] * 784] * 4), "divide them by 255"),
    "non-number pixels": (_doc_with(x=[["a"] * 784] * 4), "not numbers"),
    "NaN pixels": (_doc_with(x=[[None] * 784] * 4), "pixel values must be in [0, 1], found nan"),
}


@pytest.mark.parametrize("case", LEAF_BAD, ids=list(LEAF_BAD))
def test_leaf_bad_input_is_one_line_error(tmp_path, case):
    content, fragment = LEAF_BAD[case]
    if content is None:
        path = tmp_path / "nowhere"
    elif content == "folder":
        path = tmp_path / "empty"
        path.mkdir()
    else:
        path = _write_json(tmp_path, content)
    with pytest.raises(DatasetError) as exc:
        load_leaf_femnist(path)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg, msg


# ---- TFF EMNIST -------------------------------------------------------------------------------------------

def _tff_tree() -> dict:
    """examples/<client id>/{pixels [n, 28, 28] float32, label [n] int32}, as TFF's .h5 files hold them."""
    return {"examples": {u: {"pixels": np.stack([_image(ORDER.index(u), i) for i in range(len(WRITERS[u]))])
                             .astype(np.float32), "label": np.asarray(WRITERS[u], np.int32)} for u in WRITERS}}


class _FakeFile(dict):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _fake_h5py(monkeypatch, files: dict):
    """h5py stand-in reading nested dicts of numpy arrays (arr[()] is the whole array, as for h5py datasets),
    so the TFF code path is tested where h5py is not installed."""
    def open_file(path, mode):
        if str(path) not in files:
            raise OSError("Unable to open file (file signature not found)")
        return _FakeFile(files[str(path)])
    monkeypatch.setitem(sys.modules, "h5py", types.SimpleNamespace(File=open_file))


def test_tff_round_trip_with_stand_in_h5py(tmp_path, monkeypatch):
    path = tmp_path / "fed_emnist_train.h5"
    path.write_bytes(b"stand-in")
    _fake_h5py(monkeypatch, {str(path): _tff_tree()})
    d = load_tff_emnist(path)
    _check_round_trip(d, "tff-emnist")
    digits = load_tff_emnist(path, digits_only=True)
    assert digits.num_classes == 10 and partition_by_writer(digits).client_ids == (0, 1, 2)


def test_tff_round_trip_with_real_h5py(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "fed_emnist_train.h5"
    with h5py.File(path, "w") as f:
        for client, datasets in _tff_tree()["examples"].items():
            g = f.create_group(f"examples/{client}")
            for key, value in datasets.items():
                g.create_dataset(key, data=value)
    _check_round_trip(load_tff_emnist(path), "tff-emnist")


def _tree_with(client_change):
    tree = _tff_tree()
    client_change(tree["examples"]["f0001_22"])
    return tree


TFF_BAD = {
    "not hdf5": (None, "is not a readable HDF5 file"),
    "no examples group": ({"snippets": {}}, "has no 'examples' group"),
    "no label": (_tree_with(lambda c: c.pop("label")), "examples/f0001_22 lacks label"),
    "wrong pixel shape": (_tree_with(lambda c: c.update(pixels=np.ones((4, 784), np.float32))),
                          "has shape [4, 784], expected [n, 28, 28]"),
    "label out of range": (_tree_with(lambda c: c.update(label=np.asarray([1, 7, 7, 99], np.int32))),
                           "label 99 is out of range 0..61"),
    "0..255 pixels": (_tree_with(lambda c: c.update(pixels=np.full((4, 28, 28), 255, np.float32))),
                      "divide them by 255"),
}


@pytest.mark.parametrize("case", TFF_BAD, ids=list(TFF_BAD))
def test_tff_bad_input_is_one_line_error(tmp_path, monkeypatch, case):
    tree, fragment = TFF_BAD[case]
    path = tmp_path / "bad.h5"
    path.write_bytes(b"not hdf5")
    _fake_h5py(monkeypatch, {} if tree is None else {str(path): tree})
    with pytest.raises(DatasetError) as exc:
        load_tff_emnist(path)
    msg = str(exc.value)
    assert fragment in msg and "\n" not in msg, msg


def test_tff_missing_path_and_missing_h5py_are_clear(tmp_path, monkeypatch):
    with pytest.raises(DatasetError, match="does not exist"):
        load_tff_emnist(tmp_path / "fed_emnist_train.h5")
    with pytest.raises(DatasetError, match="is a folder"):
        load_tff_emnist(tmp_path)
    path = tmp_path / "fed_emnist_train.h5"
    path.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail, installed or not
    with pytest.raises(DatasetError) as exc:
        load_tff_emnist(path)
    assert "pip install h5py" in str(exc.value) and "\n" not in str(exc.value)


# ---- scenarios --------------------------------------------------------------------------------------------

def _scenario(tmp_path, data: str, extra: str = "") -> Path:
    path = tmp_path / "emnist.toml"
    path.write_text(f'name = "emnist-files"\nthreads = 1\n[data]\n{data}\n{extra}')
    return path


def test_scenario_with_leaf_files_validates(leaf_dir, tmp_path):
    sc = load_scenario(_scenario(tmp_path, f'dataset = "leaf-femnist"\ntrain_path = "{leaf_dir}"\n'
                                           f'test_path = "{leaf_dir}"\ndigits_only = false'))
    assert sc["data.dataset"] == "leaf-femnist" and sc["data.digits_only"] is False
    assert sc["data.train_path"] == str(leaf_dir)
    assert load_scenario(_scenario(tmp_path, 'dataset = "mnist"'))["data.digits_only"] is True  # default


def test_scenario_data_errors_are_reported_at_once(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_scenario(_scenario(tmp_path, 'dataset = "leaf-femnst"'))
    assert "did you mean 'leaf-femnist'" in str(exc.value)
    with pytest.raises(ConfigError) as exc:
        load_scenario(_scenario(tmp_path, f'dataset = "tff-emnist"\ntrain_path = "{tmp_path / "no.h5"}"\n'
                                          'digits_only = "yes"'))
    msg = str(exc.value)
    for fragment in ["data.train_path = ", "does not exist", "data.test_path is required", "data.digits_only",
                     "3 problem(s)"]:
        assert fragment in msg, (fragment, msg)
    with pytest.raises(ConfigError, match="data.train_path only apply to data.dataset = leaf-femnist or tff-emnist"):
        load_scenario(_scenario(tmp_path, f'dataset = "mnist"\ntrain_path = "{tmp_path}"'))


def test_one_round_on_leaf_files(leaf_dir, tmp_path):
    from backdoor_arena.federated import simulate

    sc = load_scenario(_scenario(
        tmp_path, f'dataset = "leaf-femnist"\ntrain_path = "{leaf_dir}"\ntest_path = "{leaf_dir}"',
        '[model]\narchitecture = "badnet-mnist"\n[federation]\nrounds = 1\nclients_per_round = 2\nlocal_epochs = 1\n'
        'batch_size = 2\nengine = "sequential"\n[backdoor]\ntasks = 1\nattacker_clean_samples = 2\n'))
    result = simulate(sc, progress=False)
    assert result.summary["num_clients"] == 3  # the digit writers (digits_only defaults to true)
    assert [r["round"] for r in result.records] == [0, 1]
    assert all(c in (0, 1, 2) for c in result.records[1]["sampled_clients"])
