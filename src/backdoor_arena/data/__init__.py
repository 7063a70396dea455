"""Datasets by name: `load_dataset("mnist", "train")` returns an in-memory `Dataset`.

Files are looked for in the data folder (argument `root`, else $BACKDOOR_ARENA_DATA, else
~/.cache/backdoor-arena), downloaded from the publisher if missing and allowed, and verified by md5.

Nothing is memoised behind the caller's back: `load_dataset` reads the files every time. To load
each split once, own a `DatasetStore` and load through it (`store.load("mnist", "test")`, or
`load_dataset(..., store=store)`); it keeps what it loaded, and the md5 digests it checked, for as
long as the caller keeps it. Datasets from a store are shared: treat their tensors as read-only;
every `Dataset` operation returns new tensors rather than writing in place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..registry import Registry
from . import cifar10, gtsrb, mnist
from .cache import DataFolder, resolve_root
from .dataset import Dataset, DatasetInfo, to_float

__all__ = [
    "DATASETS",
    "DataFolder",
    "Dataset",
    "DatasetInfo",
    "DatasetLoader",
    "DatasetStore",
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
    # load(split, folder: DataFolder, *, download, writers) -> Dataset. `folder` is path-like (its root);
    # loaders fetch files through `folder.fetch_all` so each file is hashed once per folder object.
    load: Callable[..., Dataset]
    has_writers: bool = False  # whether `writers=True` can attach writer ids as `groups`


DATASETS: Registry[DatasetLoader] = Registry("dataset")
DATASETS.register("mnist")(DatasetLoader(mnist.MNIST_INFO, mnist.load_mnist, has_writers=True))
DATASETS.register("fashion-mnist")(DatasetLoader(mnist.FASHION_INFO, mnist.load_fashion_mnist))
DATASETS.register("cifar10")(DatasetLoader(cifar10.INFO, cifar10.load_cifar10))
DATASETS.register("gtsrb")(DatasetLoader(gtsrb.INFO, gtsrb.load_gtsrb))


def _checked(name: str, split: str, writers: bool) -> tuple[str, DatasetLoader]:
    """The registered name and loader, after checking the arguments (no file access)."""
    loader = DATASETS.get(name)
    if split not in SPLITS:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if writers and not loader.has_writers:
        with_writers = [n for n in DATASETS.names() if DATASETS.get(n).has_writers]
        raise ConfigError(f"writers=True: dataset {name!r} has no writer ids; only {', '.join(with_writers)} has them")
    return (name if name in DATASETS else name.lower()), loader


class DatasetStore:
    """A data folder and the datasets loaded from it, each split loaded once.

    The caller owns the store and decides its lifetime (one per CLI call, per experiment, per
    server session); dropping it frees the datasets. Creating one touches no file. Loaded datasets
    are shared between callers of `load`: do not modify their tensors in place.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, download: bool = True) -> None:
        self.folder = DataFolder(root)
        self.download = download
        self._datasets: dict[tuple[str, str, bool], Dataset] = {}

    @property
    def root(self) -> Path:
        return self.folder.root

    def __repr__(self) -> str:
        return f"DatasetStore({str(self.root)!r}, loaded={len(self._datasets)})"

    def load(self, name: str, split: str = "train", *, writers: bool = False, download: bool | None = None) -> Dataset:
        """Like `load_dataset`, but the second call for the same split returns the same object.

        `download` defaults to the store's setting.
        """
        key_name, loader = _checked(name, split, writers)
        key = (key_name, split, bool(writers))
        if key not in self._datasets:
            allow = self.download if download is None else download
            dataset = loader.load(split, self.folder, download=allow, writers=bool(writers))
            self._datasets.setdefault(key, dataset)  # two threads loading at once: both get the first
        return self._datasets[key]

    def loaded(self) -> list[tuple[str, str, bool]]:
        """(name, split, writers) of each dataset held."""
        return list(self._datasets)

    def clear(self) -> None:
        """Forget the loaded datasets (and the checked digests: files are hashed again)."""
        self._datasets.clear()
        self.folder = DataFolder(self.root)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    *,
    download: bool | None = None,
    writers: bool = False,
    store: DatasetStore | None = None,
) -> Dataset:
    """One split ("train" or "test") of a registered dataset, images uint8 [N, C, H, W].

    `download=False` never touches the network: missing files raise one DatasetError that lists
    them all (default: allowed, or the store's setting). `writers=True` (MNIST only) sets `groups`
    to the NIST writer id of each image, read from the QMNIST label files. GTSRB training data
    always carries physical-sign ids in `groups`.

    Without `store` the files are read (and md5-checked) on every call. With a `store`, the store
    loads each split once and returns it shared; `root`, if given, must be the store's folder.
    """
    if store is None:
        _, loader = _checked(name, split, writers)
        allow = True if download is None else download
        return loader.load(split, DataFolder(root), download=allow, writers=bool(writers))
    if root is not None and os.fspath(root) != "" and resolve_root(root) != store.root:
        raise ConfigError(
            f"root {os.fspath(root)!r} is not the store's data folder {store.root}; "
            f"use a DatasetStore for that folder or leave root out"
        )
    return store.load(name, split, writers=writers, download=download)


def dataset_info(name: str) -> DatasetInfo:
    """Classes and input shape of a registered dataset, without touching any file."""
    return DATASETS.get(name).info


def dataset_names() -> list[str]:
    return DATASETS.names()
