"""Verbs over a whole zoo with every model detector: `scan_zoo` (scan each model, then AUROC per detector and
for the calibrated verdict) and `scan_calibrate` (the calibration file the verdict needs, from a labelled
calibration zoo kept apart from the zoo it is evaluated on).

Each model's scan is one sweep job (`scan-model`, backdoor_arena.sweep) run through an executor (local, a
process pool, Ray); its report goes to OUT/scans/NAME/ (the `scan` report) and its record (scores, verdicts,
failures; wall times in the record's `run` part) to OUT/sweep/. A model whose sweep record exists is skipped,
and a scan whose report already holds every requested detector is reused, so an interrupted run resumes where
it stopped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..defenses import MODEL_DETECTORS
from ..errors import ConfigError, ModelFileError
from ..modelfile import read_manifest
from ..records import json_safe
from ..report import pyplot, save_figure
from ..runtime import run_device, versions
from ..safeio import atomic_write_text, check_regular_file
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from ..verdict import Calibration
from .detecting import scan
from .zoo import family_of, read_truth, summarize

VERDICT = "verdict"  # the calibrated combination's name in summaries and plots


def _scan_one(model: Path, out: Path, names: list[str], params: dict[str, dict[str, Any]],
              time_budget_s: float | None, clean_fraction: float, seed: int, data_root: Any,
              device: str = "cpu") -> dict[str, Any]:
    report = out / "scan.json"
    if report.is_file():
        try:
            old = json.loads(report.read_text())
        except json.JSONDecodeError:
            old = None
        done = set((old or {}).get("detectors", {})) | set((old or {}).get("failures", {}))
        if old is not None and set(names) <= done:
            return old
    return scan(model, out, params=params, detectors=names, time_budget_s=time_budget_s,
                clean_fraction=clean_fraction, seed=seed, data_root=data_root, progress=False,
                overwrite=True, device=device).to_dict()


@sweep_job("scan-model")
def scan_zoo_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: every requested model detector on one zoo model (`scan`, its report in OUT/scans/NAME/). The
    record holds what the detectors decided; their wall times go to the record's per-run part."""
    cfg = ctx.config
    report = _scan_one(Path(ctx.paths["model"]), Path(ctx.paths["out"]), list(cfg["detectors"]), dict(cfg["params"]),
                       cfg["time_budget_s"], cfg["clean_fraction"], cfg["seed"], ctx.paths.get("data_root"),
                       cfg["device"])
    decided = ("score", "flagged", "threshold", "suspected_target")
    ctx.run.update(wall_time_s=report.get("wall_time_s"),
                   devices={n: d.get("device") for n, d in report.get("detectors", {}).items()})
    return {"model": cfg["model"],
            "detectors": {n: {k: d.get(k) for k in decided} for n, d in sorted(report.get("detectors", {}).items())},
            "failures": {n: {"status": f.get("status"), "error": f.get("error")}
                         for n, f in sorted(report.get("failures", {}).items())}}


def _scan_all(zoo_dir: Path, out: Path, detectors: list[str] | None, params: dict[str, dict[str, Any]] | None,
              time_budget_s: float | None, clean_fraction: float, seed: int, data_root: Any,
              progress: bool, executor: Executor | None = None,
              device: str = "auto") -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    dev = run_device(device, what="scan-zoo")  # a device that is not here is refused before anything is read
    truth = read_truth(zoo_dir)
    names = list(MODEL_DETECTORS.names()) if detectors is None else list(dict.fromkeys(detectors))
    unknown = sorted(set(names) - set(MODEL_DETECTORS.names()))
    if unknown or not names:
        raise ConfigError(f"unknown model detectors {unknown or names}; known: {', '.join(MODEL_DETECTORS.names())}")
    jobs = []
    for rec in truth:  # every model file exists before any detector time is spent
        path = check_regular_file(zoo_dir / "models" / f"{rec['name']}.safetensors", "zoo model file", ModelFileError)
        config = {"model": rec["name"], "model_sha256": read_manifest(path).tensors_sha256, "detectors": names,
                  "params": dict(params or {}), "time_budget_s": time_budget_s, "clean_fraction": clean_fraction,
                  "seed": seed, "device": str(dev)}
        paths = {"model": str(path.resolve()), "out": str((out / "scans" / rec["name"]).resolve())}
        jobs.append(Job("scan-model", config, seed=seed, label=rec["name"],
                        paths=paths | ({"data_root": str(Path(data_root).resolve())} if data_root else {})))
    result = run_sweep(jobs, out / "sweep", executor, progress=progress, desc="scan zoo")
    result.raise_for_failures()
    reports = [json.loads((out / "scans" / rec["name"] / "scan.json").read_text()) for rec in truth]
    return truth, reports, names


def scan_calibrate(zoo_dir: str | Path, out: str | Path, *, detectors: list[str] | None = None,
                   params: dict[str, dict[str, Any]] | None = None, time_budget_s: float | None = None,
                   c: float = 1.0, threshold: float = 0.5, clean_fraction: float = 0.05, seed: int = 0,
                   data_root: str | Path | None = None, progress: bool = True, executor: Executor | None = None,
                   device: str = "auto") -> Path:
    """Scan every model of a labelled calibration zoo (scans kept in ZOO/calibration-scans/) and write the
    calibration file `out` (JSON: the scores table and labels) that `scan --calibration` reads. One sweep job
    per model through `executor`; `device` where the detectors that take one run."""
    zoo_dir = Path(zoo_dir)
    truth, reports, _ = _scan_all(zoo_dir, zoo_dir / "calibration-scans", detectors, params, time_budget_s,
                                  clean_fraction, seed, data_root, progress, executor, device)
    calib = Calibration.from_reports(reports, [int(bool(r["backdoored"])) for r in truth], c=c, threshold=threshold,
                                     source={"zoo": str(zoo_dir), "models": len(truth), "params": params or {},
                                             "clean_fraction": clean_fraction, "seed": seed,
                                             "families": sorted({family_of(r) for r in truth}),
                                             "versions": versions()})
    return calib.save(out)


