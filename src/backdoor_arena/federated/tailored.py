"""Tailored (untargeted) Byzantine attacks with full knowledge of the round's benign updates (`omniscient`):
each reads ctx.benign_updates [n_benign, d] and sends m crafted updates. Notation: mu and sigma are the
per-coordinate mean and (population) standard deviation of the benign updates, n = n_benign + m clients.

- `alie` (Baruch et al. 2019, "A Little Is Enough"): every attacker sends mu - z * sigma; z = "auto" uses the
  paper's form z_max = Phi^-1((n - s) / n) with s = floor(n/2 + 1) - m supporters needed.
- `ipm` (Xie et al. 2020, inner-product manipulation): every attacker sends -epsilon * mu (Xie et al.'s
  scaling; MixTailor's code sends -epsilon * sum/f, i.e. epsilon * n_benign / m here).
- `fang-krum` (Fang et al. 2020, against Krum): u' = -lambda * sign(mu), lambda halved from the paper's upper
  bound until Krum, simulated on the benign and crafted updates, selects a crafted one.
- `fang-trim` (Fang et al. 2020, against trimmed mean and median): per coordinate, crafted local models are
  drawn beyond the benign extremes on the side opposite to the benign direction ([w_max, b w_max] etc.,
  b = 2), in parameter space (w_t + u) as in the paper.
- `min-max` / `min-sum` (Shejwalkar & Houmansadr 2021): mu + gamma * p (p: -sigma, -mu/||mu|| or -sign(mu)),
  the largest gamma found by their halving search such that the crafted update's largest (min-max) or summed
  (min-sum) squared distance to the benign updates stays within the benign updates' own.
- `adaptive`: knows the server's rule (ctx.aggregator; for MixTailor its pool but not the draw) and picks
  epsilon in {0.1, 0.5, 1, 10, 100} minimising <aggregate(benign + m copies of -epsilon mu), mu>, averaged over
  the pool's uniform draw. This is our formulation of MixTailor's adaptive attacker (the official code picks
  epsilon per rule and averages the chosen vectors); rules that need the server's private root data
  (FLTrust) cannot be simulated and are left out of the average.

Every attack states its constraint (`constraint_violations`), which the conformance suite checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from .attacks import CLIENT_ATTACKS, AttackContext, AttackResult, ClientAttack
from .robust import krum_scores, lowest, pairwise_distances


def _benign(ctx: AttackContext, name: str) -> torch.Tensor:
    if ctx.benign_updates is None or ctx.benign_updates.shape[0] < 1:
        raise ConfigError(f"client attack {name!r} needs the round's benign updates (an omniscient attack): "
                          "a round without benign clients cannot be attacked this way")
    return ctx.benign_updates.double()


def _repeat(update: torch.Tensor, m: int, dtype: torch.dtype) -> torch.Tensor:
    return update.to(dtype).unsqueeze(0).repeat(m, 1)


def _number(name: str, value: Any, problems: list[str], low: float = 0.0, strict: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= low if strict else value < low):
        problems.append(f"{name} must be a finite number {'>' if strict else '>='} {low}, got {value!r}")


def _raise(kind: str, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"attack {kind!r}: " + "; ".join(problems))


def alie_z(n: int, m: int) -> float:
    """Baruch et al.'s z_max = Phi^-1((n - s) / n), s = floor(n/2 + 1) - m."""
    s = math.floor(n / 2 + 1) - m
    q = min(max((n - s) / n, 1e-6), 1 - 1e-6)
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(q, dtype=torch.float64)))


