"""Byzantine-robust aggregation rules and MixTailor, as pure functions over the stacked updates [n, d] behind
thin registered classes (the `Aggregator` protocol of aggregators.py).

Every rule that tolerates f Byzantine clients states its bound up front (`round_problems(n)`, checked by
`fl validate` and before the first round) and again on every call (a ConfigError, never a wrong answer):

    rule                 bound          source
    coordinate-median    n >= 2f + 1    Yin et al. 2018
    trimmed-mean         n >= 2f + 1    Yin et al. 2018 (f dropped per side and coordinate)
    krum, multi-krum     n >= 2f + 3    Blanchard et al. 2017
    bulyan               n >= 4f + 3    El Mhamdi et al. 2018
    geometric-median     n >= 2f + 1    Pillutla et al. 2022 (breakdown point 1/2)
    centered-clipping    n >= 2f + 1    Karimireddy et al. 2021
    fltrust, flame       -              trust from server root data / clustering (no f)

Pairwise distances come from one Gram matrix (n x n) of the centred stack, so Krum, Multi-Krum, Bulyan's
selection and the geometric median's Weiszfeld iterations cost one [n, d] @ [d, n] product and then work in
n-space; only the final combination touches d again. Centring first keeps float32 cancellation small
(distances are translation invariant).

Rules that need more than the stack read it from `state`, which the round pipeline fills before every
aggregation: `state["global_weights"]` (w_t, flat; FLAME clusters the local models w_t + u_i) and
`state["server_update"]` (FLTrust: the server's own update on its root data, for rules whose
`root_samples()` is > 0). State the rule keeps between rounds (centered clipping's momentum) lives in the
same dict. The robust rules weight clients equally (Byzantine clients could report any sample count);
FedAvg, norm clipping and weak DP stay in aggregators.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from .aggregators import AGGREGATORS, AggregationResult, Aggregator, _choice, _positive, _raise, check_stack, loop_norm
from .components import make_component

# ---- pure functions -----------------------------------------------------------------------------------------


def gram(updates: torch.Tensor) -> torch.Tensor:
    """X X^T of the centred rows X = U - mean(U), in float64 (n x n)."""
    x = updates - updates.mean(0, keepdim=True)
    return (x @ x.T).double()


def sq_distances_from_gram(g: torch.Tensor) -> torch.Tensor:
    """||u_i - u_j||^2 = G_ii + G_jj - 2 G_ij, clamped at 0, zero diagonal."""
    sq = g.diagonal()
    d = (sq[:, None] + sq[None, :] - 2 * g).clamp_min(0)
    return d.fill_diagonal_(0)


def pairwise_distances(updates: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """The distance matrix Krum scores: squared Euclidean for p = 2 (Blanchard et al.), else the unsquared
    l_p distance (MixTailor's Krum family, p = 1..16). float64, n x n, exactly symmetric (so that two mutual
    nearest neighbours tie exactly and the tie-break below decides, whatever the row order)."""
    if p == 2:
        d = sq_distances_from_gram(gram(updates))
    else:
        x = updates - updates.mean(0, keepdim=True)
        d = torch.cdist(x.unsqueeze(0), x.unsqueeze(0), p=p)[0].double().fill_diagonal_(0)
    return (d + d.T) / 2


def krum_scores(dist: torch.Tensor, f: int) -> torch.Tensor:
    """Per row, the sum of its distances to its n - f - 2 nearest other rows (at least 1)."""
    n = dist.shape[0]
    k = max(1, n - f - 2)
    masked = dist + torch.diag(torch.full((n,), math.inf, dtype=dist.dtype))
    return masked.topk(min(k, n - 1), dim=1, largest=False).values.sum(1) if n > 1 else torch.zeros(1, dtype=dist.dtype)


def lowest(scores: torch.Tensor, m: int, tiebreak: torch.Tensor | None = None) -> torch.Tensor:
    """Positions of the m lowest scores, as int64; equal scores are ordered by `tiebreak` (e.g. each row's
    total distance to all others: independent of the row order), then by position."""
    order = torch.arange(scores.numel())
    if tiebreak is not None:
        order = torch.argsort(tiebreak, stable=True)
    return order[torch.argsort(scores[order], stable=True)][:m]


def coordinate_median(updates: torch.Tensor) -> torch.Tensor:
    """Per coordinate median; the mean of the two middle values for even n (torch.median takes the lower)."""
    n = updates.shape[0]
    s = updates.sort(dim=0).values
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def trimmed_mean(updates: torch.Tensor, trim: int) -> torch.Tensor:
    """Per coordinate, the mean after dropping the `trim` largest and `trim` smallest values."""
    n = updates.shape[0]
    return updates.sort(dim=0).values[trim:n - trim].mean(0)


def weiszfeld(updates: torch.Tensor, alphas: torch.Tensor, nu: float, maxiter: int, ftol: float
              ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Smoothed Weiszfeld (Pillutla et al.'s RFA) in coefficient space: v = sum_i c_i u_i with distances from
    the Gram matrix. Returns (v [d], the final coefficients c [n], iterations run)."""
    g = gram(updates)
    a = alphas.double() / alphas.double().sum()
    c = a.clone()

    def distances(c: torch.Tensor) -> torch.Tensor:
        # ||x_i - X^T c||^2 = G_ii - 2 (G c)_i + c^T G c, with X centred (sum_i c_i = 1 keeps the shift out)
        gc = g @ c
        return (g.diagonal() - 2 * gc + c @ gc).clamp_min(0).sqrt()

    dist = distances(c)
    objective = float((a * dist).sum())
    it = 0
    for it in range(1, maxiter + 1):  # noqa: B007 - `it` is reported
        beta = a / dist.clamp_min(nu)
        c = beta / beta.sum()
        dist = distances(c)
        new = float((a * dist).sum())
        if abs(objective - new) < ftol * new:
            objective = new
            break
        objective = new
    return c.to(updates.dtype) @ updates, c, it


