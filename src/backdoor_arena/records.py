"""The one record type: a flat, JSON-safe measurement that every verb writes (JSONL, one per line).

    Record(verb="defend", run_id=..., seed=0, config={...}, metrics={"clean_accuracy": 0.98, ...})
      .to_dict() -> {"verb": "defend", "run_id": ..., "seed": 0, "config": {...}, "versions": {...},
                     "clean_accuracy": 0.98, ..., <subject fields>}

Metric names are uniform across verbs (METRIC_NAMES): a federated round says `attack_success_rate`, as an
attack or a defense does. Plots and tables are made from records, never from live objects.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# The uniform names; a verb may add its own, but never a synonym of one of these.
METRIC_NAMES = (
    "clean_accuracy", "attack_success_rate", "robust_accuracy", "auroc", "score", "flagged", "far", "frr",
    "wall_s",
)
_RESERVED = ("verb", "run_id", "seed", "config", "versions")


def json_safe(obj: Any) -> Any:
    """Standard JSON: tensors become lists, tuples lists, NaN and infinities null (e.g. an unbounded
    epsilon), paths strings."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def run_id(verb: str, config: Mapping[str, Any], seed: int | None) -> str:
    """A deterministic id: the same verb, config and seed name the same run (sweeps can resume on it)."""
    blob = json.dumps({"verb": verb, "config": json_safe(config), "seed": seed}, sort_keys=True, default=str)
    return f"{verb}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


@dataclass(frozen=True)
class Record:
    """One measurement. `metrics` holds numbers under METRIC_NAMES where one applies; `subject` says what
    was measured (model file, detector, round, variant, ...). Both are flattened into the JSON object."""

    verb: str
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    subject: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    run_id: str = ""

    def __post_init__(self) -> None:
        clash = sorted(set(self.metrics) & set(self.subject)) + sorted(
            k for k in (*self.metrics, *self.subject) if k in _RESERVED)
        if clash:
            raise ValueError(f"record fields {clash} are given twice or shadow reserved names")
        if not self.run_id:
            object.__setattr__(self, "run_id", run_id(self.verb, self.config, self.seed))

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"verb": self.verb, "run_id": self.run_id, "seed": self.seed, "config": dict(self.config),
                          "versions": dict(self.versions), **self.subject, **self.metrics})


def write_jsonl(path: str | Path, records: Iterable[Record | Mapping[str, Any]], append: bool = False) -> Path:
    """Records (or flat dicts) as JSON lines; NaN is written as null, never as a bare literal. `append` adds
    to an existing file (a sweep writing each result as it comes, so that an interruption loses none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w") as fh:
        for r in records:
            obj = r.to_dict() if isinstance(r, Record) else json_safe(r)
            fh.write(json.dumps(obj, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
