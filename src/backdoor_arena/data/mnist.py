"""MNIST, Fashion-MNIST and QMNIST writer ids, read from the publishers' gzipped IDX files.

IDX (http://yann.lecun.com/exdb/mnist/): a big-endian header of two zero bytes, a type code
(0x08 uint8, 0x0C int32) and the number of dimensions, then one uint32 per dimension, then the data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .cache import DataFolder, RemoteFile, as_folder
from .dataset import Dataset, DatasetInfo

# mean/std: per-channel statistics of the training split (models normalise with them internally).
MNIST_INFO = DatasetInfo("mnist", 10, (1, 28, 28), tuple(str(d) for d in range(10)), (0.1307,), (0.3081,))
FASHION_INFO = DatasetInfo(
    "fashion-mnist",
    10,
    (1, 28, 28),
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
     "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    (0.2860,),
    (0.3530,),
)  # fmt: skip

MNIST_URLS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_URLS = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
QMNIST_URLS = ("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",)

# folder -> file name -> md5, and folder -> mirrors (base URLs). Constant tables; tests swap entries
# in with monkeypatch (digests of generated files, a local server).
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "qmnist": {
        "qmnist-train-labels-idx2-int.gz": "0058f8dd561b90ffdd0f734c6a30e5e4",
        "qmnist-test-labels-idx2-int.gz": "5b5b05890a5e13444e108efe57b788aa",
    },
}
URLS: dict[str, tuple[str, ...]] = {"mnist": MNIST_URLS, "fashion-mnist": FASHION_URLS, "qmnist": QMNIST_URLS}
_PREFIX = {"train": "train", "test": "t10k"}
_IDX_TYPES = {0x08: np.dtype(np.uint8), 0x0C: np.dtype(">i4")}


def read_idx(path: str | Path, *, dtype_code: int, ndim: int) -> np.ndarray:
    """Read a gzipped IDX file, checking its magic number and that its length matches its header."""
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DatasetError(
            f"{path} is not a readable gzip file ({e or type(e).__name__}): it is corrupt or "
            f"truncated. Delete it to download it again."
        ) from None
    expected = f"0x0000{dtype_code:02X}{ndim:02X}"
    if len(raw) < 4 + 4 * ndim:
        raise DatasetError(f"{path}: IDX header is truncated ({len(raw)} bytes). Delete the file to download it again.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != int(expected, 16):
        raise DatasetError(
            f"{path}: IDX magic number is 0x{magic:08X}, expected {expected}; this is not the "
            f"file the loader expects. Replace it with the published file."
        )
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_TYPES[dtype_code]
    header = 4 + 4 * ndim
    need = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != need:
        raise DatasetError(
            f"{path}: header says {'x'.join(map(str, dims))} values ({need} bytes) but the file "
            f"holds {len(raw)} bytes: it is corrupt or truncated. Delete it to download it again."
        )
    # bytearray: a writable buffer, so torch.from_numpy shares it without a warning
    return np.frombuffer(bytearray(raw[header:]), dtype=dtype).reshape(dims)


def _remote(folder: str, name: str) -> RemoteFile:
    return RemoteFile(f"{folder}/{name}", tuple(u + name for u in URLS[folder]), MD5[folder][name])


def _load_idx_pair(info: DatasetInfo, split: str, root: DataFolder | Path, download: bool, writers: bool) -> Dataset:
    folder = info.name
    names = [f"{p}-{kind}" for p in ("train", "t10k") for kind in ("images-idx3-ubyte.gz", "labels-idx1-ubyte.gz")]
    files = [_remote(folder, n) for n in names]
    if writers:
        files += [_remote("qmnist", f"qmnist-{s}-labels-idx2-int.gz") for s in ("train", "test")]
    # Fetch both splits at once: a dataset is downloaded (or reported missing) as a whole.
    fetched = as_folder(root).fetch_all(files, dataset=folder, download=download)
    paths = dict(zip((f.relpath for f in files), fetched, strict=True))

    prefix = _PREFIX[split]
    images_path = paths[f"{folder}/{prefix}-images-idx3-ubyte.gz"]
    labels_path = paths[f"{folder}/{prefix}-labels-idx1-ubyte.gz"]
    images = read_idx(images_path, dtype_code=0x08, ndim=3)
    labels = read_idx(labels_path, dtype_code=0x08, ndim=1)
    if images.shape[1:] != (28, 28):
        raise DatasetError(f"{images_path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(labels) != len(images):
        raise DatasetError(f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images")
    if labels.size and labels.max() >= info.num_classes:
        raise DatasetError(f"{labels_path}: label {labels.max()} is out of range 0..{info.num_classes - 1}")
    labels_t = torch.from_numpy(labels.astype(np.int64))

    groups = None
    if writers:
        qpath = paths[f"qmnist/qmnist-{split}-labels-idx2-int.gz"]
        groups = _writer_ids(qpath, labels_t)
    return Dataset(info, torch.from_numpy(images).unsqueeze(1), labels_t, groups)


def _writer_ids(qpath: Path, labels: torch.Tensor) -> torch.Tensor:
    """Column 2 of the QMNIST extended labels: the NIST writer of each MNIST image."""
    table = read_idx(qpath, dtype_code=0x0C, ndim=2)
    n = len(labels)
    if table.shape[1] < 3 or table.shape[0] < n:
        raise DatasetError(f"{qpath}: table is {table.shape[0]}x{table.shape[1]}, expected at least {n}x3")
    rows = torch.from_numpy(table[:n].astype(np.int64))
    # Row i must describe MNIST image i; a mismatch means the wrong file or a reordered MNIST.
    bad = (rows[:, 0] != labels).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DatasetError(
            f"{qpath}: row {i} has class {int(rows[i, 0])} but MNIST label {i} is {int(labels[i])} "
            f"({len(bad)} rows disagree); the QMNIST file does not match the MNIST files."
        )
    return rows[:, 2].contiguous()


def load_mnist(split: str, root: DataFolder | Path, *, download: bool = True, writers: bool = False) -> Dataset:
    """MNIST; with `writers`, `groups` holds the NIST writer id of each image (from QMNIST)."""
    return _load_idx_pair(MNIST_INFO, split, root, download, writers)


def load_fashion_mnist(split: str, root: DataFolder | Path, *, download: bool = True, writers: bool = False) -> Dataset:
    return _load_idx_pair(FASHION_INFO, split, root, download, False)
