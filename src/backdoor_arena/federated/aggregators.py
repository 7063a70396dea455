"""Server aggregation as pure functions of the stacked client updates, behind thin registered classes.

Every aggregator has one call, mirroring Flower's strategies:

    aggregate(updates [n, d], weights [n], generator, state) -> AggregationResult

`weights` are the clients' reported sample counts n_k; `generator` is the server's explicit random stream
(noise, random rule draws); `state` is a dict the round pipeline keeps for this aggregator between rounds
(for rules with memory, e.g. centered clipping's centre) and fills before every call with the round's inputs
beyond the stack: `global_weights` (w_t, flat) and, for rules whose `server_root_samples()` > 0, the
server's own `server_update` (FLTrust). The result is typed:
the update [d] the server applies (w_{t+1} = w_t + server_lr * update), which rows entered it (`selected`),
the weight each row carried (`weights`), per-client `scores` (suspicion, distance), the factor each row was
scaled by (`clip_factors`), and a flat `info` dict of diagnostics. Fields a rule does not produce are None.

An aggregator also says what an attacker may know about it (`public_params()`: e.g. max_norm, sigma) and
gives a slow obvious per-row loop `reference()` that the conformance suite checks the fast path against.

Composition is by wrapping: `norm-clip` and `gaussian-noise` take an `inner` aggregator (default FedAvg),
so weak DP = gaussian-noise(norm-clip(fedavg)); `weak-dp` is that chain under one name.

Noise placement (`noise_on`): with "average" (default) sigma is the standard deviation per coordinate of
the noise added to the aggregated (weighted-average) update, i.e. to what the server applies; this is the
reading of Sun et al. 2019 Sec. 5 ("independent Gaussian noise ... to each coordinate" of the update).
With "sum" sigma applies to the weighted sum sum_k n_k u_k before the division by sum_k n_k (the
DP-FedAvg convention of McMahan et al. 2018), so the applied update gets sigma / sum_k n_k.

The Byzantine-robust rules and MixTailor live in robust.py.

Adding a rule: one class, one registration (see docs/architecture.md):

    @AGGREGATORS.register("my-median")
    @dataclass(frozen=True)
    class MyMedian(Aggregator):
        example_params: ClassVar[dict[str, Any]] = {}
        bad_params: ClassVar[...] = (({"nope": 1}, "no parameter"),)
        param_help: ClassVar[dict[str, str]] = {}
        def aggregate(self, updates, weights, generator, state):
            check_stack(updates, weights)
            return AggregationResult(updates.median(dim=0).values)
        def reference(self, updates, weights, generator, state=None): ...  # a loop over coordinates
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry
from .components import constructor_params, make_component, public_scalars

NOISE_ON = ("average", "sum")
WEIGHTINGS = ("samples", "uniform")


@dataclass(frozen=True, eq=False)
class AggregationResult:
    """What one aggregation produced. Positions index the rows of the stack the aggregator was given."""

    update: torch.Tensor  # [d], what the server applies (times server_lr)
    selected: torch.Tensor | None = None  # int64 positions of the rows that entered the update; None = all
    weights: torch.Tensor | None = None  # [n] weight of each row in a weighted mean (unnormalised); None = not one
    scores: torch.Tensor | None = None  # [n] per-client scores (e.g. Krum scores); None = not scored
    clip_factors: torch.Tensor | None = None  # [n] factor each row was scaled by (1 = untouched); None = none
    info: dict[str, Any] = field(default_factory=dict)  # flat diagnostics: JSON scalars only

    def replace(self, **changes: Any) -> AggregationResult:
        return dataclasses.replace(self, **changes)

    def clipped(self) -> int | None:
        """How many rows were scaled down (None when the rule clips nothing)."""
        return None if self.clip_factors is None else int((self.clip_factors < 1).sum())


class Aggregator:
    """Base of the registered aggregators (frozen dataclasses): the constructor validates its parameters,
    `aggregate` computes with the pure functions below, `reference` is a slow obvious loop of the same maths,
    `public_params` is what an attacker may know (constructor scalars, minus `private_params`, merged with
    the inner rule's)."""

    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = ()
    param_help: ClassVar[dict[str, str]] = {}
    private_params: ClassVar[tuple[str, ...]] = ()  # parameters an attacker may not know (a secret seed, root data)

    def aggregate(self, updates: torch.Tensor, weights: torch.Tensor, generator: torch.Generator,
                  state: dict[str, Any]) -> AggregationResult:
        raise NotImplementedError(f"{type(self).__name__} must implement aggregate()")

    def reference(self, updates: torch.Tensor, weights: torch.Tensor, generator: torch.Generator,
                  state: dict[str, Any] | None = None) -> AggregationResult:
        """`state` holds the same round inputs as aggregate's (global_weights, server_update); a reference
        never writes to it."""
        raise NotImplementedError(f"{type(self).__name__} must implement reference() (a slow per-row loop)")

    def server_root_samples(self) -> int:
        """How many clean images the server needs for its own update each round (FLTrust's root data);
        0 = none. The pipeline then puts that update in state["server_update"] before aggregating."""
        inner = getattr(self, "inner", None)
        return inner.server_root_samples() if isinstance(inner, Aggregator) else 0

    def public_params(self) -> dict[str, Any]:
        inner = getattr(self, "inner", None)
        out = inner.public_params() if isinstance(inner, Aggregator) else {}
        out.update(public_scalars(self, constructor_params(type(self)), self.private_params))
        return out

    def round_problems(self, n_clients: int) -> list[str]:
        """One sentence per reason this rule cannot aggregate rounds of `n_clients` updates (e.g. a Byzantine
        bound: Krum needs n > 2f + 2); checked by `fl validate` and before the first round."""
        inner = getattr(self, "inner", None)
        return inner.round_problems(n_clients) if isinstance(inner, Aggregator) else []


AGGREGATORS: Registry[type[Aggregator]] = Registry("aggregator")


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


def clip_factors(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """1 / max(1, ||u_k|| / M) per row (Sun et al. 2019, Sec. 4)."""
    return 1.0 / torch.clamp(norms / max_norm, min=1.0)


def clip_updates(updates: torch.Tensor, max_norm: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row scaled to l2 norm <= max_norm; returns (clipped, norms before)."""
    norms = update_norms(updates)
    return updates * clip_factors(norms, max_norm).unsqueeze(1), norms


def gaussian_noise(shape: torch.Size | tuple[int, ...], sigma: float, generator: torch.Generator,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Independent N(0, sigma^2) per coordinate, drawn on the CPU from `generator` (device-independent)."""
    return torch.randn(shape, generator=generator, dtype=dtype) * sigma


# ---- slow obvious loops (references for the conformance suite) -----------------------------------------

def loop_weighted_mean(updates: torch.Tensor, weights: list[float]) -> torch.Tensor:
    n, d = updates.shape
    total = sum(weights)
    rows = updates.double().tolist()
    return torch.tensor([sum(weights[k] * rows[k][j] for k in range(n)) / total for j in range(d)], dtype=updates.dtype)


def loop_norm(row: torch.Tensor) -> float:
    return math.sqrt(sum(x * x for x in row.double().tolist()))


# ---- registered aggregators (thin classes: constructors validate, aggregate computes) --------------------

def _positive(name: str, value: Any, problems: list[str], allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{name} must be a finite number {bound}, got {value!r}")


def _choice(name: str, value: Any, options: tuple[str, ...], problems: list[str]) -> None:
    if value not in options:
        problems.append(f"{name} must be one of {', '.join(options)}, got {value!r}")


def _raise(kind: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"aggregator {kind!r}: " + "; ".join(problems))


_INNER_HELP = "The aggregator applied next, as a table with a name (default fedavg): composition by nesting."


@AGGREGATORS.register("fedavg")
@dataclass(frozen=True)
class FedAvg(Aggregator):
    """Weighted mean of the updates (McMahan et al. 2017): weights n_k ("samples") or 1 ("uniform")."""

    weighting: str = "samples"

    example_params: ClassVar[dict[str, Any]] = {"weighting": "samples"}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"weighting": "median"}, "weighting"),)
    param_help: ClassVar[dict[str, str]] = {
        "weighting": "Weight each client by its sample count ('samples') or equally ('uniform')."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _choice("weighting", self.weighting, WEIGHTINGS, problems)
        _raise("fedavg", problems)

    def _weights(self, weights: torch.Tensor) -> torch.Tensor:
        return weights if self.weighting == "samples" else torch.ones_like(weights)

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        w = self._weights(weights)
        return AggregationResult(weighted_mean(updates, w), weights=w.clone(), info={"weight_sum": float(w.sum())})

    def reference(self, updates, weights, generator, state=None):
        w = [float(x) if self.weighting == "samples" else 1.0 for x in weights]
        return AggregationResult(loop_weighted_mean(updates, w), weights=torch.tensor(w, dtype=weights.dtype))


def _inner(spec: Any) -> Aggregator:
    return spec if hasattr(spec, "aggregate") else make_aggregator(spec)


@AGGREGATORS.register("norm-clip")
@dataclass(frozen=True)
class NormClip(Aggregator):
    """Clip every update to l2 norm `max_norm`, then aggregate with `inner` (default FedAvg)."""

    max_norm: float = 3.0
    inner: Any = field(default_factory=FedAvg)

    example_params: ClassVar[dict[str, Any]] = {"max_norm": 1.5}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"max_norm": -2}, "max_norm"), ({"max_norm": 1.0, "inner": {"name": "fedavg", "weighting": "x"}}, "weighting"))
    param_help: ClassVar[dict[str, str]] = {
        "max_norm": "The l2 norm every client update is scaled down to, if longer.", "inner": _INNER_HELP}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("max_norm", self.max_norm, problems)
        _raise("norm-clip", problems)
        object.__setattr__(self, "inner", _inner(self.inner))

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        factors = clip_factors(update_norms(updates), self.max_norm)
        inner = self.inner.aggregate(updates * factors.unsqueeze(1), weights, generator, state)
        return _with_factors(inner, factors)

    def reference(self, updates, weights, generator, state=None):
        factors = [1.0 / max(1.0, loop_norm(u) / self.max_norm) for u in updates]
        clipped = torch.stack([u * f for u, f in zip(updates, factors, strict=True)])
        return _with_factors(self.inner.reference(clipped, weights, generator, state), torch.tensor(factors, dtype=updates.dtype))

    def public_params(self) -> dict[str, Any]:
        out = super().public_params()
        inner = self.inner.public_params().get("max_norm")
        out["max_norm"] = self.max_norm if inner is None else min(self.max_norm, inner)  # the tighter bound holds
        return out