def closest_to_median_mean(updates: torch.Tensor, keep: int) -> torch.Tensor:
    """Bulyan's aggregation: per coordinate, the mean of the `keep` values closest to the coordinate median."""
    med = coordinate_median(updates)
    order = (updates - med).abs().argsort(dim=0, stable=True)[:keep]
    return updates.gather(0, order).mean(0)


def clip_rows(diff: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows scaled by min(1, tau / ||row||); returns (clipped, factors)."""
    norms = torch.linalg.vector_norm(diff, dim=1)
    factors = torch.clamp(tau / norms.clamp_min(1e-30), max=1.0)
    return diff * factors.unsqueeze(1), factors


def centered_clipping(updates: torch.Tensor, start: torch.Tensor, tau: float, iterations: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """v <- v + mean_i clip_tau(u_i - v), `iterations` times from `start` (Karimireddy et al. 2021)."""
    v = start
    factors = torch.ones(updates.shape[0], dtype=updates.dtype)
    for _ in range(iterations):
        clipped, factors = clip_rows(updates - v, tau)
        v = v + clipped.mean(0)
    return v, factors


def fltrust(updates: torch.Tensor, server_update: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cao et al. 2021: trust TS_i = ReLU(cos(u_i, g0)), rows rescaled to ||g0||, trust-weighted mean (zero when
    no row is trusted). Returns (update, trust scores, scale factors)."""
    g0 = server_update.to(updates.dtype)
    g0_norm = torch.linalg.vector_norm(g0)
    norms = torch.linalg.vector_norm(updates, dim=1).clamp_min(1e-30)
    trust = torch.relu((updates @ g0) / (norms * g0_norm.clamp_min(1e-30)))
    scale = g0_norm / norms
    total = trust.sum()
    if not float(total) > 0:
        return torch.zeros_like(g0), trust, scale
    return ((trust * scale) @ updates) / total, trust, scale


def cosine_distances_of_models(updates: torch.Tensor, global_weights: torch.Tensor) -> torch.Tensor:
    """1 - cos(W_i, W_j) of the local models W_i = w + u_i, from U U^T and U w (float64)."""
    u = updates.double()
    w = global_weights.to(updates.device).double()
    uw = u @ w
    g = u @ u.T + uw[:, None] + uw[None, :] + w @ w
    norms = g.diagonal().clamp_min(1e-300).sqrt()
    return (1 - g / (norms[:, None] * norms[None, :])).clamp_min(0).fill_diagonal_(0)


def largest_cluster(dist: torch.Tensor) -> torch.Tensor:
    """FLAME's admission: HDBSCAN (min_cluster_size = n//2 + 1, min_samples = 1, one cluster allowed) on the
    precomputed distances; positions of the largest cluster, or all rows when no cluster forms."""
    from sklearn.cluster import HDBSCAN  # scikit-learn: a runtime dependency of the robust rules

    n = dist.shape[0]
    if n < 3:
        return torch.arange(n)
    dist = torch.nan_to_num(dist, nan=2.0, posinf=2.0)  # a non-finite model is as far as cosine goes
    labels = HDBSCAN(metric="precomputed", min_cluster_size=n // 2 + 1, min_samples=1,
                     allow_single_cluster=True, copy=True).fit_predict(dist.numpy().astype("float64"))
    labels = torch.as_tensor(labels)
    found = labels[labels >= 0]
    if found.numel() == 0:
        return torch.arange(n)
    counts = torch.bincount(found)
    best = int(torch.argmax(counts))  # ties: the lower label; HDBSCAN labels are order independent here
    return torch.nonzero(labels == best).flatten()


# ---- shared validation ---------------------------------------------------------------------------------------

def _count(name: str, value: Any, problems: list[str], low: int = 0) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= 100_000):
        problems.append(f"{name} must be an integer in [{low}, 100000], got {value!r}")


