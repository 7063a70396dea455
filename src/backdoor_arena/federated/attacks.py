"""The backdoor task, the model-replacement client attacks and the adversary models of Sun et al. 2019.

Backdoor task: the 7s of `tasks` chosen "target clients" (writers) should be classified as 1. Each target
client's 7s are split in two halves: the attacker trains on one (relabelled as 1), backdoor accuracy is
measured on the other (held out). Benign clients, the target clients included, keep their correctly
labelled 7s, so benign training keeps pulling the model back.

Client attacks (registry CLIENT_ATTACKS), all model replacement (Bagdasaryan et al.; Sun et al. Eq. 1):
the attackers of a round train one backdoored model w* from w_t on D_mal (relabelled target 7s) plus
clean samples of the true distribution, and each of the m attackers sends beta * (w* - w_t) with
beta = sum_k n_k / (server_lr * m * n_a), so their combined weighted share replaces w_t by w*
("several attackers split the update evenly").
- `unconstrained`: plain SGD to w*.
- `norm-bounded`: projected gradient descent, every step projected onto the l2 ball of radius
  norm_bound / beta around w_t, so each boosted update has norm <= norm_bound.

Adversary models (registry ADVERSARIES):
- `fixed-frequency`: every `frequency` rounds, `attackers` of the sampled clients are replaced by
  attackers (epsilon = attackers / (frequency * clients_per_round) in the paper's terms).
- `random-sampling`: a fraction of all clients is malicious from the start; a round holds as many as are
  sampled, a hypergeometric count.
Target clients are never malicious (their held-out 7s measure the backdoor).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from .engines import LocalTraining, sgd_local
from .partition import FederatedData

# ---- backdoor task ----------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BackdoorTask:
    target_clients: tuple[int, ...]  # client positions in FederatedData
    attacker_index: torch.Tensor  # global sample indices of target-client sources the attacker relabels
    eval_index: torch.Tensor  # held-out target-client sources: backdoor accuracy is measured on these
    source: int = 7
    target: int = 1


def make_backdoor_task(fed: FederatedData, tasks: int, generator: torch.Generator, source: int = 7,
                       target: int = 1) -> BackdoorTask:
    """Choose `tasks` target clients among those with >= 2 images of `source`; split each one's
    source images into an attacker half and a held-out half."""
    labels = fed.dataset.labels
    eligible = [k for k, idx in enumerate(fed.indices) if int((labels[idx] == source).sum()) >= 2]
    if not 1 <= tasks <= len(eligible):
        raise ConfigError(f"backdoor.tasks must be in [1, {len(eligible)}] (clients with >= 2 images of class "
                          f"{source}), got {tasks}")
    pick = sorted(eligible[i] for i in torch.randperm(len(eligible), generator=generator)[:tasks].tolist())
    train, held = [], []
    for k in pick:
        idx = fed.indices[k]
        src = idx[labels[idx] == source]
        src = src[torch.randperm(len(src), generator=generator)]
        half = len(src) // 2
        train.append(src[:half])
        held.append(src[half:])
    return BackdoorTask(tuple(pick), torch.cat(train).sort().values, torch.cat(held).sort().values, source, target)


@dataclass(frozen=True, eq=False)
class AttackerData:
    """D_mal (relabelled) plus clean samples of the true distribution, as one small in-memory set."""

    images: torch.Tensor
    labels: torch.Tensor
    n_backdoor: int


def make_attacker_data(fed: FederatedData, task: BackdoorTask, clean_samples: int,
                       generator: torch.Generator) -> AttackerData:
    d = fed.dataset
    excluded = set(task.target_clients)
    pool = torch.cat([idx for k, idx in enumerate(fed.indices) if k not in excluded])
    clean = pool[torch.randperm(len(pool), generator=generator)[:clean_samples]]
    images = torch.cat([d.images[task.attacker_index], d.images[clean]])
    labels = torch.cat([torch.full((len(task.attacker_index),), task.target, dtype=torch.int64), d.labels[clean]])
    return AttackerData(images, labels, len(task.attacker_index))


# ---- client attacks ---------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class AttackContext:
    """What the attackers of one round see."""

    model: nn.Module
    global_weights: torch.Tensor  # w_t, flat
    data: AttackerData
    round: int
    seed: int
    n_attackers: int
    attacker_weight: float  # n_a, the sample count each attacker reports
    weight_sum: float  # sum of n_k over every client of the round, attackers included
    server_lr: float


def boost_factor(ctx: AttackContext, boost: float | str) -> float:
    """beta = sum_k n_k / (server_lr * m * n_a) ("auto"), or a fixed number."""
    if boost != "auto":
        return float(boost)
    return ctx.weight_sum / (ctx.server_lr * ctx.n_attackers * ctx.attacker_weight)


def project_l2(radius: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def project(delta: torch.Tensor) -> torch.Tensor:
        norm = float(torch.linalg.vector_norm(delta))
        return delta if norm <= radius else delta * (radius / norm)

    return project


CLIENT_ATTACKS: Registry[Callable[..., Any]] = Registry("federated client attack")


def _check_common(kind: str, boost: Any, epochs: Any, lr: Any, batch_size: Any, problems: list[str]) -> None:
    if not (boost == "auto" or (isinstance(boost, (int, float)) and not isinstance(boost, bool) and boost > 0)):
        problems.append(f"boost must be 'auto' or a positive number, got {boost!r}")
    try:
        LocalTraining(epochs, batch_size, lr)
    except ConfigError as exc:
        problems.append(str(exc))


@CLIENT_ATTACKS.register("unconstrained")
@dataclass(frozen=True)
class UnconstrainedAttack:
    """Boosted model replacement with w* trained freely (large update norm: a baseline)."""

    boost: Any = "auto"
    epochs: int = 5
    lr: float = 0.1
    batch_size: int = 20

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_common("unconstrained", self.boost, self.epochs, self.lr, self.batch_size, problems)
        if problems:
            raise ConfigError("attack 'unconstrained': " + "; ".join(problems))

    def radius(self, beta: float) -> float | None:
        return None

    def craft(self, ctx: AttackContext) -> tuple[torch.Tensor, dict[str, float]]:
        """The update each of the round's attackers sends, and diagnostics."""
        beta = boost_factor(ctx, self.boost)
        radius = self.radius(beta)
        project = None if radius is None else project_l2(radius)
        idx = torch.arange(len(ctx.data.labels))
        cfg = LocalTraining(self.epochs, self.batch_size, self.lr)
        delta = sgd_local(ctx.model, ctx.global_weights, ctx.data.images, ctx.data.labels, idx, ctx.seed, cfg,
                          project=project)
        return beta * delta, {"boost": beta, "unboosted_norm": float(torch.linalg.vector_norm(delta))}


