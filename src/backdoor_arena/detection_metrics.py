"""Detection metrics as pure functions over score tensors: ROC, AUROC, TPR at a fixed FPR, thresholds set
at a false-rejection rate, FAR/FRR. Scores are continuous, higher = more suspicious; labels are 1 for
positives (backdoored model, triggered input, poisoned sample) and 0 for negatives. Tested against
scikit-learn. Never feed 0/1 verdicts here: AUROC on verdicts is one point of the curve, not the curve."""

from __future__ import annotations

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