_F_HELP = "How many Byzantine clients the rule must tolerate (f)."


def _bound(kind: str, n: int, f: int, need: int, formula: str) -> list[str]:
    if n >= need:
        return []
    return [f"{kind} with f = {f} needs at least {need} clients per round ({formula}), got {n}; "
            f"lower f or raise federation.clients_per_round"]


class _ByzantineRule(Aggregator):
    """Rules with a bound n >= a*f + b: checked in round_problems and on every call."""

    bound: ClassVar[tuple[int, int, str]] = (2, 1, "n >= 2f + 1")
    kind: ClassVar[str] = ""

    def __post_init__(self) -> None:
        problems: list[str] = []
        _count("f", self.f, problems)
        self._param_problems(problems)
        _raise(self.kind, problems)

    def _param_problems(self, problems: list[str]) -> None:
        """Appends what is wrong with the rule's own parameters (f is checked for every rule)."""

    def round_problems(self, n_clients: int) -> list[str]:
        a, b, formula = self.bound
        return _bound(self.kind, n_clients, self.f, a * self.f + b, formula)

    def _check(self, updates: torch.Tensor, weights: torch.Tensor) -> None:
        check_stack(updates, weights)
        problems = self.round_problems(updates.shape[0])
        if problems:
            raise ConfigError(f"aggregator {self.kind!r}: " + "; ".join(problems))


def _uniform(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.ones(n, dtype=dtype)


# ---- registered rules ------------------------------------------------------------------------------------------

@AGGREGATORS.register("coordinate-median")
@dataclass(frozen=True)
class CoordinateMedian(_ByzantineRule):
    """Per-coordinate median of the updates (Yin et al. 2018)."""

    f: int = 1

    kind: ClassVar[str] = "coordinate-median"
    example_params: ClassVar[dict[str, Any]] = {"f": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"f": -1}, "f must"),)
    param_help: ClassVar[dict[str, str]] = {"f": _F_HELP}

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        return AggregationResult(coordinate_median(updates))

    def reference(self, updates, weights, generator, state=None):
        cols = []
        for j in range(updates.shape[1]):
            v = sorted(float(x) for x in updates[:, j])
            n = len(v)
            cols.append((v[(n - 1) // 2] + v[n // 2]) / 2)
        return AggregationResult(torch.tensor(cols, dtype=updates.dtype))


@AGGREGATORS.register("trimmed-mean")
@dataclass(frozen=True)
class TrimmedMean(_ByzantineRule):
    """Per coordinate, drop the f largest and f smallest values and average the rest (Yin et al. 2018)."""

    f: int = 1

    kind: ClassVar[str] = "trimmed-mean"
    example_params: ClassVar[dict[str, Any]] = {"f": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"f": 1.5}, "f must"),)
    param_help: ClassVar[dict[str, str]] = {"f": _F_HELP + " Dropped per side and coordinate."}

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        return AggregationResult(trimmed_mean(updates, self.f), info={"trimmed_per_side": self.f})

    def reference(self, updates, weights, generator, state=None):
        n = updates.shape[0]
        cols = [sum(sorted(float(x) for x in updates[:, j])[self.f:n - self.f]) / (n - 2 * self.f)
                for j in range(updates.shape[1])]
        return AggregationResult(torch.tensor(cols, dtype=updates.dtype))


def _loop_distances(updates: torch.Tensor, p: float) -> list[list[float]]:
    rows = updates.double().tolist()
    out = []
    for a in rows:
        line = []
        for b in rows:
            if p == 2:
                line.append(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)))
            elif math.isinf(p):
                line.append(max(abs(x - y) for x, y in zip(a, b, strict=True)))
            else:
                line.append(sum(abs(x - y) ** p for x, y in zip(a, b, strict=True)) ** (1 / p))
        out.append(line)
    return out


def _loop_key(dist: list[list[float]], scores: dict[int, float], rows: list[int]):
    """Sort key of the slow references: score, then total distance to the rows considered, then position."""
    return lambda i: (scores[i], sum(dist[i][j] for j in rows), i)


