"""Client attacks: what the malicious clients of a round send (registry CLIENT_ATTACKS).

One call per attack: `craft(ctx: AttackContext) -> AttackResult`. The context holds what the attackers of
the round know: the global model and its flat weights w_t, their own data, the round, a seed, how many of
them were sampled and their client ids and reported weights, the server learning rate, the aggregator's
public parameters (`aggregator.public_params()`, e.g. max_norm) and the rule itself (`aggregator`, to simulate;
a MixTailor rule shows its pool, never its draw). An attack whose class declares
`omniscient = True` also sees the round's benign updates [n_benign, d] and their weights (tailored attacks:
ALIE, IPM, Fang et al.); every other attack gets None there. The result holds one update per malicious
client ([m, d], in the order of `ctx.malicious_ids`) and a flat dict of diagnostics.

The model-replacement attacks of Sun et al. 2019 (Bagdasaryan et al.; Sun et al. Eq. 1): the attackers of a
round train one backdoored model w* from w_t on D_mal (relabelled target 7s) plus clean samples of the true
distribution, and each of the m attackers sends beta * (w* - w_t) with
beta = sum_k n_k / (server_lr * m * n_a), so their combined weighted share replaces w_t by w*
("several attackers split the update evenly").
- `unconstrained`: plain SGD to w*.
- `norm-bounded`: projected gradient descent, every step projected onto the l2 ball of radius
  norm_bound / beta around w_t, so each boosted update has norm <= norm_bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .engines import LocalTraining, sgd_local
from .task import AttackerData


@dataclass(frozen=True, eq=False)
class AttackContext:
    """What the attackers of one round see. `model` is a copy holding w_t: an attack may use it freely."""

    model: nn.Module
    global_weights: torch.Tensor  # w_t, flat [d]
    data: AttackerData  # the attackers' own data
    round: int
    seed: int  # for the attackers' own random draws (batches); dropout is seeded by the pipeline
    n_malicious: int  # m, the malicious clients sampled this round
    malicious_ids: tuple[int, ...]  # their client (writer) ids; result rows follow this order
    malicious_weights: torch.Tensor  # [m] float64, the sample count each one reports to the server
    weight_sum: float  # sum of reported sample counts over every client of the round, attackers included
    server_lr: float
    aggregator_params: Mapping[str, Any] = field(default_factory=dict)  # aggregator.public_params()
    benign_updates: torch.Tensor | None = None  # [n_benign, d], omniscient attacks only
    benign_weights: torch.Tensor | None = None  # [n_benign], omniscient attacks only
    aggregator: Any = None  # the server's rule object (public, as its parameters are): attacks may simulate it

    @property
    def n_params(self) -> int:
        return int(self.global_weights.numel())


@dataclass(frozen=True, eq=False)
class AttackResult:
    updates: torch.Tensor  # [m, d], one row per malicious client, in ctx.malicious_ids order
    info: dict[str, Any] = field(default_factory=dict)  # flat diagnostics: JSON scalars only

    def check(self, n_malicious: int, n_params: int, name: str = "attack") -> None:
        shape = (n_malicious, n_params)
        if not isinstance(self.updates, torch.Tensor) or tuple(self.updates.shape) != shape:
            got = tuple(self.updates.shape) if isinstance(self.updates, torch.Tensor) else type(self.updates).__name__
            raise ConfigError(f"client attack {name!r} must return one update per malicious client, "
                              f"shape {shape}, got {got}")


class ClientAttack:
    """Base of the registered client attacks (frozen dataclasses: the constructor validates, `craft` computes).

    `constraint_violations` states the attack's own constraint (a norm bound, staying within the benign
    spread, ...) as a check of a result: the conformance suite asserts it holds."""

    omniscient: ClassVar[bool] = False  # True: ctx carries the round's benign updates and weights
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = ()
    param_help: ClassVar[dict[str, str]] = {}

    def craft(self, ctx: AttackContext) -> AttackResult:
        raise NotImplementedError(f"{type(self).__name__} must implement craft()")

    def constraint_violations(self, ctx: AttackContext, result: AttackResult) -> list[str]:
        """One sentence per violated constraint; [] when the result respects them (or none is stated)."""
        return []


CLIENT_ATTACKS: Registry[type[ClientAttack]] = Registry("federated client attack")


def boost_factor(ctx: AttackContext, boost: float | str) -> float:
    """beta = sum_k n_k / (server_lr * m * n_a) ("auto"), or a fixed number. n_a is the attackers' mean
    reported weight (exact: they all report the same count)."""
    if boost != "auto":
        return float(boost)
    n_a = float(ctx.malicious_weights.mean())
    return ctx.weight_sum / (ctx.server_lr * ctx.n_malicious * n_a)


def project_l2(radius: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def project(delta: torch.Tensor) -> torch.Tensor:
        norm = float(torch.linalg.vector_norm(delta))
        return delta if norm <= radius else delta * (radius / norm)

    return project


def _check_common(boost: Any, epochs: Any, lr: Any, batch_size: Any, problems: list[str]) -> None:
    if not (boost == "auto" or (isinstance(boost, (int, float)) and not isinstance(boost, bool) and boost > 0)):
        problems.append(f"boost must be 'auto' or a positive number, got {boost!r}")
    try:
        LocalTraining(epochs, batch_size, lr)
    except ConfigError as exc:
        problems.append(str(exc))


_REPLACEMENT_HELP = {
    "boost": "Boost factor beta, or 'auto' = sum of weights / (server_lr * attackers * attacker weight).",
    "epochs": "Local epochs of the attackers' training of the backdoored model.",
    "lr": "Learning rate of the attackers' SGD.",
    "batch_size": "Batch size of the attackers' SGD.",
}


@CLIENT_ATTACKS.register("unconstrained")
@dataclass(frozen=True)
class UnconstrainedAttack(ClientAttack):
    """Boosted model replacement with w* trained freely (large update norm: a baseline)."""

    boost: Any = "auto"
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 20

    example_params: ClassVar[dict[str, Any]] = {"epochs": 1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"boost": "big"}, "boost"), ({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"))
    param_help: ClassVar[dict[str, str]] = dict(_REPLACEMENT_HELP)

    def __post_init__(self) -> None:
        self._validate("unconstrained", [])

    def _validate(self, kind: str, problems: list[str]) -> None:
        _check_common(self.boost, self.epochs, self.lr, self.batch_size, problems)
        if problems:
            raise ConfigError(f"attack {kind!r}: " + "; ".join(problems))

    def radius(self, beta: float) -> float | None:
        return None

    def craft(self, ctx: AttackContext) -> AttackResult:
        beta = boost_factor(ctx, self.boost)
        radius = self.radius(beta)
        project = None if radius is None else project_l2(radius)
        idx = torch.arange(len(ctx.data.labels))
        cfg = LocalTraining(self.epochs, self.batch_size, self.lr)
        delta = sgd_local(ctx.model, ctx.global_weights, ctx.data.images, ctx.data.labels, idx, ctx.seed, cfg,
                          project=project)
        update = beta * delta  # every attacker of the round sends the same boosted update
        return AttackResult(update.unsqueeze(0).repeat(ctx.n_malicious, 1),
                            {"boost": beta, "unboosted_norm": float(torch.linalg.vector_norm(delta))})


@CLIENT_ATTACKS.register("norm-bounded")
@dataclass(frozen=True)
class NormBoundedAttack(UnconstrainedAttack):
    """PGD onto the l2 ball of radius norm_bound / beta around w_t: the boosted update has norm <= norm_bound."""

    norm_bound: float = 10.0

    example_params: ClassVar[dict[str, Any]] = {"epochs": 1, "norm_bound": 0.5}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"norm_bound": -1}, "norm_bound"), ({"boost": 0}, "boost"))
    param_help: ClassVar[dict[str, str]] = {
        **_REPLACEMENT_HELP, "norm_bound": "The l2 norm each boosted update stays within (the server's bound)."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        ok = isinstance(self.norm_bound, (int, float)) and not isinstance(self.norm_bound, bool)
        if not (ok and self.norm_bound > 0 and math.isfinite(self.norm_bound)):
            problems.append(f"norm_bound must be a positive number, got {self.norm_bound!r}")
        self._validate("norm-bounded", problems)

    def radius(self, beta: float) -> float | None:
        return self.norm_bound / beta

    def constraint_violations(self, ctx: AttackContext, result: AttackResult) -> list[str]:
        norms = torch.linalg.vector_norm(result.updates.double(), dim=1)
        worst = float(norms.max()) if norms.numel() else 0.0
        limit = self.norm_bound * (1 + 1e-5)
        return [] if worst <= limit else [f"an update has l2 norm {worst:.6g} > norm_bound {self.norm_bound}"]
