"""Detection metrics as pure functions over score tensors: ROC, AUROC, TPR at a fixed FPR, thresholds set
at a false-rejection rate, FAR/FRR, and the uncertainty of such numbers (a bootstrap interval of the AUROC;
Wilson and Clopper-Pearson intervals of a proportion such as a false-positive rate). Scores are continuous,
higher = more suspicious; labels are 1 for positives (backdoored model, triggered input, poisoned sample)
and 0 for negatives. Tested against scikit-learn and scipy. Never feed 0/1 verdicts here: AUROC on
verdicts is one point of the curve, not the curve."""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import ConfigError


def _check(labels: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.as_tensor(labels).flatten().to(torch.long)
    scores = torch.as_tensor(scores).flatten().to(torch.float64)
    if labels.shape != scores.shape:
        raise ConfigError(f"labels ({labels.numel()}) and scores ({scores.numel()}) must have the same length")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ConfigError("labels must be 0 (negative) or 1 (positive)")
    if not bool(torch.isfinite(scores).all()):
        raise ConfigError("scores must be finite numbers")
    if not (bool((labels == 1).any()) and bool((labels == 0).any())):
        raise ConfigError("ROC metrics need at least one positive and one negative")
    return labels, scores


def roc_curve(labels: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fpr, tpr, thresholds) over every distinct score, highest threshold first, starting at (0, 0)
    with threshold +inf; "positive" means score >= threshold. Same points as sklearn's roc_curve with
    drop_intermediate=False."""
    labels, scores = _check(labels, scores)
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], labels[order]
    distinct = torch.nonzero(s[1:] != s[:-1]).flatten()
    last = torch.cat([distinct, torch.tensor([len(s) - 1])])  # last index of each block of tied scores
    tps = torch.cumsum(y, 0)[last].double()
    fps = (last + 1).double() - tps
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tps / tps[-1]])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fps / fps[-1]])
    thresholds = torch.cat([torch.tensor([float("inf")], dtype=torch.float64), s[last]])
    return fpr, tpr, thresholds


def auroc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve (trapezoids: ties count one half), = P(score_pos > score_neg) + P(=)/2."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(torch.trapezoid(tpr, fpr))


def tpr_at_fpr(labels: torch.Tensor, scores: torch.Tensor, max_fpr: float = 0.05) -> float:
    """The best true-positive rate among thresholds whose false-positive rate is at most `max_fpr`."""
    if not 0 <= max_fpr <= 1:
        raise ConfigError(f"max_fpr must be in [0, 1], got {max_fpr}")
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def threshold_at_frr(clean_scores: torch.Tensor, frr: float) -> float:
    """The score threshold that rejects (score > threshold) at most a fraction `frr` of clean inputs:
    the (1 - frr) quantile of the clean scores, taken as an observed value (no interpolation)."""
    if not 0 <= frr < 1:
        raise ConfigError(f"false-rejection rate must be in [0, 1), got {frr}")
    s = torch.as_tensor(clean_scores).flatten().to(torch.float64).sort().values
    if s.numel() == 0:
        raise ConfigError("cannot set a threshold from an empty clean set")
    k = int(torch.floor(torch.tensor(frr * s.numel())))  # how many clean inputs may be rejected
    return float(s[s.numel() - 1 - k]) if k < s.numel() else float(s[0])


def far_frr(clean_scores: torch.Tensor, triggered_scores: torch.Tensor, threshold: float) -> tuple[float, float]:
    """(false acceptance rate: triggered inputs not flagged, false rejection rate: clean inputs flagged);
    an input is flagged when its score exceeds the threshold."""
    clean = torch.as_tensor(clean_scores).flatten().double()
    trig = torch.as_tensor(triggered_scores).flatten().double()
    far = float((trig <= threshold).double().mean()) if trig.numel() else float("nan")
    frr = float((clean > threshold).double().mean()) if clean.numel() else float("nan")
    return far, frr


def precision_recall(flagged: torch.Tensor, truth: torch.Tensor) -> tuple[float, float]:
    """Precision and recall of a boolean selection against boolean ground truth."""
    flagged, truth = torch.as_tensor(flagged).bool().flatten(), torch.as_tensor(truth).bool().flatten()
    if flagged.shape != truth.shape:
        raise ConfigError("flagged and truth must have the same length")
    tp = int((flagged & truth).sum())
    precision = tp / int(flagged.sum()) if flagged.any() else float("nan")
    recall = tp / int(truth.sum()) if truth.any() else float("nan")
    return precision, recall


# --------------------------------------------------------------------------- uncertainty of the numbers
MAX_PAIRS = 4_000_000  # above this many (positive, negative) pairs the bootstrap loops instead of a pair matrix


def _check_level(level: float) -> float:
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level < 1:
        raise ConfigError(f"level must be a number in (0, 1), e.g. 0.95; got {level!r}")
    return float(level)


def auroc_bootstrap_ci(labels: torch.Tensor, scores: torch.Tensor, n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """A stratified percentile-bootstrap interval of the AUROC at confidence `level`.

    Each of `n_boot` replicates resamples the positives and the negatives separately, with replacement
    and at their own counts (so every replicate has both classes and the class balance of the data), and
    computes the AUROC (ties count one half); the interval is the (1 - level) / 2 and (1 + level) / 2
    quantiles of the replicates (linear interpolation, as numpy's default). The draws are, from
    `torch.Generator().manual_seed(seed)`: first the positive indices `randint(n_pos, (n_boot, n_pos))`,
    then the negative ones `randint(n_neg, (n_boot, n_neg))` (positives and negatives in their order in
    `labels`), so a reference implementation can repeat them. With few models the interval is wide and
    it is only as good as the sample is representative: the bootstrap cannot see models unlike any drawn.
    """
    labels, scores = _check(labels, scores)
    level = _check_level(level)
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer number of bootstrap replicates, got {n_boot!r}")
    pos, neg = scores[labels == 1], scores[labels == 0]
    g = torch.Generator().manual_seed(int(seed))
    pi = torch.randint(len(pos), (n_boot, len(pos)), generator=g)
    ni = torch.randint(len(neg), (n_boot, len(neg)), generator=g)
    if len(pos) * len(neg) <= MAX_PAIRS:
        # wins[i, j] = 1 if positive i outscores negative j, 1/2 on a tie; a replicate's AUROC is the mean of
        # wins over its (multiset of) pairs = counts_pos^T wins counts_neg / (n_pos n_neg)
        wins = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
        cp = torch.zeros(n_boot, len(pos), dtype=torch.float64).scatter_add_(1, pi, torch.ones_like(pi, dtype=torch.float64))
        cn = torch.zeros(n_boot, len(neg), dtype=torch.float64).scatter_add_(1, ni, torch.ones_like(ni, dtype=torch.float64))
        reps = torch.einsum("bi,ij,bj->b", cp, wins, cn) / (len(pos) * len(neg))
    else:
        y = torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])
        reps = torch.tensor([auroc(y, torch.cat([pos[pi[b]], neg[ni[b]]])) for b in range(n_boot)],
                            dtype=torch.float64)
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(reps, q).tolist()
    return lo, hi


def _check_count(k: int, n: int) -> None:
    for name, v in (("k", k), ("n", n)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ConfigError(f"{name} must be an integer count, got {v!r}")
    if n < 1 or not 0 <= k <= n:
        raise ConfigError(f"a proportion needs n >= 1 and 0 <= k <= n; got k={k}, n={n}")


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a proportion k / n at confidence `level` (Wilson 1927): the p whose
    normal-approximation test is not rejected. Unlike the Wald interval it stays inside [0, 1] and is not
    empty at k = 0 or k = n (0 of 20 gives [0, 0.161] at 95%)."""
    _check_count(k, n)
    z = float(torch.special.ndtri(torch.tensor((1 + _check_level(level)) / 2, dtype=torch.float64)))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    # exact ends at k = 0 and k = n (the formula gives them up to rounding)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if k >= n else 0.0
    j = torch.arange(k + 1, dtype=torch.float64)
    logc = torch.lgamma(torch.tensor(n + 1.0, dtype=torch.float64)) - torch.lgamma(j + 1) - torch.lgamma(n - j + 1)
    return float(torch.logsumexp(logc + j * math.log(p) + (n - j) * math.log1p(-p), 0).exp().clamp(0, 1))


def clopper_pearson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a proportion k / n: the p for which neither tail of
    Binomial(n, p) at k has probability below (1 - level) / 2. Conservative (coverage >= level); found
    by bisection on the binomial tails to 1e-12."""
    _check_count(k, n)
    alpha = (1 - _check_level(level)) / 2

    def solve(f: Any) -> float:  # f increasing in p on [0, 1]: the p where f(p) = 0
        a, b = 0.0, 1.0
        for _ in range(60):
            m = (a + b) / 2
            a, b = (m, b) if f(m) < 0 else (a, m)
        return (a + b) / 2

    lo = 0.0 if k == 0 else solve(lambda p: (1 - _binom_cdf(k - 1, n, p)) - alpha)  # P(X >= k) = alpha
    hi = 1.0 if k == n else solve(lambda p: alpha - _binom_cdf(k, n, p))  # P(X <= k) = alpha
    return lo, hi