def _loop_krum_scores(dist: list[list[float]], f: int, rows: list[int]) -> dict[int, float]:
    k = max(1, len(rows) - f - 2)
    scores = {}
    for i in rows:
        others = sorted(dist[i][j] for j in rows if j != i)
        scores[i] = sum(others[:k])
    return scores


def _check_p(p: Any, problems: list[str]) -> None:
    if not (isinstance(p, (int, float)) and not isinstance(p, bool) and (p >= 1 or p == math.inf)):
        problems.append(f"p must be a number >= 1 (the l_p distance), got {p!r}")


@AGGREGATORS.register("krum")
@dataclass(frozen=True)
class Krum(_ByzantineRule):
    """The update with the smallest sum of distances to its n - f - 2 nearest others (Blanchard et al. 2017);
    p = 2 squared Euclidean, any other p the unsquared l_p distance (MixTailor's pool)."""

    f: int = 1
    p: float = 2.0

    kind: ClassVar[str] = "krum"
    bound: ClassVar[tuple[int, int, str]] = (2, 3, "n >= 2f + 3")
    example_params: ClassVar[dict[str, Any]] = {"f": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"f": -2}, "f must"), ({"p": 0.5}, "p must"))
    param_help: ClassVar[dict[str, str]] = {"f": _F_HELP, "p": "The l_p distance (2: squared Euclidean, as in Krum)."}

    def _param_problems(self, problems: list[str]) -> None:
        _check_p(self.p, problems)

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        dist = pairwise_distances(updates, self.p)
        scores = krum_scores(dist, self.f)
        pick = lowest(scores, 1, dist.sum(1))
        return AggregationResult(updates[pick[0]].clone(), selected=pick, scores=scores)

    def reference(self, updates, weights, generator, state=None):
        rows = list(range(updates.shape[0]))
        dist = _loop_distances(updates, self.p)
        scores = _loop_krum_scores(dist, self.f, rows)
        best = min(rows, key=_loop_key(dist, scores, rows))
        return AggregationResult(updates[best].clone(), selected=torch.tensor([best]),
                                 scores=torch.tensor([scores[i] for i in rows], dtype=torch.float64))


@AGGREGATORS.register("multi-krum")
@dataclass(frozen=True)
class MultiKrum(_ByzantineRule):
    """The mean of the m updates with the lowest Krum scores (m = 0: n - f)."""

    f: int = 1
    m: int = 0

    kind: ClassVar[str] = "multi-krum"
    bound: ClassVar[tuple[int, int, str]] = (2, 3, "n >= 2f + 3")
    example_params: ClassVar[dict[str, Any]] = {"f": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"m": -1}, "m must"),)
    param_help: ClassVar[dict[str, str]] = {"f": _F_HELP, "m": "How many updates to average (0: n - f)."}

    def _param_problems(self, problems: list[str]) -> None:
        _count("m", self.m, problems)

    def round_problems(self, n_clients: int) -> list[str]:
        problems = super().round_problems(n_clients)
        if self.m > n_clients:
            problems.append(f"multi-krum averages m = {self.m} updates but a round has {n_clients}")
        return problems

    def _m(self, n: int) -> int:
        return self.m or n - self.f

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        dist = pairwise_distances(updates)
        scores = krum_scores(dist, self.f)
        pick = lowest(scores, self._m(updates.shape[0]), dist.sum(1))
        return AggregationResult(updates[pick].mean(0), selected=pick, scores=scores)

    def reference(self, updates, weights, generator, state=None):
        rows = list(range(updates.shape[0]))
        dist = _loop_distances(updates, 2)
        scores = _loop_krum_scores(dist, self.f, rows)
        picks = sorted(rows, key=_loop_key(dist, scores, rows))[: self._m(len(rows))]
        mean = torch.stack([updates[i] for i in picks]).double().sum(0) / len(picks)
        return AggregationResult(mean.to(updates.dtype), selected=torch.tensor(picks),
                                 scores=torch.tensor([scores[i] for i in rows], dtype=torch.float64))


_GM_HELP = {
    "f": _F_HELP + " Only checked against n (breakdown point 1/2).",
    "maxiter": "Weiszfeld iterations at most.",
    "nu": "Smoothing: distances below nu count as nu (avoids division by zero).",
    "ftol": "Stop when the objective changes by less than ftol times itself.",
}