def scan_zoo(zoo_dir: str | Path, out: str | Path | None = None, *, detectors: list[str] | None = None,
             params: dict[str, dict[str, Any]] | None = None, time_budget_s: float | None = None,
             calibration: str | Path | None = None, clean_fraction: float = 0.05, seed: int = 0, fpr: float = 0.05,
             n_boot: int = 2000, data_root: str | Path | None = None, progress: bool = True,
             executor: Executor | None = None, device: str = "auto") -> dict[str, Any]:
    """Scan every model of a zoo; per detector (and for the calibrated verdict, with `calibration`): AUROC with
    its bootstrap interval, TPR at `fpr`, per trigger family, wall time per model; failures counted. Writes
    OUT/{summary.json, scores.jsonl, roc.png} (OUT defaults to ZOO/scan). One sweep job per model through
    `executor` (default: one at a time here); `device` where the detectors that take one run."""
    zoo_dir = Path(zoo_dir)
    out = Path(out) if out is not None else zoo_dir / "scan"
    calib = Calibration.load(calibration) if calibration is not None else None
    truth, reports, names = _scan_all(zoo_dir, out, detectors, params, time_budget_s, clean_fraction, seed,
                                      data_root, progress, executor, device)
    rows = []
    for rec, rep in zip(truth, reports, strict=True):
        base = {"name": rec["name"], "backdoored": bool(rec["backdoored"]), "family": family_of(rec),
                "target": rec.get("target"), "attack_success_rate": rec.get("attack_success_rate"),
                "optimizer": rec.get("optimizer")}
        for name in names:
            d = rep.get("detectors", {}).get(name)
            failure = rep.get("failures", {}).get(name)
            rows.append({**base, "detector": name, "score": None if d is None else d.get("score"),
                         "flagged": None if d is None else d.get("flagged"),
                         "threshold": None if d is None else d.get("threshold"),
                         "suspected_target": None if d is None else d.get("suspected_target"),
                         "wall_time_s": (d or failure or {}).get("wall_time_s"),
                         "failure": None if failure is None else f"{failure['status']}: {failure['error']}"})
        if calib is not None:
            scores = {n: (rep.get("detectors", {}).get(n) or {}).get("score") for n in names}
            v = calib.verdict(scores)
            rows.append({**base, "detector": VERDICT, "score": v.probability, "flagged": v.flagged,
                         "threshold": v.threshold, "suspected_target": None,
                         "wall_time_s": sum(v for v in (rep.get("wall_time_s") or {}).values()
                                            if isinstance(v, (int, float))),
                         "failure": None if v.probability is not None else "no calibrated score",
                         "used": v.used})
    per: dict[str, Any] = {}
    for name in [*names, *([VERDICT] if calib is not None else [])]:
        mine = [r for r in rows if r["detector"] == name]
        ok = [r for r in mine if r["score"] is not None and r["failure"] is None]
        walls = [r["wall_time_s"] for r in mine if r["wall_time_s"] is not None]
        entry = summarize(ok, fpr, n_boot=n_boot, seed=seed) if ok else {}
        entry.update({"n_failed": len(mine) - len(ok), "wall_time_s_mean": sum(walls) / len(walls) if walls else None,
                      "failures": sorted({r["failure"] for r in mine if r["failure"]})})
        per[name] = entry
    summary = json_safe({"zoo": str(zoo_dir), "calibration": None if calibration is None else str(calibration),
                         "calibration_source": None if calib is None else calib.source, "detectors": per,
                         "clean_fraction": clean_fraction, "seed": seed, "fpr": fpr, "versions": versions(),
                         "device": str(run_device(device, what="scan-zoo")),
                         "executor": (executor or Executor()).describe()})
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, allow_nan=False))
    atomic_write_text(out / "scores.jsonl", "".join(json.dumps(json_safe(r), sort_keys=True) + "\n" for r in rows))
    plot_rocs(out / "roc.png", rows, f"{len(truth)} zoo models from {zoo_dir.name}")
    summary["out"] = str(out)
    return summary


def draw_rocs(ax: Any, rows: list[dict[str, Any]]) -> None:
    """On `ax`, one ROC curve per detector (the verdict thicker) over the rows that have a score, each labelled
    with its AUROC; a detector without both clean and backdoored rows draws nothing."""
    import torch

    from ..detection_metrics import auroc, roc_curve

    for name in dict.fromkeys(r["detector"] for r in rows):
        ok = [r for r in rows if r["detector"] == name and r["score"] is not None]
        labels = torch.tensor([int(r["backdoored"]) for r in ok], dtype=torch.long)
        if not ok or not labels.any() or labels.all():
            continue
        scores = torch.tensor([float(r["score"]) for r in ok], dtype=torch.float64)
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.step(fpr.numpy(), tpr.numpy(), where="post", lw=2.5 if name == VERDICT else 1.4,
                label=f"{name} ({auroc(labels, scores):.2f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")


def plot_rocs(path: Path, rows: list[dict[str, Any]], title: str) -> Path:
    """One ROC curve per detector (and the verdict) over the rows that have a score."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    draw_rocs(ax, rows)
    ax.set_xlabel("false positive rate (clean models flagged)")
    ax.set_ylabel("true positive rate")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # (a zoo without clean or without backdoored models has no curve)
        ax.legend(fontsize=7, title="detector (AUROC)", title_fontsize=7)
    return save_figure(fig, path)