def _with_factors(inner: AggregationResult, factors: torch.Tensor) -> AggregationResult:
    combined = factors if inner.clip_factors is None else factors * inner.clip_factors
    return inner.replace(clip_factors=combined)


@AGGREGATORS.register("gaussian-noise")
@dataclass(frozen=True)
class GaussianNoise(Aggregator):
    """Aggregate with `inner`, then add N(0, sigma^2) per coordinate to the average (noise_on="average")
    or to the weighted sum (noise_on="sum", i.e. sigma / sum of weights on the average)."""

    sigma: float = 0.025
    noise_on: str = "average"
    inner: Any = field(default_factory=FedAvg)

    example_params: ClassVar[dict[str, Any]] = {"sigma": 0.1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"sigma": -0.1}, "sigma"), ({"noise_on": "total"}, "noise_on"))
    param_help: ClassVar[dict[str, str]] = {
        "sigma": "Standard deviation of the Gaussian noise added per coordinate.",
        "noise_on": "Add the noise to the 'average' the server applies or to the weighted 'sum' (DP-FedAvg).",
        "inner": _INNER_HELP,
    }

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("sigma", self.sigma, problems, allow_zero=True)
        _choice("noise_on", self.noise_on, NOISE_ON, problems)
        _raise("gaussian-noise", problems)
        object.__setattr__(self, "inner", _inner(self.inner))

    def _std(self, inner: AggregationResult, weights: torch.Tensor) -> float:
        if self.noise_on == "average":
            return self.sigma
        used = inner.weights if inner.weights is not None else weights
        return self.sigma / float(used.sum())

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        inner = self.inner.aggregate(updates, weights, generator, state)
        std = self._std(inner, weights)
        noise = gaussian_noise(inner.update.shape, std, generator, inner.update.dtype).to(inner.update.device)
        return inner.replace(update=inner.update + noise, info={**inner.info, "noise_std": std})

    def reference(self, updates, weights, generator, state=None):
        inner = self.inner.reference(updates, weights, generator, state)
        std = self._std(inner, weights)
        noise = torch.randn(updates.shape[1], generator=generator, dtype=inner.update.dtype) * std
        return inner.replace(update=inner.update + noise)