@AGGREGATORS.register("geometric-median")
@dataclass(frozen=True)
class GeometricMedian(_ByzantineRule):
    """The point minimising the sum of distances to the updates (smoothed Weiszfeld, batched through the Gram
    matrix; RFA, Pillutla et al. 2022). Uniform client weights."""

    f: int = 1
    maxiter: int = 100
    nu: float = 1e-6
    ftol: float = 1e-10

    kind: ClassVar[str] = "geometric-median"
    example_params: ClassVar[dict[str, Any]] = {"f": 2, "maxiter": 50}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"maxiter": 0}, "maxiter"), ({"nu": -1}, "nu"))
    param_help: ClassVar[dict[str, str]] = dict(_GM_HELP)

    def _param_problems(self, problems: list[str]) -> None:
        _count("maxiter", self.maxiter, problems, low=1)
        _positive("nu", self.nu, problems)
        _positive("ftol", self.ftol, problems, allow_zero=True)

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        v, c, it = weiszfeld(updates, _uniform(updates.shape[0]), self.nu, self.maxiter, self.ftol)
        return AggregationResult(v, weights=c, info={"iterations": it})

    def reference(self, updates, weights, generator, state=None):
        rows = updates.double()
        n = rows.shape[0]
        v = rows.mean(0)

        def objective(v: torch.Tensor) -> float:
            return sum(loop_norm(rows[i] - v) for i in range(n))

        obj = objective(v)
        c = torch.full((n,), 1.0 / n, dtype=torch.float64)
        for _ in range(self.maxiter):
            beta = torch.tensor([1 / n / max(self.nu, loop_norm(rows[i] - v)) for i in range(n)], dtype=torch.float64)
            c = beta / beta.sum()
            v = sum(c[i] * rows[i] for i in range(n))
            new = objective(v)
            if abs(obj - new) < self.ftol * new:
                break
            obj = new
        return AggregationResult(v.to(updates.dtype), weights=c)


BULYAN_SELECTIONS = ("krum", "geometric-median", "coordinate-median", "mean")
BULYAN_AGGREGATIONS = ("closest-to-median", "krum", "geometric-median", "coordinate-median", "mean")


def _rule_output(rule: str, updates: torch.Tensor, f: int) -> torch.Tensor:
    if rule == "krum":
        dist = pairwise_distances(updates)
        return updates[lowest(krum_scores(dist, f), 1, dist.sum(1))[0]]
    if rule == "geometric-median":
        return weiszfeld(updates, _uniform(updates.shape[0]), 1e-6, 100, 1e-10)[0]
    if rule == "coordinate-median":
        return coordinate_median(updates)
    return updates.mean(0)


def bulyan_select(updates: torch.Tensor, f: int, theta: int, selection: str) -> torch.Tensor:
    """theta rows picked one at a time: the Krum winner of the rows left (selection "krum"), or the row closest
    to the selection rule's output on the rows left. Returns positions (int64)."""
    remaining = list(range(updates.shape[0]))
    picks: list[int] = []
    dist = pairwise_distances(updates) if selection == "krum" else None
    for _ in range(theta):
        idx = torch.tensor(remaining)
        if dist is not None:
            sub = dist[idx][:, idx]
            local = int(lowest(krum_scores(sub, f), 1, sub.sum(1))[0])
        else:
            out = _rule_output(selection, updates[idx], f)
            local = int(lowest(torch.linalg.vector_norm(updates[idx] - out, dim=1).double(), 1)[0])
        picks.append(remaining.pop(local))
    return torch.tensor(picks, dtype=torch.int64)