@CLIENT_ATTACKS.register("alie")
@dataclass(frozen=True)
class ALIE(ClientAttack):
    """Every attacker sends mu - z * sigma (per coordinate over the benign updates)."""

    z: Any = "auto"

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"z": "auto"}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"z": "big"}, "z must"), ({"z": -1}, "z must"))
    param_help: ClassVar[dict[str, str]] = {
        "z": "How many standard deviations to shift, or 'auto' for the paper's z_max from n and m."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.z != "auto":
            _number("z", self.z, problems, strict=False)
            problems = [p.replace("z must", "z must be 'auto' or") for p in problems]
        _raise("alie", problems)

    def _z(self, ctx: AttackContext) -> float:
        n = int(ctx.benign_updates.shape[0]) + ctx.n_malicious
        return alie_z(n, ctx.n_malicious) if self.z == "auto" else float(self.z)

    def craft(self, ctx: AttackContext) -> AttackResult:
        b = _benign(ctx, "alie")
        z = self._z(ctx)
        update = b.mean(0) - z * b.std(0, correction=0)
        return AttackResult(_repeat(update, ctx.n_malicious, ctx.global_weights.dtype), {"z": z})

    def constraint_violations(self, ctx, result):
        b = ctx.benign_updates.double()
        mu, sigma = b.mean(0), b.std(0, correction=0)
        gap = ((result.updates.double() - mu).abs() - self._z(ctx) * sigma).max()
        return [] if float(gap) <= 1e-5 * (1 + float(mu.abs().max())) else \
            [f"an update leaves mu +- z sigma by {float(gap):.3g}"]


@CLIENT_ATTACKS.register("ipm")
@dataclass(frozen=True)
class IPM(ClientAttack):
    """Every attacker sends -epsilon * mu: the inner product of the aggregate with mu turns negative once the
    rule lets enough of it through."""

    epsilon: float = 0.1

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"epsilon": 0.5}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"epsilon": 0}, "epsilon"),)
    param_help: ClassVar[dict[str, str]] = {"epsilon": "The scale of the reversed benign mean each attacker sends."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _number("epsilon", self.epsilon, problems)
        _raise("ipm", problems)

    def craft(self, ctx: AttackContext) -> AttackResult:
        mu = _benign(ctx, "ipm").mean(0)
        return AttackResult(_repeat(-self.epsilon * mu, ctx.n_malicious, ctx.global_weights.dtype),
                            {"epsilon": self.epsilon})

    def constraint_violations(self, ctx, result):
        target = -self.epsilon * ctx.benign_updates.double().mean(0)
        gap = float((result.updates.double() - target).abs().max())
        return [] if gap <= 1e-6 * (1 + float(target.abs().max())) else [f"an update is not -epsilon * mu ({gap:.3g})"]


def _f_of(ctx: AttackContext) -> int:
    """The f the server's rule assumes, if public; else the number of attackers."""
    f = ctx.aggregator_params.get("f") if ctx.aggregator_params else None
    return int(f) if isinstance(f, int) and not isinstance(f, bool) else ctx.n_malicious


def fang_krum_lambda0(benign: torch.Tensor, c: int) -> float:
    """Fang et al.'s upper bound on lambda, in update space (local model - w_t = u): with m_total = n_b + c,
    1 / ((m_total - 2c - 1) sqrt(d)) * min_i sum of its m_total - c - 2 nearest benign distances
    + 1 / sqrt(d) * max_i ||u_i||."""
    n_b, d = benign.shape
    total = n_b + c
    dist = pairwise_distances(benign).clamp_min(0).sqrt()
    k = total - c - 2
    first = 0.0
    if total - 2 * c - 1 > 0 and k >= 1 and n_b > 1:
        masked = dist + torch.diag(torch.full((n_b,), math.inf, dtype=dist.dtype))
        near = masked.topk(min(k, n_b - 1), dim=1, largest=False).values.sum(1)
        first = float(near.min()) / ((total - 2 * c - 1) * math.sqrt(d))
    return first + float(torch.linalg.vector_norm(benign, dim=1).max()) / math.sqrt(d)


@CLIENT_ATTACKS.register("fang-krum")
@dataclass(frozen=True)
class FangKrum(ClientAttack):
    """Fang et al.'s attack on Krum: all attackers send -lambda * sign(mu), lambda the largest of the halving
    sequence from the paper's bound for which Krum would select a crafted update (threshold 1e-5)."""

    min_lambda: float = 1e-5

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"min_lambda": -1}, "min_lambda"),)
    param_help: ClassVar[dict[str, str]] = {"min_lambda": "Stop halving lambda below this (the attack then sends it)."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _number("min_lambda", self.min_lambda, problems)
        _raise("fang-krum", problems)

    def craft(self, ctx: AttackContext) -> AttackResult:
        b = _benign(ctx, "fang-krum")
        m, f = ctx.n_malicious, _f_of(ctx)
        direction = torch.sign(b.mean(0))
        lam = fang_krum_lambda0(b, m)
        chosen = False
        while lam >= self.min_lambda:
            crafted = -lam * direction
            stack = torch.cat([b, crafted.unsqueeze(0).repeat(m, 1)])
            dist = pairwise_distances(stack)
            if int(lowest(krum_scores(dist, f), 1, dist.sum(1))[0]) >= b.shape[0]:
                chosen = True
                break
            lam /= 2
        lam = max(lam, self.min_lambda)
        return AttackResult(_repeat(-lam * direction, m, ctx.global_weights.dtype),
                            {"lambda": lam, "krum_selects_crafted": chosen})

    def constraint_violations(self, ctx, result):
        direction = torch.sign(ctx.benign_updates.double().mean(0))
        rows = result.updates.double()
        lam = rows.abs().max(dim=1).values
        bad = (rows + lam.unsqueeze(1) * direction).abs().max()
        return [] if float(bad) <= 1e-6 * (1 + float(lam.max())) else ["an update is not -lambda * sign(mu)"]


def fang_trim_intervals(benign: torch.Tensor, w: torch.Tensor, b: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per coordinate [low, high] of the crafted local models (parameter space), from the benign extremes and the
    benign direction s = sign(mu): s < 0 (decreasing) pushes up beyond w_max, else down below w_min."""
    models = w.unsqueeze(0) + benign
    w_max, w_min = models.max(0).values, models.min(0).values
    s = torch.sign(benign.mean(0))
    up_low, up_high = w_max, torch.where(w_max > 0, b * w_max, w_max / b)
    down_low, down_high = torch.where(w_min > 0, w_min / b, b * w_min), w_min
    low = torch.where(s < 0, up_low, down_low)
    high = torch.where(s < 0, up_high, down_high)
    return low, high


@CLIENT_ATTACKS.register("fang-trim")
@dataclass(frozen=True)
class FangTrim(ClientAttack):
    """Fang et al.'s attack on trimmed mean and median: crafted local models drawn uniformly per coordinate in
    the interval beyond the benign extreme on the side opposite to the benign direction (b = 2)."""

    b: float = 2.0

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"b": 2.0}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"b": 1.0}, "b must"),)
    param_help: ClassVar[dict[str, str]] = {"b": "How far beyond the benign extreme the crafted values may go (> 1)."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _number("b", self.b, problems, low=1.0)
        _raise("fang-trim", problems)

    def craft(self, ctx: AttackContext) -> AttackResult:
        bu = _benign(ctx, "fang-trim")
        w = ctx.global_weights.double()
        low, high = fang_trim_intervals(bu, w, self.b)
        g = torch.Generator().manual_seed(ctx.seed)
        u = torch.rand(ctx.n_malicious, w.numel(), generator=g, dtype=torch.float64)
        models = low + u * (high - low)
        return AttackResult((models - w).to(ctx.global_weights.dtype), {"b": self.b})

    def constraint_violations(self, ctx, result):
        w = ctx.global_weights.double()
        low, high = fang_trim_intervals(ctx.benign_updates.double(), w, self.b)
        models = w + result.updates.double()
        slack = 1e-5 * (1 + float(models.abs().max()))
        out = float(torch.maximum(low - slack - models, models - high - slack).max())
        return [] if out <= 0 else [f"a crafted value leaves its interval by {out:.3g}"]


PERTURBATIONS = ("std", "unit", "sign")


def perturbation(benign: torch.Tensor, kind: str) -> torch.Tensor:
    mu = benign.mean(0)
    if kind == "std":
        return -benign.std(0, correction=0)
    if kind == "unit":
        return -mu / torch.linalg.vector_norm(mu).clamp_min(1e-30)
    return -torch.sign(mu)


def gamma_search(ok: Any, gamma_init: float, tau: float) -> float:
    """Shejwalkar & Houmansadr's Algorithm 1: the largest gamma (to tau) for which ok(gamma) holds, 0 if none."""
    gamma, step, succ = gamma_init, gamma_init / 2, 0.0
    while abs(succ - gamma) > tau:
        if ok(gamma):
            succ = gamma
            gamma += step
        else:
            gamma -= step
        step /= 2
    return succ


def _sq_dists_to(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return ((rows - x) ** 2).sum(1)


@dataclass(frozen=True)
class _MinDistance(ClientAttack):
    perturbation: str = "std"
    gamma_init: float = 10.0
    tau: float = 1e-5

    omniscient: ClassVar[bool] = True
    objective: ClassVar[str] = ""
    example_params: ClassVar[dict[str, Any]] = {"perturbation": "std"}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"perturbation": "noise"}, "perturbation"), ({"gamma_init": 0}, "gamma_init"))
    param_help: ClassVar[dict[str, str]] = {
        "perturbation": "The direction added to the benign mean: 'std' (-sigma), 'unit' (-mu/|mu|), 'sign' (-sign mu).",
        "gamma_init": "The first gamma of the search (the paper's 10).",
        "tau": "The search stops when gamma changes by less than this."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.perturbation not in PERTURBATIONS:
            problems.append(f"perturbation must be one of {', '.join(PERTURBATIONS)}, got {self.perturbation!r}")
        _number("gamma_init", self.gamma_init, problems)
        _number("tau", self.tau, problems)
        _raise(self.objective, problems)

    def _limits(self, b: torch.Tensor) -> tuple[torch.Tensor, float]:
        dist = pairwise_distances(b)  # squared
        if self.objective == "min-max":
            return dist, float(dist.max())
        return dist, float(dist.sum(1).min())

    def _score(self, x: torch.Tensor, b: torch.Tensor) -> float:
        d = _sq_dists_to(x, b)
        return float(d.max() if self.objective == "min-max" else d.sum())

    def craft(self, ctx: AttackContext) -> AttackResult:
        b = _benign(ctx, self.objective)
        mu, p = b.mean(0), perturbation(b, self.perturbation)
        _, limit = self._limits(b)
        # ||mu + g p - u_i||^2 = a_i + g b_i + g^2 c: the search then costs O(n) per step, not O(n d)
        diff = mu - b
        a, lin, c = (diff * diff).sum(1), 2 * (diff @ p), float(p @ p)

        def score(g: float) -> float:
            d = a + g * lin + g * g * c
            return float(d.max() if self.objective == "min-max" else d.sum())

        gamma = gamma_search(lambda g: score(g) <= limit, self.gamma_init, self.tau)
        return AttackResult(_repeat(mu + gamma * p, ctx.n_malicious, ctx.global_weights.dtype), {"gamma": gamma})

    def constraint_violations(self, ctx, result):
        b = ctx.benign_updates.double()
        _, limit = self._limits(b)
        worst = max(self._score(row, b) for row in result.updates.double())
        return [] if worst <= limit * (1 + 1e-5) + 1e-9 else \
            [f"{self.objective}: distance {worst:.6g} exceeds the benign limit {limit:.6g}"]


@CLIENT_ATTACKS.register("min-max")
@dataclass(frozen=True)
class MinMax(_MinDistance):
    """mu + gamma * p with the crafted update's largest squared distance to a benign update at most the largest
    benign pairwise one."""

    objective: ClassVar[str] = "min-max"


@CLIENT_ATTACKS.register("min-sum")
@dataclass(frozen=True)
class MinSum(_MinDistance):
    """mu + gamma * p with the crafted update's summed squared distances to the benign updates at most the
    smallest such sum of a benign update."""

    objective: ClassVar[str] = "min-sum"


ADAPTIVE_EPSILONS = (0.1, 0.5, 1.0, 10.0, 100.0)


@CLIENT_ATTACKS.register("adaptive")
@dataclass(frozen=True)
class Adaptive(ClientAttack):
    """Knows the server's rule (or MixTailor's pool, not its draw): sends -epsilon * mu with the epsilon of the
    grid that minimises the expected inner product of the simulated aggregate with mu."""

    epsilons: Any = ADAPTIVE_EPSILONS

    omniscient: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"epsilons": [0.1, 1.0, 10.0]}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"epsilons": []}, "epsilons"),
                                                                     ({"epsilons": [1, -2]}, "epsilons"))
    param_help: ClassVar[dict[str, str]] = {"epsilons": "The grid of scales of the reversed benign mean to try."}

    def __post_init__(self) -> None:
        eps = self.epsilons
        ok = isinstance(eps, (list, tuple)) and 1 <= len(eps) <= 64 and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) and math.isfinite(e) and e > 0 for e in eps)
        if not ok:
            raise ConfigError(f"attack 'adaptive': epsilons must be a list of 1 to 64 positive numbers, got {eps!r}")
        object.__setattr__(self, "epsilons", tuple(float(e) for e in eps))

    def craft(self, ctx: AttackContext) -> AttackResult:
        b = _benign(ctx, "adaptive")
        rule = ctx.aggregator
        if rule is None:
            raise ConfigError("attack 'adaptive' needs the server's rule (AttackContext.aggregator); the round "
                              "pipeline provides it")
        members = list(getattr(rule, "members", ())) or [rule]
        usable = [r for r in members if r.server_root_samples() == 0]
        if not usable:
            raise ConfigError("attack 'adaptive' cannot simulate the server's rule: it needs the server's private "
                              "root data (fltrust)")
        mu = b.mean(0)
        m, dtype = ctx.n_malicious, ctx.global_weights.dtype
        weights = torch.cat([ctx.benign_weights.double(), ctx.malicious_weights.double()])
        best, best_value = self.epsilons[0], math.inf
        for eps in self.epsilons:
            stack = torch.cat([b, (-eps * mu).unsqueeze(0).repeat(m, 1)]).to(dtype)
            values = []
            for r in usable:
                g = torch.Generator().manual_seed(ctx.seed)
                out = r.aggregate(stack, weights, g, {"global_weights": ctx.global_weights.clone()})
                values.append(float(out.update.double() @ mu))
            value = sum(values) / len(values)
            if value < best_value:
                best, best_value = eps, value
        return AttackResult(_repeat(-best * mu, m, dtype),
                            {"epsilon": best, "inner_product": best_value, "rules_simulated": len(usable)})

    def constraint_violations(self, ctx, result):
        mu = ctx.benign_updates.double().mean(0)
        rows = result.updates.double()
        ok = any(float((rows + e * mu).abs().max()) <= 1e-6 * (1 + e * float(mu.abs().max())) for e in self.epsilons)
        return [] if ok else ["the update is not -epsilon * mu for an epsilon of the grid"]