@AGGREGATORS.register("weak-dp")
@dataclass(frozen=True)
class WeakDP(Aggregator):
    """Sun et al.'s weak differential privacy: norm clipping at `max_norm`, FedAvg, Gaussian noise `sigma`."""

    max_norm: float = 5.0
    sigma: float = 0.025
    noise_on: str = "average"
    weighting: str = "samples"

    example_params: ClassVar[dict[str, Any]] = {"max_norm": 1.5, "sigma": 0.02}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"max_norm": 0}, "max_norm"), ({"sigma": float("nan")}, "sigma"), ({"weighting": "x"}, "weighting"))
    param_help: ClassVar[dict[str, str]] = {
        "max_norm": "The l2 norm every client update is scaled down to, if longer.",
        "sigma": "Standard deviation of the Gaussian noise added per coordinate.",
        "noise_on": "Add the noise to the 'average' the server applies or to the weighted 'sum' (DP-FedAvg).",
        "weighting": "Weight each client by its sample count ('samples') or equally ('uniform').",
    }

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("max_norm", self.max_norm, problems)
        _positive("sigma", self.sigma, problems, allow_zero=True)
        _choice("noise_on", self.noise_on, NOISE_ON, problems)
        _choice("weighting", self.weighting, WEIGHTINGS, problems)
        _raise("weak-dp", problems)

    def chain(self) -> GaussianNoise:
        return GaussianNoise(self.sigma, self.noise_on, NormClip(self.max_norm, FedAvg(self.weighting)))

    def aggregate(self, updates, weights, generator, state):
        return self.chain().aggregate(updates, weights, generator, state)

    def reference(self, updates, weights, generator, state=None):
        return self.chain().reference(updates, weights, generator, state)


def make_aggregator(spec: str | dict[str, Any] | None) -> Aggregator:
    """Build from a registered name or a dict {"name": ..., params..., "inner": {...}} (nested = composed)."""
    if spec is None:
        return FedAvg()
    return make_component(AGGREGATORS, spec, "aggregator")
