"""The in-memory dataset every component consumes."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class DatasetInfo:
    """What is known about a dataset without loading it."""

    name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W
    class_names: tuple[str, ...]
    # Per-channel statistics of the training split; models normalise with them internally.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images [N, C, H, W] (uint8 pixels, or float in [0, 1]), labels int64 [N].

    `groups` holds optional per-sample group ids: MNIST writer ids, GTSRB track ids.
    Instances are never mutated; every operation returns a new one.
    """

    info: DatasetInfo
    images: torch.Tensor
    labels: torch.Tensor
    groups: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or tuple(self.images.shape[1:]) != self.info.input_shape:
            raise ConfigError(
                f"dataset {self.info.name!r}: images have shape {tuple(self.images.shape)}, "
                f"expected [N, {', '.join(map(str, self.info.input_shape))}]"
            )
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != torch.int64:
            raise ConfigError(
                f"dataset {self.info.name!r}: labels must be int64 of shape [{self.images.shape[0]}], "
                f"got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.groups is not None and self.groups.shape != self.labels.shape:
            raise ConfigError(f"dataset {self.info.name!r}: groups must have one id per image")

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self) -> torch.Tensor:
        return to_float(self.images)

    def subset(self, index: torch.Tensor) -> Dataset:
        groups = None if self.groups is None else self.groups[index]
        return replace(self, images=self.images[index], labels=self.labels[index], groups=groups)

    def split(self, fraction: float, generator: torch.Generator) -> tuple[Dataset, Dataset]:
        """Random split into (rest, held_out) with `fraction` of the samples held out."""
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"split fraction must be in (0, 1), got {fraction}")
        order = torch.randperm(len(self), generator=generator)
        n_held = max(1, round(fraction * len(self)))
        return self.subset(order[n_held:].sort().values), self.subset(order[:n_held].sort().values)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Pixels as float32 in [0, 1], whatever the stored dtype."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()
