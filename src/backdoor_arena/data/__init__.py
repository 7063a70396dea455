"""Datasets by name: `load_dataset("mnist", "train")` returns an in-memory `Dataset`.

Files are looked for in the data folder (argument `root`, else $BACKDOOR_ARENA_DATA, else
~/.cache/backdoor-arena), downloaded from the publisher if missing and allowed, and verified by md5.

Loaded datasets are memoised per process (by name, split, data folder and `writers`), so a second
`load_dataset` call returns the same object at no cost. Its tensors are shared: treat them as
read-only; every `Dataset` operation returns new tensors rather than writing in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..registry import Registry
from . import cifar10, gtsrb, mnist
from .cache import resolve_root
from .dataset import Dataset, DatasetInfo, to_float

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetInfo",
    "DatasetLoader",
    "dataset_info",
    "dataset_names",
    "load_dataset",
    "to_float",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetLoader:
    """A registered dataset: what it is (no file access needed) and how to load one split."""

    info: DatasetInfo
    load: Callable[..., Dataset]  # load(split, root: Path, *, download, writers) -> Dataset
    has_writers: bool = False  # whether `writers=True` can attach writer ids as `groups`


DATASETS: Registry[DatasetLoader] = Registry("dataset")
DATASETS.register("mnist")(DatasetLoader(mnist.MNIST_INFO, mnist.load_mnist, has_writers=True))
DATASETS.register("fashion-mnist")(DatasetLoader(mnist.FASHION_INFO, mnist.load_fashion_mnist))
DATASETS.register("cifar10")(DatasetLoader(cifar10.INFO, cifar10.load_cifar10))
DATASETS.register("gtsrb")(DatasetLoader(gtsrb.INFO, gtsrb.load_gtsrb))

_MEMO: dict[tuple[str, str, Path, bool], Dataset] = {}


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    *,
    download: bool = True,
    writers: bool = False,
) -> Dataset:
    """One split ("train" or "test") of a registered dataset, images uint8 [N, C, H, W].

    `download=False` never touches the network: missing files raise one DatasetError that lists
    them all. `writers=True` (MNIST only) sets `groups` to the NIST writer id of each image, read
    from the QMNIST label files. GTSRB training data always carries physical-sign ids in `groups`.
    The returned Dataset is memoised and shared: do not modify its tensors in place.
    """
    loader = DATASETS.get(name)
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if writers and not loader.has_writers:
        with_writers = [n for n in DATASETS.names() if DATASETS.get(n).has_writers]
        raise ConfigError(f"writers=True: dataset {name!r} has no writer ids; only {', '.join(with_writers)} has them")
    key = (name, split, resolve_root(root), bool(writers))
    if key not in _MEMO:
        _MEMO[key] = loader.load(split, key[2], download=download, writers=bool(writers))
    return _MEMO[key]


def dataset_info(name: str) -> DatasetInfo:
    """Classes and input shape of a registered dataset, without touching any file."""
    return DATASETS.get(name).info


def dataset_names() -> list[str]:
    return DATASETS.names()
