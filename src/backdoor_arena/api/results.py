"""What the verbs return: typed results that say what was made and measured, with `to_dict()` (the JSON the
CLI prints with --json) and `records()` (the uniform Records written as JSONL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modelfile import Manifest
from ..records import Record, json_safe
from ..runtime import versions

_MODEL_METRICS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


def _model_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The model-level metrics present in an evaluation: clean accuracy, and with a spec ASR and robust accuracy."""
    return {k: metrics[k] for k in _MODEL_METRICS if k in metrics}


class _Readable:
    """r["clean_accuracy"], "key" in r, r.get(...): a result read as the JSON object its to_dict() prints."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __contains__(self, key: str) -> bool:
        return key in self.to_dict()

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)


@dataclass(frozen=True)
class TrainResult:
    """`train` and `attack`: the model file written, its manifest, final test metrics, per-epoch history,
    and for attacks the attack spec written beside the model."""

    path: Path
    manifest: Manifest
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    spec_path: Path | None = None
    verb: str = "train"

    def to_dict(self) -> dict[str, Any]:
        privacy = self.manifest.training.get("privacy") or {}
        out = {"model": str(self.path), **_model_metrics(self.metrics),
               "wall_time_s": self.manifest.training.get("wall_time_s")}
        if self.spec_path is not None:
            out["attack_spec"] = str(self.spec_path)
        if privacy:
            out.update({"epsilon": privacy["epsilon"], "delta": privacy["delta"]})
        return json_safe(out)

    def records(self) -> list[Record]:
        t = self.manifest.training
        metrics = _model_metrics(self.metrics)
        return [Record(self.verb, t.get("config", {}), t.get("seed"), {**metrics, "wall_s": t.get("wall_time_s")},
                       {"model": str(self.path), "architecture": self.manifest.architecture,
                        "dataset": self.manifest.dataset}, t.get("versions", {}))]


@dataclass(frozen=True)
class EvaluationResult(_Readable):
    """`evaluate`: clean accuracy on the test split; with an attack spec, ASR and robust accuracy."""

    model: str
    architecture: str
    dataset: str
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"model": self.model, "architecture": self.architecture, "dataset": self.dataset,
                          **self.metrics})

    def records(self) -> list[Record]:
        return [Record("evaluate", {"model": self.model}, None, _model_metrics(self.metrics),
                       {"model": self.model, "architecture": self.architecture, "dataset": self.dataset}, versions())]


@dataclass(frozen=True)
class DefenseResult(_Readable):
    """`defend`: the repaired model file, its curve files, and test metrics before and after."""

    defense: str
    model: str
    out: Path
    params: dict[str, Any]
    clean_samples: int
    before: dict[str, float]
    after: dict[str, float]
    curve_png: Path | None
    curve_jsonl: Path
    wall_time_s: float
    tensors_sha256: str
    details: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @property
    def fraction_pruned(self) -> float | None:
        return self.details.get("fraction_pruned")

    def to_dict(self) -> dict[str, Any]:
        return json_safe({
            "defense": self.defense, "model": self.model, "out": str(self.out), "params": self.params,
            "clean_samples": self.clean_samples, "before": self.before, "after": self.after,
            "curve_png": self.curve_png and str(self.curve_png), "curve_jsonl": str(self.curve_jsonl),
            "fraction_pruned": self.fraction_pruned, "wall_time_s": self.wall_time_s,
            "tensors_sha256": self.tensors_sha256,
        })

    def records(self) -> list[Record]:
        config = {"defense": self.defense, "params": self.params, "clean_samples": self.clean_samples}
        return [Record("defend", config, self.seed, {**self.after, "wall_s": self.wall_time_s},
                       {"model": self.model, "repaired": str(self.out), "defense": self.defense,
                        **{f"before_{k}": v for k, v in self.before.items()}}, versions())]


@dataclass(frozen=True)
class DetectionResult(_Readable):
    """`detect`: one detector on one model file. `kind` is model, input or data; `values` holds the
    kind's measurements (score/flagged/threshold/suspected_target; threshold/frr/far/auroc; removal
    precision/recall/auroc) under the names the docs use."""

    detector: str
    kind: str
    model: str
    dataset: str
    clean_samples: int
    seed: int
    params: dict[str, Any]
    values: dict[str, Any]
    wall_time_s: float
    figure: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"detector": self.detector, "kind": self.kind, "model": self.model, "dataset": self.dataset,
               "clean_samples": self.clean_samples, "seed": self.seed, "params": self.params, **self.values,
               "wall_time_s": self.wall_time_s, "versions": versions()}
        if self.figure is not None:
            out["figure"] = str(self.figure)
        return json_safe(out)

    def records(self) -> list[Record]:
        numeric = {k: v for k, v in self.values.items() if isinstance(v, (int, float, bool)) or v is None}
        return [Record("detect", {"detector": self.detector, "params": self.params}, self.seed,
                       {**numeric, "wall_s": self.wall_time_s},
                       {"model": self.model, "dataset": self.dataset, "detector": self.detector, "kind": self.kind},
                       versions())]


@dataclass(frozen=True)
class ScanResult(_Readable):
    """`scan`: model-level detectors on one model. `failures` maps a detector that produced nothing to its
    status ("error", "over budget"), one-line error and wall time. With a calibration, `verdict` is the
    combined calibrated probability and decides `flagged`; without, `flagged` if any detector flags it."""

    model: str
    detectors: dict[str, DetectionResult]
    report: Path
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: Any = None  # verdict.Verdict

    @property
    def flagged(self) -> bool:
        if self.verdict is not None and self.verdict.flagged is not None:
            return bool(self.verdict.flagged)
        return any(bool(d.values.get("flagged")) for d in self.detectors.values())

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "flagged": self.flagged, "report": str(self.report),
               "detectors": {k: v.to_dict() for k, v in self.detectors.items()}, "failures": self.failures,
               "wall_time_s": {**{k: v.wall_time_s for k, v in self.detectors.items()},
                               **{k: v["wall_time_s"] for k, v in self.failures.items()}}}
        if self.verdict is not None:
            out["verdict"] = self.verdict.to_dict()
        return json_safe(out)

    def records(self) -> list[Record]:
        return [r for d in self.detectors.values() for r in d.records()]
