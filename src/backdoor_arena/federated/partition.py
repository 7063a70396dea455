"""How the training set is split into clients (`data.partition`):

- "writers": one client per writer (the per-sample group ids; MNIST: NIST writer ids) - Sun et al.'s setting;
- "by-class": K clients, client i holding only class i mod C (MixTailor's heterogeneous setting, Ramezani-Kebrya
  et al. 2022: worker i sees class i mod 10); the images of a class are shared out among its clients at random;
- "iid": K clients with equal random shares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.dataset import Dataset
from ..errors import ConfigError

PARTITIONS = ("writers", "by-class", "iid")


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


def partition_by_class(dataset: Dataset, clients: int, generator: torch.Generator) -> FederatedData:
    """K clients, client i holding only class i mod C; a class's images are split at random, as evenly as
    possible, among the clients that hold it. Client ids are 0..K-1."""
    num_classes = int(dataset.labels.max()) + 1
    if clients < 1:
        raise ConfigError(f"data.clients must be >= 1 for data.partition = 'by-class', got {clients}")
    shares: list[torch.Tensor] = [torch.empty(0, dtype=torch.int64)] * clients
    for c in range(num_classes):
        owners = list(range(c, clients, num_classes))
        if not owners:
            continue
        idx = torch.nonzero(dataset.labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        for owner, part in zip(owners, torch.tensor_split(idx, len(owners)), strict=True):
            shares[owner] = part.sort().values
    empty = [k for k, s in enumerate(shares) if len(s) == 0]
    if empty:
        raise ConfigError(f"data.partition = 'by-class': client(s) {empty[:5]} hold a class with no images")
    return FederatedData(dataset, tuple(range(clients)), tuple(shares))


def partition_iid(dataset: Dataset, clients: int, generator: torch.Generator) -> FederatedData:
    """K clients with equal random shares (sizes differ by at most one)."""
    if not 1 <= clients <= len(dataset):
        raise ConfigError(f"data.clients must be in [1, {len(dataset)}] for data.partition = 'iid', got {clients}")
    order = torch.randperm(len(dataset), generator=generator)
    return FederatedData(dataset, tuple(range(clients)), tuple(p.sort().values for p in torch.tensor_split(order, clients)))


def partition(dataset: Dataset, kind: str, clients: int, generator: torch.Generator) -> FederatedData:
    """The split `data.partition` names."""
    if kind == "writers":
        return partition_by_writer(dataset)
    if kind == "by-class":
        return partition_by_class(dataset, clients, generator)
    if kind == "iid":
        return partition_iid(dataset, clients, generator)
    raise ConfigError(f"data.partition must be one of {', '.join(PARTITIONS)}, got {kind!r}")
