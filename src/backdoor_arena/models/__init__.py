"""Architectures by registered id. Every model takes pixels in [0, 1] and normalises inside."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, IncompatibleError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model architecture")


class Normalize(nn.Module):
    """(x - mean) / std per channel. Buffers are not persistent: they derive from the architecture args."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """normalise -> features (convolutional) -> head. `features` is where pruning defenses look."""

    def __init__(self, normalize: Normalize, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.normalize = normalize
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.normalize(x)))


def _spatial_after(size: int, ops: Sequence[tuple[str, int]]) -> int:
    for op, k in ops:
        size = size - k + 1 if op == "conv" else size // k
        if size < 1:
            raise IncompatibleError(f"input of side {size} is too small for this architecture")
    return size


@MODELS.register("badnet-mnist")
def badnet_mnist(*, in_channels: int, num_classes: int, image_size: int, mean, std) -> nn.Module:
    """Gu et al. 2019, Table 1: conv 16@5x5, avg-pool 2, conv 32@5x5, avg-pool 2, fc 512, fc K."""
    side = _spatial_after(image_size, [("conv", 5), ("pool", 2), ("conv", 5), ("pool", 2)])
    features = nn.Sequential(
        nn.Conv2d(in_channels, 16, 5), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(16, 32, 5), nn.ReLU(), nn.AvgPool2d(2),
    )
    head = nn.Sequential(nn.Flatten(), nn.Linear(32 * side * side, 512), nn.ReLU(), nn.Linear(512, num_classes))
    return Classifier(Normalize(mean, std), features, head)


@MODELS.register("emnist-cnn")
def emnist_cnn(*, in_channels: int, num_classes: int, image_size: int, mean, std) -> nn.Module:
    """Sun et al. 2019 (the TFF EMNIST CNN): conv 32@3x3, conv 64@3x3, max-pool 2, dropout, fc 128, fc K."""
    side = _spatial_after(image_size, [("conv", 3), ("conv", 3), ("pool", 2)])
    features = nn.Sequential(
        nn.Conv2d(in_channels, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
    )
    head = nn.Sequential(
        nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, num_classes)
    )
    return Classifier(Normalize(mean, std), features, head)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


@MODELS.register("gtsrb-cnn")
def gtsrb_cnn(*, in_channels: int, num_classes: int, image_size: int, mean, std) -> nn.Module:
    """A small VGG-style network: three blocks of 3x3 conv-BN-ReLU and a max-pool (32, 64, 128 channels),
    then fc 256. One conv per block: two per block was 2.5x slower on 2 CPU cores for little accuracy."""
    widths = (32, 64, 128)
    layers: list[nn.Module] = []
    cin = in_channels
    for w in widths:
        layers += _conv_bn(cin, w) + [nn.MaxPool2d(2)]
        cin = w
    side = image_size // 2 ** len(widths)
    if side < 1:
        raise IncompatibleError(f"gtsrb-cnn needs inputs of at least 8x8 pixels, got {image_size}")
    head = nn.Sequential(
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(cin * side * side, 256), nn.ReLU(), nn.Dropout(0.3),
        nn.Linear(256, num_classes),
    )
    return Classifier(Normalize(mean, std), nn.Sequential(*layers), head)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


@MODELS.register("resnet18-cifar")
def resnet18_cifar(*, in_channels: int, num_classes: int, image_size: int, mean, std) -> nn.Module:
    """ResNet-18 (He et al. 2016) with the CIFAR stem: 3x3 conv, no max-pool; blocks 2-2-2-2."""
    layers: list[nn.Module] = [nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for i, w in enumerate((64, 128, 256, 512)):
        layers += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
        cin = w
    layers += [nn.AdaptiveAvgPool2d(1)]
    head = nn.Sequential(nn.Flatten(), nn.Linear(512, num_classes))
    return Classifier(Normalize(mean, std), nn.Sequential(*layers), head)


def architecture_args(info: Any) -> dict[str, Any]:
    """The architecture arguments that fit a dataset (a DatasetInfo)."""
    c, h, w = info.input_shape
    if h != w:
        raise IncompatibleError(f"dataset {info.name!r} has non-square {h}x{w} inputs; models expect square ones")
    mean = list(info.mean) or [0.5] * c
    std = list(info.std) or [0.5] * c
    return {"in_channels": c, "num_classes": info.num_classes, "image_size": h, "mean": mean, "std": std}


def build_model(architecture: str, args: dict[str, Any]) -> nn.Module:
    """Instantiate a registered architecture with keyword arguments (as stored in a model file)."""
    factory = MODELS.get(architecture)
    expected = {"in_channels", "num_classes", "image_size", "mean", "std"}
    if set(args) != expected:
        missing, extra = sorted(expected - set(args)), sorted(set(args) - expected)
        raise ConfigError(
            f"architecture {architecture!r} takes arguments {sorted(expected)}; missing {missing}, unexpected {extra}"
        )
    if len(args["mean"]) != args["in_channels"] or len(args["std"]) != args["in_channels"]:
        raise ConfigError("mean and std need one value per input channel")
    if any(s <= 0 for s in args["std"]):
        raise ConfigError(f"std must be positive, got {args['std']}")
    return factory(**args)


def model_names() -> list[str]:
    return MODELS.names()