@AGGREGATORS.register("bulyan")
@dataclass(frozen=True)
class Bulyan(_ByzantineRule):
    """El Mhamdi et al. 2018: select theta = n - 2f updates one by one (Krum on the rows left), then per
    coordinate average the beta = theta - 2f values closest to the median. `selection` and `aggregation`
    swap either step for another rule (MixTailor's Bulyan family)."""

    f: int = 1
    selection: str = "krum"
    aggregation: str = "closest-to-median"

    kind: ClassVar[str] = "bulyan"
    bound: ClassVar[tuple[int, int, str]] = (4, 3, "n >= 4f + 3")
    example_params: ClassVar[dict[str, Any]] = {"f": 1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"selection": "best"}, "selection"), ({"aggregation": "x"}, "aggregation"))
    param_help: ClassVar[dict[str, str]] = {
        "f": _F_HELP,
        "selection": "How each of the n - 2f selected updates is picked: " + ", ".join(BULYAN_SELECTIONS) + ".",
        "aggregation": "How the selected updates are combined: " + ", ".join(BULYAN_AGGREGATIONS) + ".",
    }

    def _param_problems(self, problems: list[str]) -> None:
        _choice("selection", self.selection, BULYAN_SELECTIONS, problems)
        _choice("aggregation", self.aggregation, BULYAN_AGGREGATIONS, problems)

    def _combine(self, chosen: torch.Tensor) -> torch.Tensor:
        if self.aggregation == "closest-to-median":
            return closest_to_median_mean(chosen, chosen.shape[0] - 2 * self.f)
        return _rule_output(self.aggregation, chosen, self.f)

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        theta = updates.shape[0] - 2 * self.f
        picks = bulyan_select(updates, self.f, theta, self.selection)
        return AggregationResult(self._combine(updates[picks]), selected=picks)

    def reference(self, updates, weights, generator, state=None):
        theta = updates.shape[0] - 2 * self.f
        if self.selection != "krum":  # the other selections reuse the fast rule outputs; only Krum's loop differs
            picks = bulyan_select(updates, self.f, theta, self.selection).tolist()
        else:
            dist = _loop_distances(updates, 2)
            remaining, picks = list(range(updates.shape[0])), []
            for _ in range(theta):
                scores = _loop_krum_scores(dist, self.f, remaining)
                best = min(remaining, key=_loop_key(dist, scores, remaining))
                picks.append(best)
                remaining.remove(best)
        chosen = updates[torch.tensor(picks)]
        if self.aggregation != "closest-to-median":
            return AggregationResult(self._combine(chosen), selected=torch.tensor(picks))
        keep = theta - 2 * self.f
        cols = []
        for j in range(updates.shape[1]):
            v = sorted(float(x) for x in chosen[:, j])
            med = (v[(theta - 1) // 2] + v[theta // 2]) / 2
            near = sorted(v, key=lambda x: abs(x - med))[:keep]
            cols.append(sum(near) / keep)
        return AggregationResult(torch.tensor(cols, dtype=updates.dtype), selected=torch.tensor(picks))


@AGGREGATORS.register("centered-clipping")
@dataclass(frozen=True)
class CenteredClipping(_ByzantineRule):
    """Karimireddy et al. 2021: from the previous round's aggregate v (kept in the server state, 0 at first),
    `iterations` times v <- v + mean_i clip_tau(u_i - v). The paper's tau = 100 is for momentum gradients;
    here the updates are model deltas (median norm ~0.5 on MNIST writers), hence the smaller default."""

    f: int = 1
    tau: float = 1.0
    iterations: int = 1

    kind: ClassVar[str] = "centered-clipping"
    example_params: ClassVar[dict[str, Any]] = {"f": 2, "tau": 0.5, "iterations": 3}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"tau": 0}, "tau"), ({"iterations": 0}, "iterations"))
    param_help: ClassVar[dict[str, str]] = {
        "f": _F_HELP + " Only checked against n.", "tau": "The clipping radius around the current centre.",
        "iterations": "Clipping iterations per round (L)."}

    def _param_problems(self, problems: list[str]) -> None:
        _positive("tau", self.tau, problems)
        _count("iterations", self.iterations, problems, low=1)

    def aggregate(self, updates, weights, generator, state):
        self._check(updates, weights)
        start = state.get("centre")
        start = torch.zeros(updates.shape[1], dtype=updates.dtype) if start is None else start.to(updates.dtype)
        v, factors = centered_clipping(updates, start, self.tau, self.iterations)
        state["centre"] = v.detach().clone()
        return AggregationResult(v, clip_factors=factors, info={"clipped_rows": int((factors < 1).sum())})

    def reference(self, updates, weights, generator, state=None):
        rows = updates.double()
        start = (state or {}).get("centre")
        v = torch.zeros(rows.shape[1], dtype=torch.float64) if start is None else start.double()
        factors = [1.0] * rows.shape[0]
        for _ in range(self.iterations):
            factors = [min(1.0, self.tau / max(loop_norm(r - v), 1e-30)) for r in rows]
            v = v + sum(f * (r - v) for f, r in zip(factors, rows, strict=True)) / rows.shape[0]
        return AggregationResult(v.to(updates.dtype), clip_factors=torch.tensor(factors, dtype=updates.dtype))


def _needs(state: dict[str, Any] | None, key: str, kind: str) -> torch.Tensor:
    value = (state or {}).get(key)
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"aggregator {kind!r} needs state[{key!r}] (the round pipeline and the Flower strategy "
                          f"provide it); call aggregate() with it set")
    return value


