"""One calibrated verdict from many model detectors' scores.

Detector scores live on unrelated scales (Neural Cleanse's anomaly index, ABS's reversed-trigger success
rate, MNTD's meta-classifier output...), and a threshold per detector says nothing about how likely a model
is to be backdoored. A `Calibration` keeps the scores of a labelled calibration zoo (clean = 0, backdoored =
1; kept apart from any zoo the verdict is evaluated on) and turns the scores of a new model into one
probability with a logistic regression on standardised scores.

The regression is fitted on the detectors that produced a score for the model at hand: a detector that
failed (an error, or over its time budget) or that the calibration never saw is left out, and the verdict
uses the rest; the calibration rows used are those where every one of those detectors has a score. The
calibration set is small (tens of models), so refitting per subset costs milliseconds and keeps the
probability calibrated for exactly the evidence there is (imputing a missing score would not).

Files: JSON with the calibration table itself (never a pickled estimator).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError
from .safeio import atomic_write_text

FORMAT = "backdoor-arena/calibration"
VERSION = 1
MIN_PER_CLASS = 2  # fewer rows of a class than this cannot calibrate anything


def finite_or_none(value: Any) -> float | None:
    """A detector's score as a float, or None when it has none (missing, NaN, infinite, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def logistic_fit(x: np.ndarray, y: np.ndarray, c: float) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """L2-regularised logistic regression on standardised columns: (coef, intercept, mean, std).
    Columns with no spread get std 1 (they then carry no information)."""
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    std = x.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    lr = LogisticRegression(C=c, solver="lbfgs", max_iter=1000)
    lr.fit((x - mean) / std, y)
    return lr.coef_[0].astype(np.float64), float(lr.intercept_[0]), mean, std


def logistic_probability(scores: np.ndarray, coef: np.ndarray, intercept: float, mean: np.ndarray,
                         std: np.ndarray) -> float:
    z = float(((scores - mean) / std) @ coef + intercept)
    return 1.0 / (1.0 + math.exp(-z)) if z > -700 else 0.0


@dataclass(frozen=True)
class Verdict:
    """The combined verdict: `probability` that the model is backdoored (None when no calibrated detector
    produced a score), `flagged` at `threshold`, and which detectors it used or left out and why."""

    probability: float | None
    flagged: bool | None
    threshold: float
    used: list[str]
    left_out: dict[str, str]
    calibration_rows: int
    coefficients: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"probability": self.probability, "flagged": self.flagged, "threshold": self.threshold,
                "used": self.used, "left_out": self.left_out, "calibration_rows": self.calibration_rows,
                "coefficients": self.coefficients}


@dataclass(frozen=True)
class Calibration:
    """Scores of labelled calibration models, one row per model (None: that detector produced no score)."""

    detectors: tuple[str, ...]
    rows: tuple[tuple[float | None, ...], ...]
    labels: tuple[int, ...]
    c: float = 1.0
    threshold: float = 0.5
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.detectors or len(set(self.detectors)) != len(self.detectors):
            problems.append(f"detectors must be distinct names, got {list(self.detectors)}")
        if len(self.rows) != len(self.labels):
            problems.append(f"{len(self.rows)} score rows but {len(self.labels)} labels")
        if any(len(r) != len(self.detectors) for r in self.rows):
            problems.append(f"every score row must have {len(self.detectors)} entries (one per detector)")
        if any(label not in (0, 1) for label in self.labels):
            problems.append("labels must be 0 (clean) or 1 (backdoored)")
        for cls, name in ((0, "clean"), (1, "backdoored")):
            if sum(1 for label in self.labels if label == cls) < MIN_PER_CLASS:
                problems.append(f"the calibration needs at least {MIN_PER_CLASS} {name} models; add more to the "
                                f"calibration zoo")
        if not (isinstance(self.c, (int, float)) and self.c > 0):
            problems.append(f"c (inverse regularisation) must be positive, got {self.c!r}")
        if not (isinstance(self.threshold, (int, float)) and 0 < self.threshold < 1):
            problems.append(f"threshold must be a probability in (0, 1), got {self.threshold!r}")
        if problems:
            raise ConfigError("calibration: " + "; ".join(problems))

    @classmethod
    def from_reports(cls, reports: list[dict[str, Any]], labels: list[int], *, c: float = 1.0,
                     threshold: float = 0.5, source: dict[str, Any] | None = None) -> Calibration:
        """From scan reports (their `detectors` maps name -> result with `score`; `failures` names the detectors
        that produced none) and the models' labels."""
        names = sorted({n for r in reports for n in (*r.get("detectors", {}), *r.get("failures", {}))})
        rows = tuple(tuple(finite_or_none(r.get("detectors", {}).get(n, {}).get("score")) for n in names)
                     for r in reports)
        return cls(tuple(names), rows, tuple(int(label) for label in labels), c, threshold, dict(source or {}))

    def verdict(self, scores: dict[str, Any]) -> Verdict:
        """The calibrated probability for one model's detector scores (name -> score or None)."""
        left_out: dict[str, str] = {}
        used = []
        for name in sorted(scores):
            if name not in self.detectors:
                left_out[name] = "not in the calibration"
            elif finite_or_none(scores[name]) is None:
                left_out[name] = "no score (failed, over budget, or not finite)"
            else:
                used.append(name)
        for name in self.detectors:
            if name not in scores:
                left_out[name] = "not run on this model"
        if not used:
            return Verdict(None, None, self.threshold, [], left_out, 0)
        cols = [self.detectors.index(n) for n in used]
        keep = [i for i, r in enumerate(self.rows) if all(r[j] is not None for j in cols)]
        y = np.array([self.labels[i] for i in keep])
        if (y == 0).sum() < MIN_PER_CLASS or (y == 1).sum() < MIN_PER_CLASS:
            raise ConfigError(f"calibration: too few calibration models with scores from {', '.join(used)} "
                              f"({int((y == 0).sum())} clean, {int((y == 1).sum())} backdoored); recalibrate on a "
                              "zoo where these detectors ran")
        x = np.array([[self.rows[i][j] for j in cols] for i in keep], dtype=np.float64)
        coef, intercept, mean, std = logistic_fit(x, y, self.c)
        p = logistic_probability(np.array([float(scores[n]) for n in used]), coef, intercept, mean, std)
        return Verdict(p, p >= self.threshold, self.threshold, used, left_out, len(keep),
                       {n: float(w) for n, w in zip(used, coef, strict=True)})

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, "detectors": list(self.detectors),
                "rows": [list(r) for r in self.rows], "labels": list(self.labels), "c": self.c,
                "threshold": self.threshold, "source": self.source}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"calibration file {str(path)!r} does not exist; make one with "
                              "`backdoor-arena scan-calibrate ZOO --out FILE`")
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"calibration file {str(path)!r} is not JSON ({exc}); make it again with "
                              "`backdoor-arena scan-calibrate`") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ConfigError(f"{str(path)!r} is not a backdoor-arena calibration file (format {FORMAT!r})")
        if raw.get("version") != VERSION:
            raise ConfigError(f"calibration file {str(path)!r} has version {raw.get('version')!r}; this version "
                              f"reads {VERSION}: make it again with `backdoor-arena scan-calibrate`")
        try:
            rows = tuple(tuple(finite_or_none(v) for v in r) for r in raw["rows"])
            return cls(tuple(str(d) for d in raw["detectors"]), rows, tuple(int(v) for v in raw["labels"]),
                       float(raw.get("c", 1.0)), float(raw.get("threshold", 0.5)), dict(raw.get("source") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"calibration file {str(path)!r} is malformed ({type(exc).__name__}: {exc}); make it "
                              "again with `backdoor-arena scan-calibrate`") from None
