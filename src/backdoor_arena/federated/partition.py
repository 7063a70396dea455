"""Clients = writers: the training set split by its per-sample group ids (MNIST: NIST writer ids)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.dataset import Dataset
from ..errors import ConfigError


@dataclass(frozen=True, eq=False)
class FederatedData:
    """A dataset and, per client, the indices of its samples (views only: images are stored once)."""

    dataset: Dataset
    client_ids: tuple[int, ...]  # the writer id of each client, in client order
    indices: tuple[torch.Tensor, ...]  # int64 sample indices into `dataset`, one tensor per client

    @property
    def num_clients(self) -> int:
        return len(self.client_ids)

    def sizes(self) -> torch.Tensor:
        return torch.tensor([len(i) for i in self.indices], dtype=torch.int64)

    def client(self, k: int) -> Dataset:
        return self.dataset.subset(self.indices[k])

    def memory_bytes(self) -> int:
        """Bytes held for all clients: the images and labels once, plus the index tensors."""
        d = self.dataset
        own = sum(i.numel() * i.element_size() for i in self.indices)
        return d.images.numel() * d.images.element_size() + d.labels.numel() * d.labels.element_size() + own


def partition_by_writer(dataset: Dataset, min_samples: int = 1) -> FederatedData:
    """One client per distinct group id (writer), clients ordered by id; writers with fewer than
    `min_samples` images are left out."""
    if dataset.groups is None:
        raise ConfigError(
            f"dataset {dataset.name!r} has no writer ids; load it with load_dataset(name, split, writers=True)"
        )
    if min_samples < 1:
        raise ConfigError(f"min_samples must be >= 1, got {min_samples}")
    groups = dataset.groups
    order = torch.argsort(groups, stable=True)
    ids, counts = torch.unique_consecutive(groups[order], return_counts=True)
    chunks = torch.split(order, counts.tolist())
    keep = [(int(i), c) for i, c in zip(ids.tolist(), chunks, strict=False) if len(c) >= min_samples]
    if not keep:
        raise ConfigError(f"no writer has at least min_samples={min_samples} images")
    return FederatedData(dataset, tuple(k for k, _ in keep), tuple(c for _, c in keep))