@AGGREGATORS.register("fltrust")
@dataclass(frozen=True)
class FLTrust(Aggregator):
    """Cao et al. 2021: the server trains its own update g0 on `root_samples` clean images it holds (drawn
    from the test split outside the evaluation subset); each client's trust is ReLU(cos(u_i, g0)), its
    update is rescaled to ||g0||, and the trust-weighted mean is applied."""

    root_samples: int = 100

    private_params: ClassVar[tuple[str, ...]] = ()
    example_params: ClassVar[dict[str, Any]] = {"root_samples": 50}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"root_samples": 0}, "root_samples"),)
    param_help: ClassVar[dict[str, str]] = {
        "root_samples": "Clean images the server trains its own reference update on (its root data set)."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _count("root_samples", self.root_samples, problems, low=1)
        _raise("fltrust", problems)

    def server_root_samples(self) -> int:
        return self.root_samples

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        g0 = _needs(state, "server_update", "fltrust")
        update, trust, scale = fltrust(updates, g0)
        return AggregationResult(update, weights=trust.double(), scores=trust.double(), clip_factors=scale,
                                 info={"trusted_rows": int((trust > 0).sum())})

    def reference(self, updates, weights, generator, state=None):
        g0 = _needs(state, "server_update", "fltrust").double()
        g0n = loop_norm(g0)
        rows = updates.double()
        trust, scale = [], []
        for r in rows:
            rn = max(loop_norm(r), 1e-30)
            trust.append(max(0.0, float(r @ g0) / (rn * max(g0n, 1e-30))))
            scale.append(g0n / rn)
        total = sum(trust)
        v = sum(t * s * r for t, s, r in zip(trust, scale, rows, strict=True)) / total if total > 0 \
            else torch.zeros_like(g0)
        t = torch.tensor(trust, dtype=torch.float64)
        return AggregationResult(v.to(updates.dtype), weights=t, scores=t,
                                 clip_factors=torch.tensor(scale, dtype=updates.dtype))


@AGGREGATORS.register("flame")
@dataclass(frozen=True)
class Flame(Aggregator):
    """Nguyen et al. 2022: HDBSCAN on the cosine distances of the local models w_t + u_i admits the largest
    cluster; admitted updates are clipped to S = the median update norm (over all n) and averaged; Gaussian
    noise of standard deviation noise_lambda * S is added per coordinate."""

    noise_lambda: float = 0.001

    example_params: ClassVar[dict[str, Any]] = {"noise_lambda": 0.01}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"noise_lambda": -1}, "noise_lambda"),)
    param_help: ClassVar[dict[str, str]] = {
        "noise_lambda": "Noise level: the standard deviation per coordinate is noise_lambda times the clipping bound."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("noise_lambda", self.noise_lambda, problems, allow_zero=True)
        _raise("flame", problems)

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        w = _needs(state, "global_weights", "flame")
        finite = torch.nonzero(torch.isfinite(updates).all(1)).flatten()  # a NaN/inf row is never admitted
        admitted = finite[largest_cluster(cosine_distances_of_models(updates[finite], w))]
        norms = torch.linalg.vector_norm(updates, dim=1)
        bound = float(coordinate_median(norms.unsqueeze(1))[0])
        factors = torch.clamp(bound / norms.clamp_min(1e-30), max=1.0)
        mean = (updates[admitted] * factors[admitted].unsqueeze(1)).mean(0)
        noise = torch.randn(updates.shape[1], generator=generator, dtype=updates.dtype) * (self.noise_lambda * bound)
        return AggregationResult(mean + noise.to(updates.device), selected=admitted, clip_factors=factors,
                                 info={"admitted": int(admitted.numel()), "clip_bound": bound,
                                       "noise_std": self.noise_lambda * bound})

    def reference(self, updates, weights, generator, state=None):
        w = _needs(state, "global_weights", "flame").double()
        finite = [i for i in range(updates.shape[0]) if bool(torch.isfinite(updates[i]).all())]
        models = [w + updates[i].double() for i in finite]
        n = len(models)
        dist = torch.zeros(n, n, dtype=torch.float64)
        for i in range(n):
            for j in range(n):
                if i != j:
                    cos = float(models[i] @ models[j]) / (loop_norm(models[i]) * loop_norm(models[j]))
                    dist[i, j] = max(0.0, 1 - cos)
        admitted = [finite[i] for i in largest_cluster(dist).tolist()]
        norms = sorted(loop_norm(r) for r in updates)
        bound = (norms[(len(norms) - 1) // 2] + norms[len(norms) // 2]) / 2
        factors = [min(1.0, bound / max(loop_norm(r), 1e-30)) for r in updates]
        mean = sum(factors[i] * updates[i].double() for i in admitted) / len(admitted)
        noise = torch.randn(updates.shape[1], generator=generator, dtype=updates.dtype) * (self.noise_lambda * bound)
        return AggregationResult(mean.to(updates.dtype) + noise, selected=torch.tensor(admitted),
                                 clip_factors=torch.tensor(factors, dtype=updates.dtype))


# ---- MixTailor ---------------------------------------------------------------------------------------------

def default_pool() -> list[Any]:
    """MixTailor's families (official code, option `stochastic`): Krum under l_p distances, coordinate median,
    geometric median, and Bulyan with every (selection, aggregation) pair of {Krum, GeoMed, CoMed, Mean}.
    The code repeats CoMed and GeoMed 16 times each; duplicates only change the draw probabilities, so the
    default keeps each family's distinct members."""
    pool: list[Any] = [{"name": "krum", "p": p} for p in (1, 2, 4, 8, 16)]
    pool += ["coordinate-median", "geometric-median"]
    rules = ("krum", "geometric-median", "coordinate-median", "mean")
    pool += [{"name": "bulyan", "selection": s, "aggregation": a} for s in rules for a in rules]
    return pool


def rule_label(spec: Any) -> str:
    """"krum(f=2,p=1)": the name and its scalar parameters; a list shows its length ("pool=[8]")."""
    if isinstance(spec, str):
        return spec
    params = ",".join(f"{k}=[{len(v)}]" if isinstance(v, (list, tuple)) else f"{k}={v}"
                      for k, v in spec.items() if k != "name")
    return f"{spec['name']}({params})" if params else str(spec["name"])


@AGGREGATORS.register("mixtailor")
@dataclass(frozen=True)
class MixTailor(Aggregator):
    """Ramezani-Kebrya et al. 2022: every round, one rule drawn uniformly from `pool` with the server's seeded
    generator aggregates (so an attacker cannot tailor to the rule it will meet). Pool members are any
    registered aggregators, by name or table; members that take `f` and do not set it get this rule's f. The
    draw is recorded in `info` (rule, rule_index); each member keeps its own state between rounds."""

    pool: Any = field(default_factory=default_pool)
    f: int = 1

    example_params: ClassVar[dict[str, Any]] = {"pool": ["krum", "coordinate-median", "geometric-median"], "f": 1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"pool": []}, "pool"), ({"pool": ["krum", "no-such-rule"]}, "no-such-rule"), ({"f": -1}, "f must"))
    param_help: ClassVar[dict[str, str]] = {
        "pool": "The rules to draw from: registered aggregator names or tables (default: MixTailor's Krum l_p, "
                "median, geometric median and Bulyan families).",
        "f": _F_HELP + " Given to every member that takes f and does not set it."}

    def __post_init__(self) -> None:
        problems: list[str] = []
        _count("f", self.f, problems)
        pool = self.pool
        if not isinstance(pool, (list, tuple)) or not 1 <= len(pool) <= 256:
            problems.append(f"pool must be a list of 1 to 256 aggregators, got {pool!r}")
        _raise("mixtailor", problems)
        specs, members = [], []
        for given in pool:
            spec = {"name": given} if isinstance(given, str) else dict(given)
            cls = AGGREGATORS.get(spec.get("name", "")) if isinstance(spec.get("name"), str) else None
            if cls is not None and "f" in getattr(cls, "__dataclass_fields__", {}) and "f" not in spec:
                spec["f"] = self.f
            members.append(make_component(AGGREGATORS, spec, "mixtailor pool member"))
            specs.append(given)  # labelled as the user wrote it (f comes from the pool)
        object.__setattr__(self, "members", tuple(members))
        object.__setattr__(self, "labels", tuple(rule_label(s) for s in specs))

    def draw(self, generator: torch.Generator) -> int:
        return int(torch.randint(len(self.members), (1,), generator=generator))

    def round_problems(self, n_clients: int) -> list[str]:
        out: list[str] = []
        for label, member in zip(self.labels, self.members, strict=True):
            out += [f"pool member {label}: {p}" for p in member.round_problems(n_clients)]
        return out

    def server_root_samples(self) -> int:
        return max((getattr(m, "server_root_samples", lambda: 0)() for m in self.members), default=0)

    def public_params(self) -> dict[str, Any]:
        return {"f": self.f, "pool": ";".join(self.labels)}

    @staticmethod
    def _member_state(state: dict[str, Any], i: int) -> dict[str, Any]:
        sub = state.setdefault(f"member{i}", {})
        for key in ("global_weights", "server_update"):
            if key in state:
                sub[key] = state[key]
        return sub

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        i = self.draw(generator)
        res = self.members[i].aggregate(updates, weights, generator, self._member_state(state, i))
        return res.replace(info={**res.info, "rule": self.labels[i], "rule_index": i})

    def reference(self, updates, weights, generator, state=None):
        i = self.draw(generator)
        res = self.members[i].reference(updates, weights, generator, self._member_state(dict(state or {}), i))
        return res.replace(info={**res.info, "rule": self.labels[i], "rule_index": i})
