"""EMNIST's real writers from files the user already has: LEAF FEMNIST JSON or TFF EMNIST HDF5.

Both return a `Dataset` whose `groups` are writer indices, so `partition_by_writer` makes one client per
EMNIST writer (3,383 digit writers in TFF's digits-only files, ~3,550 in LEAF) instead of MNIST's 539.

Pixel convention. Both formats store 28x28 floats in [0, 1] with the background at 1.0 and the ink near
0.0: LEAF's preprocessing (data/femnist/preprocess/data_to_json.py) divides NIST SD19's PNGs, which are
dark ink on white paper, by 255 without inverting them, and TFF's emnist.load_data documents "1.0
corresponds to the background". This project's images are MNIST-like (white ink on black, uint8
0..255), so `invert=True` (the default) stores round((1 - x) * 255). Images are upright in row-major
order in both formats (unlike the EMNIST binary release, which is transposed), so none is transposed.

Labels: 0-9 digits, 10-35 'A'-'Z', 36-61 'a'-'z' (LEAF's relabel_class; TFF keeps it). `digits_only`
keeps labels < 10 and makes a 10-class dataset, for models and backdoor tasks built for digits.

Files are read with json and h5py only (never pickle); h5py is an optional dependency.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..data.dataset import Dataset, DatasetInfo
from ..errors import DatasetError
from ..registry import Registry

SIDE = 28
PIXELS = SIDE * SIDE
NUM_CLASSES = 62
CLASS_NAMES = tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase)
LEAF_HINT = (
    "LEAF FEMNIST files are the .json files that leaf/data/femnist/preprocess.sh writes to data/train "
    "and data/test"
)
TFF_HINT = "TFF EMNIST files are fed_emnist[_digitsonly]_{train,test}.h5 from storage.googleapis.com/tff-datasets-public"

# Per writer id: the (uint8 images [n, 28, 28], int64 labels [n]) chunks read for it, in file order.
_Writers = dict[str, list[tuple[np.ndarray, np.ndarray]]]


def load_leaf_femnist(path: str | Path, *, digits_only: bool = False, invert: bool = True) -> Dataset:
    """LEAF FEMNIST: one .json file, or a folder whose *.json files are read together (one split).

    `groups[i]` is the position of sample i's writer in the sorted list of every writer id in the
    file(s) (taken before `digits_only` filtering, so ids do not depend on it). `info.mean`/`info.std`
    are measured on the images loaded (for the train folder: the training statistics).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"{path} does not exist: give a LEAF FEMNIST .json file or a folder of them ({LEAF_HINT})")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise DatasetError(f"{path} holds no .json files; {LEAF_HINT}")
    writers: _Writers = {}
    for f in files:
        _read_leaf_file(f, writers, invert)
    return _assemble("leaf-femnist", writers, digits_only, str(path))


def load_tff_emnist(path: str | Path, *, digits_only: bool = False, invert: bool = True) -> Dataset:
    """TFF EMNIST: one .h5 file (examples/<client id>/pixels [n, 28, 28] float, examples/<client id>/label [n]).

    Needs h5py. `groups` and `info.mean`/`info.std` as in `load_leaf_femnist`.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DatasetError(f"{path} {what}: give one TFF EMNIST .h5 file ({TFF_HINT})")
    h5py = _h5py()
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DatasetError(f"{path} is not a readable HDF5 file ({_one_line(exc)}); {TFF_HINT}") from None
    writers: _Writers = {}
    with h5:
        if "examples" not in h5:
            raise DatasetError(f"{path} has no 'examples' group: it is not a TFF EMNIST file; {TFF_HINT}")
        examples = h5["examples"]
        for client in sorted(examples.keys()):
            group = examples[client]
            where = f"{path}: examples/{client}"
            missing = [k for k in ("pixels", "label") if k not in group]
            if missing:
                raise DatasetError(f"{where} lacks {' and '.join(missing)}: it is not a TFF EMNIST file; {TFF_HINT}")
            # [()] reads the whole HDF5 dataset into a numpy array.
            pixels = np.asarray(group["pixels"][()], dtype=np.float32)
            if pixels.ndim != 3 or pixels.shape[1:] != (SIDE, SIDE):
                raise DatasetError(f"{where}/pixels has shape {list(pixels.shape)}, expected [n, 28, 28]")
            labels = np.asarray(group["label"][()])
            if labels.ndim == 2 and labels.shape[1] == 1:  # tolerate [n, 1] label columns
                labels = labels[:, 0]
            labels = _labels(labels, len(pixels), f"{where}/label")
            writers.setdefault(str(client), []).append((_to_uint8(pixels, invert, f"{where}/pixels"), labels))
    return _assemble("tff-emnist", writers, digits_only, str(path))


def _h5py() -> ModuleType:
    try:
        import h5py
    except ImportError:
        raise DatasetError(
            "reading TFF EMNIST .h5 files needs h5py: pip install h5py (or use LEAF FEMNIST JSON files with "
            "dataset = \"leaf-femnist\")"
        ) from None
    return h5py


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _read_leaf_file(f: Path, writers: _Writers, invert: bool) -> None:
    try:
        with f.open("rb") as fh:
            doc = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{f} is not JSON ({_one_line(exc)}); {LEAF_HINT}") from None
    except OSError as exc:
        raise DatasetError(f"{f} cannot be read ({_one_line(exc)})") from None
    keys = ("users", "num_samples", "user_data")
    missing = [k for k in keys if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise DatasetError(f"{f} lacks key(s) {', '.join(map(repr, missing))}: it is not a LEAF FEMNIST file; {LEAF_HINT}")
    users, counts, user_data = doc["users"], doc["num_samples"], doc["user_data"]
    if not isinstance(users, list) or not isinstance(counts, list) or len(users) != len(counts):
        raise DatasetError(f"{f}: 'users' and 'num_samples' must be lists of the same length; the file is damaged")
    if not isinstance(user_data, dict):
        raise DatasetError(f"{f}: 'user_data' must map each user to {{'x': [...], 'y': [...]}}; the file is damaged")
    for user, count in zip(users, counts, strict=True):
        where = f"{f}: user {user!r}"
        entry = user_data.get(user) if isinstance(user, str) else None
        if not isinstance(entry, dict) or "x" not in entry or "y" not in entry:
            raise DatasetError(f"{where} has no user_data entry with 'x' and 'y'; the file is damaged or not LEAF's")
        pixels = _leaf_pixels(entry["x"], where)
        labels = _labels(np.asarray(entry["y"]), len(pixels), f"{where} y")
        if count != len(labels):
            raise DatasetError(f"{where}: num_samples says {count} but x holds {len(labels)} images; the file is damaged")
        writers.setdefault(user, []).append((_to_uint8(pixels, invert, f"{where} x"), labels))


def _leaf_pixels(x: Any, where: str) -> np.ndarray:
    """LEAF's x (a list of flat 784-value lists) as float32 [n, 28, 28], checking its shape first so
    that a ragged or wrongly sized file gets a precise message rather than numpy's."""
    if not isinstance(x, list) or not all(isinstance(row, list) for row in x):
        raise DatasetError(f"{where}: x must be a list of images, each a list of {PIXELS} pixel values")
    lengths = sorted({len(row) for row in x})
    if len(lengths) > 1:
        raise DatasetError(f"{where}: x is ragged (images of {', '.join(map(str, lengths))} values); each needs {PIXELS}")
    if lengths and lengths[0] != PIXELS:
        raise DatasetError(f"{where}: images have {lengths[0]} values, expected {PIXELS} (28x28 flattened row by row)")
    try:
        return np.asarray(x, dtype=np.float32).reshape(len(x), SIDE, SIDE)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: x holds values that are not numbers") from None