@CLIENT_ATTACKS.register("norm-bounded")
@dataclass(frozen=True)
class NormBoundedAttack(UnconstrainedAttack):
    """PGD onto the l2 ball of radius norm_bound / beta around w_t: the boosted update has norm <= norm_bound."""

    norm_bound: float = 10.0

    def __post_init__(self) -> None:
        problems: list[str] = []
        _check_common("norm-bounded", self.boost, self.epochs, self.lr, self.batch_size, problems)
        if not (isinstance(self.norm_bound, (int, float)) and self.norm_bound > 0 and math.isfinite(self.norm_bound)):
            problems.append(f"norm_bound must be a positive number, got {self.norm_bound!r}")
        if problems:
            raise ConfigError("attack 'norm-bounded': " + "; ".join(problems))

    def radius(self, beta: float) -> float | None:
        return self.norm_bound / beta


# ---- adversary models -------------------------------------------------------------------------------------

ADVERSARIES: Registry[Callable[..., Any]] = Registry("adversary model")


@ADVERSARIES.register("fixed-frequency")
@dataclass(frozen=True)
class FixedFrequency:
    """`attackers` of the sampled clients are replaced by attackers in rounds start, start+f, start+2f, ..."""

    frequency: int = 1
    attackers: int = 1

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.frequency, int) or self.frequency < 1:
            problems.append(f"frequency must be a positive integer (attack every f rounds), got {self.frequency!r}")
        if not isinstance(self.attackers, int) or self.attackers < 1:
            problems.append(f"attackers must be a positive integer, got {self.attackers!r}")
        if problems:
            raise ConfigError("adversary 'fixed-frequency': " + "; ".join(problems))

    def setup(self, num_clients: int, excluded: Sequence[int], generator: torch.Generator) -> frozenset[int]:
        return frozenset()

    def malicious(self, round_: int, sampled: Sequence[int], excluded: Sequence[int], malicious_set: frozenset[int],
                  attack_round: int) -> list[int]:
        """Positions (client indices) among `sampled` that act maliciously; attack_round counts from the start."""
        if attack_round < 0 or attack_round % self.frequency:
            return []
        skip = set(excluded)
        return [k for k in sampled if k not in skip][: self.attackers]


@ADVERSARIES.register("random-sampling")
@dataclass(frozen=True)
class RandomSampling:
    """A fraction of all clients is malicious; a round's count is hypergeometric."""

    fraction: float = 0.033

    def __post_init__(self) -> None:
        if not (isinstance(self.fraction, (int, float)) and 0 <= self.fraction <= 1):
            raise ConfigError(f"adversary 'random-sampling': fraction must be in [0, 1], got {self.fraction!r}")

    def count(self, num_clients: int) -> int:
        return round(self.fraction * num_clients)

    def setup(self, num_clients: int, excluded: Sequence[int], generator: torch.Generator) -> frozenset[int]:
        skip = set(excluded)
        pool = [k for k in range(num_clients) if k not in skip]
        n = min(self.count(num_clients), len(pool))
        return frozenset(pool[i] for i in torch.randperm(len(pool), generator=generator)[:n].tolist())

    def malicious(self, round_: int, sampled: Sequence[int], excluded: Sequence[int], malicious_set: frozenset[int],
                  attack_round: int) -> list[int]:
        if attack_round < 0:
            return []
        return [k for k in sampled if k in malicious_set]


def make_component(registry: Registry, spec: dict[str, Any], kind: str) -> Any:
    """Build a registered client attack or adversary model from {"name": ..., params...}."""
    params = {k: v for k, v in spec.items() if k != "name"}
    factory = registry.get(spec.get("name"))
    known = set(getattr(factory, "__dataclass_fields__", {}))
    unknown = sorted(set(params) - known)
    if unknown:
        raise ConfigError(f"{kind} {spec['name']!r} has no parameter(s) {', '.join(unknown)}; "
                          f"it takes {', '.join(sorted(known))}")
    return factory(**params)
