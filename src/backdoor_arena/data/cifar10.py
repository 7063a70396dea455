"""CIFAR-10 from the publisher's *binary* archive, read straight from the tar.gz.

Never the "python version": unpickling a downloaded file can execute code. Each .bin batch is a
sequence of 3073-byte records: one label byte, then 32x32 red, green and blue planes (CHW order).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DatasetError
from .cache import DataFolder, RemoteFile, as_folder
from .dataset import Dataset, DatasetInfo

INFO = DatasetInfo(
    "cifar10",
    10,
    (3, 32, 32),
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    (0.4914, 0.4822, 0.4465),
    (0.2470, 0.2435, 0.2616),
)

ARCHIVE = "cifar-10-binary.tar.gz"
URLS = ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",)
# Module-level so tests can swap in the digest of a generated archive.
MD5 = {ARCHIVE: "c32a1d4ab5d03f1284b67883e8d87530"}

_FOLDER = "cifar-10-batches-bin"
_MEMBERS = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_RECORD = 1 + 3 * 32 * 32


def read_batches(path: str | Path, members: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels uint8 [N] of the named batches, in order."""
    path = Path(path)
    chunks = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for name in members:
                try:
                    member = tar.getmember(f"{_FOLDER}/{name}")
                except KeyError:
                    raise DatasetError(
                        f"{path} has no member {_FOLDER}/{name}: it is not the CIFAR-10 binary "
                        f"archive. Delete it to download it again."
                    ) from None
                if not member.isfile() or member.size % _RECORD:
                    raise DatasetError(
                        f"{path}: {member.name} is {member.size} bytes, not a whole number of "
                        f"{_RECORD}-byte records. Delete the archive to download it again."
                    )
                f = tar.extractfile(member)
                assert f is not None  # isfile() checked above
                chunks.append(f.read())
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path} cannot be read as a tar.gz ({e or type(e).__name__}): it is corrupt or "
            f"truncated. Delete it to download it again."
        ) from None
    records = np.frombuffer(bytearray(b"".join(chunks)), dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0]
    if labels.size and labels.max() >= 10:
        raise DatasetError(f"{path}: label {labels.max()} is out of range 0..9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(split: str, root: DataFolder | Path, *, download: bool = True, writers: bool = False) -> Dataset:
    archive = RemoteFile(f"cifar10/{ARCHIVE}", URLS, MD5[ARCHIVE])
    (path,) = as_folder(root).fetch_all([archive], dataset="cifar10", download=download)
    images, labels = read_batches(path, _MEMBERS[split])
    return Dataset(INFO, torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))