def _to_uint8(pixels: np.ndarray, invert: bool, where: str) -> np.ndarray:
    """Floats in [0, 1] (background 1) -> uint8 MNIST-style (background 0) when `invert`."""
    if pixels.size:
        lo, hi = float(np.min(pixels)), float(np.max(pixels))
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
            hint = "; these look like 0..255 pixels, divide them by 255" if 1 < hi <= 255 and lo >= 0 else ""
            raise DatasetError(f"{where}: pixel values must be in [0, 1], found {lo:g}..{hi:g}{hint}")
    values = 1.0 - pixels if invert else pixels
    return np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DatasetError(f"{where}: expected {n} labels (one per image), got shape {list(y.shape)}")
    if n and (y.dtype.kind not in "iu"):
        raise DatasetError(f"{where}: labels must be integers 0..{NUM_CLASSES - 1}, got {y.dtype} values")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= NUM_CLASSES)
    if bad.any():
        raise DatasetError(
            f"{where}: label {int(y[bad][0])} is out of range 0..{NUM_CLASSES - 1} (0-9 digits, 10-35 A-Z, 36-61 a-z)"
        )
    return y


def _assemble(name: str, writers: _Writers, digits_only: bool, source: str) -> Dataset:
    ids = sorted(writers)
    if not ids:
        raise DatasetError(f"{source} holds no writers")
    chunks = [(k, imgs, labels) for k, w in enumerate(ids) for imgs, labels in writers[w]]
    images = np.concatenate([c[1] for c in chunks])
    labels = np.concatenate([c[2] for c in chunks])
    groups = np.concatenate([np.full(len(c[2]), c[0], dtype=np.int64) for c in chunks])
    num_classes = NUM_CLASSES
    if digits_only:
        keep = labels < 10
        images, labels, groups, num_classes = images[keep], labels[keep], groups[keep], 10
        name += "-digits"
    if len(labels) == 0:
        what = "no digit images (labels 0-9)" if digits_only else "no images"
        raise DatasetError(f"{source} holds {what}")
    info = DatasetInfo(name, num_classes, (1, SIDE, SIDE), CLASS_NAMES[:num_classes], *_stats(images))
    return Dataset(info, torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels), torch.from_numpy(groups))


def _stats(images: np.ndarray) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of the pixels in [0, 1], exact from a histogram (no float copy of the images).
    Measured rather than borrowed from EMNIST: LEAF/TFF images are not size-normalised like the
    EMNIST binary release, so its published statistics do not describe them."""
    counts = np.bincount(images.ravel(), minlength=256).astype(np.float64)
    v = np.arange(256, dtype=np.float64) / 255.0
    total = counts.sum()
    mean = float(counts @ v / total)
    std = float(np.sqrt(max(counts @ (v * v) / total - mean * mean, 0.0)))
    return (round(mean, 4),), (round(max(std, 1e-3), 4),)


# Scenario name -> loader(path, *, digits_only) of the formats a `[data] dataset` may name.
WRITER_FILES: Registry[Callable[..., Dataset]] = Registry("writer-file dataset")
WRITER_FILES.register("leaf-femnist")(load_leaf_femnist)
WRITER_FILES.register("tff-emnist")(load_tff_emnist)

def load_writer_files(name: str, path: str | Path, *, digits_only: bool = True) -> Dataset:
    """A registered writer-file format. Not memoised here (no module-level caches): the full LEAF JSON takes
    minutes to parse, so a scenario's variants share it through the caller's `FederationCache`."""
    return WRITER_FILES.get(name)(Path(path).expanduser().resolve(), digits_only=bool(digits_only))
