"""Server aggregation as pure functions of the stacked client updates.

Every aggregator has one call, mirroring Flower's strategies:

    aggregate(updates [n, d], weights [n], generator, state) -> (update [d], info)

`weights` are the clients' sample counts n_k; `info` is a flat dict of diagnostics (norms, clip counts);
`state` is a dict the simulator keeps between rounds for aggregators that need memory (these do not).
The server then applies w_{t+1} = w_t + server_lr * update.

Composition is by wrapping: `norm-clip` and `gaussian-noise` take an `inner` aggregator (default FedAvg),
so weak DP = gaussian-noise(norm-clip(fedavg)); `weak-dp` is that chain under one name.

Noise placement (`noise_on`): with "average" (default) sigma is the standard deviation per coordinate of
the noise added to the aggregated (weighted-average) update, i.e. to what the server applies; this is the
reading of Sun et al. 2019 Sec. 5 ("independent Gaussian noise ... to each coordinate" of the update).
With "sum" sigma applies to the weighted sum sum_k n_k u_k before the division by sum_k n_k (the
DP-FedAvg convention of McMahan et al. 2018), so the applied update gets sigma / sum_k n_k.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..errors import ConfigError
from ..registry import Registry

NOISE_ON = ("average", "sum")
WEIGHTINGS = ("samples", "uniform")


class Aggregator(Protocol):
    def aggregate(
        self, updates: torch.Tensor, weights: torch.Tensor, generator: torch.Generator, state: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...


AGGREGATORS: Registry[Callable[..., Aggregator]] = Registry("aggregator")


# ---- pure functions -----------------------------------------------------------------------------------

def check_stack(updates: torch.Tensor, weights: torch.Tensor) -> None:
    if updates.ndim != 2 or updates.shape[0] < 1:
        raise ConfigError(f"updates must be a [n_clients, n_params] tensor with n_clients >= 1, got {tuple(updates.shape)}")
    if weights.shape != (updates.shape[0],):
        raise ConfigError(f"weights must have one entry per client ({updates.shape[0]}), got {tuple(weights.shape)}")
    if bool((weights < 0).any()) or not float(weights.sum()) > 0:
        raise ConfigError("weights must be non-negative with a positive sum")


def weighted_mean(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_k w_k u_k / sum_k w_k."""
    w = weights.to(updates.dtype)
    return (w @ updates) / w.sum()


def update_norms(updates: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(updates, dim=1)


def clip_updates(updates: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """u_k / max(1, ||u_k|| / M) for every row (Sun et al. 2019, Sec. 4); returns (clipped, norms before)."""
    norms = update_norms(updates)
    scale = 1.0 / torch.clamp(norms / max_norm, min=1.0)
    return updates * scale.unsqueeze(1), norms


def gaussian_noise(shape: torch.Size | tuple[int, ...], sigma: float, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Independent N(0, sigma^2) per coordinate, drawn on the CPU from `generator` (device-independent)."""
    return torch.randn(shape, generator=generator, dtype=dtype) * sigma


# ---- registered aggregators (thin classes: constructors validate, aggregate computes) --------------------

def _positive(name: str, value: Any, problems: list[str], allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{name} must be a finite number {bound}, got {value!r}")


def _raise(kind: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"aggregator {kind!r}: " + "; ".join(problems))


@AGGREGATORS.register("fedavg")
@dataclass(frozen=True)
class FedAvg:
    """Weighted mean of the updates (McMahan et al. 2017): weights n_k ("samples") or 1 ("uniform")."""

    weighting: str = "samples"

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            _raise("fedavg", [f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}"])

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        w = weights if self.weighting == "samples" else torch.ones_like(weights)
        return weighted_mean(updates, w), {"weight_sum": float(w.sum())}


def _inner(spec: Any) -> Aggregator:
    return spec if hasattr(spec, "aggregate") else make_aggregator(spec)


@AGGREGATORS.register("norm-clip")
@dataclass(frozen=True)
class NormClip:
    """Clip every update to l2 norm `max_norm`, then aggregate with `inner` (default FedAvg)."""

    max_norm: float = 3.0
    inner: Any = field(default_factory=FedAvg)

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("max_norm", self.max_norm, problems)
        _raise("norm-clip", problems)
        object.__setattr__(self, "inner", _inner(self.inner))

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        clipped, norms = clip_updates(updates, self.max_norm)
        out, info = self.inner.aggregate(clipped, weights, generator, state)
        return out, {**info, "clipped": int((norms > self.max_norm).sum()), "max_norm": self.max_norm}


@AGGREGATORS.register("gaussian-noise")
@dataclass(frozen=True)
class GaussianNoise:
    """Aggregate with `inner`, then add N(0, sigma^2) per coordinate to the average (noise_on="average")
    or to the weighted sum (noise_on="sum", i.e. sigma / sum of weights on the average)."""

    sigma: float = 0.025
    noise_on: str = "average"
    inner: Any = field(default_factory=FedAvg)

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("sigma", self.sigma, problems, allow_zero=True)
        if self.noise_on not in NOISE_ON:
            problems.append(f"noise_on must be one of {', '.join(NOISE_ON)}, got {self.noise_on!r}")
        _raise("gaussian-noise", problems)
        object.__setattr__(self, "inner", _inner(self.inner))

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        out, info = self.inner.aggregate(updates, weights, generator, state)
        std = self.sigma if self.noise_on == "average" else self.sigma / float(info.get("weight_sum", weights.sum()))
        noise = gaussian_noise(out.shape, std, generator, out.dtype).to(out.device)
        return out + noise, {**info, "noise_std": std}


@AGGREGATORS.register("weak-dp")
@dataclass(frozen=True)
class WeakDP:
    """Sun et al.'s weak differential privacy: norm clipping at `max_norm`, FedAvg, Gaussian noise `sigma`."""

    max_norm: float = 5.0
    sigma: float = 0.025
    noise_on: str = "average"
    weighting: str = "samples"

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("max_norm", self.max_norm, problems)
        _positive("sigma", self.sigma, problems, allow_zero=True)
        if self.noise_on not in NOISE_ON:
            problems.append(f"noise_on must be one of {', '.join(NOISE_ON)}, got {self.noise_on!r}")
        if self.weighting not in WEIGHTINGS:
            problems.append(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")
        _raise("weak-dp", problems)

    def aggregate(self, updates, weights, generator, state):
        chain = GaussianNoise(self.sigma, self.noise_on, NormClip(self.max_norm, FedAvg(self.weighting)))
        return chain.aggregate(updates, weights, generator, state)


def make_aggregator(spec: str | dict[str, Any] | None) -> Aggregator:
    """Build from a registered name or a dict {"name": ..., params..., "inner": {...}} (nested = composed)."""
    if spec is None:
        return FedAvg()
    if isinstance(spec, str):
        return AGGREGATORS.get(spec)()
    if not isinstance(spec, dict) or "name" not in spec:
        raise ConfigError(f"an aggregator is a registered name or a table with a 'name' key, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    factory = AGGREGATORS.get(spec["name"])
    known = set(getattr(factory, "__dataclass_fields__", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(
            f"aggregator {spec['name']!r} has no parameter(s) {', '.join(unknown)}; it takes {', '.join(sorted(known)) or 'none'}"
        )
    return factory(**params)
