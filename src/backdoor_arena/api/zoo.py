"""A model zoo: seeded clean and backdoored models for measuring detectors, and their evaluation.

Layout of a zoo folder (the attack specs live apart from the model files, as a defender receives them):

    DIR/models/model-NN.safetensors   every model, names shuffled so that a name reveals nothing
    DIR/specs/model-NN.attack.json    the attack spec of each backdoored model (evaluator only)
    DIR/specs/truth.jsonl             one record per model: name, backdoored, target, trigger, accuracy, ASR
    DIR/zoo.json                      how the zoo was built (config, seed, versions, wall time)

`evaluate_zoo` runs a model detector on every model (the detector sees the model and a clean hold-out of
the training split only), then compares its continuous scores with the truth: AUROC, TPR at 5% FPR,
target-label accuracy on the backdoored models it flags, and a ROC plot.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..attacks import make_attack
from ..data import dataset_info, load_dataset
from ..defenses import MODEL_DETECTORS, clean_holdout
from ..detection_metrics import auroc, tpr_at_fpr
from ..errors import ConfigError, ModelFileError
from ..modelfile import load_model
from ..records import json_safe, write_jsonl
from ..report import markdown_table, plot_roc
from ..runtime import versions
from ..safeio import atomic_write_text, check_regular_file, output_folder, read_text, shown
from ..schemas import TruthRecord, loads_json, validate
from ..train import TrainConfig
from .outputs import check_folder_output
from .training import train_model

TRIGGER_KINDS = ("square", "pattern")
POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left")
SIZES = (3, 4, 5)
POISON_RATES = (0.05, 0.1)


@dataclass(frozen=True)
class ZooConfig:
    dataset: str = "mnist"
    architecture: str = "badnet-mnist"
    clean: int = 10
    backdoored: int = 10
    epochs: int = 2
    train_size: int | None = None  # a seeded subset of the training split (None: all of it)
    seed: int = 0
    clean_fraction: float = 0.05  # the defenders' hold-out, excluded from training

    def __post_init__(self) -> None:
        for name in ("clean", "backdoored"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer number of models, got {v!r}")
        if self.clean + self.backdoored < 1:
            raise ConfigError("a zoo needs at least one model: raise --clean or --backdoored")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 100):
            raise ConfigError(f"train_size must be an integer >= 100 (or None for all), got {self.train_size!r}")
        if not 0 < self.clean_fraction < 1:
            raise ConfigError(f"clean_fraction must be in (0, 1), got {self.clean_fraction!r}")


def zoo_plan(config: ZooConfig) -> list[dict[str, Any]]:
    """The seeded list of models to build: name, seed, and for backdoored ones the attack parameters."""
    info = dataset_info(config.dataset)
    g = torch.Generator().manual_seed(config.seed)
    n = config.clean + config.backdoored
    names = [f"model-{i:02d}" for i in torch.randperm(n, generator=g).tolist()]

    def pick(options: tuple) -> Any:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    plan = []
    for i in range(n):
        entry: dict[str, Any] = {"name": names[i], "seed": config.seed * 1000 + i, "backdoored": i >= config.clean}
        if entry["backdoored"]:
            entry.update({
                "target": int(torch.randint(info.num_classes, (1,), generator=g)), "trigger": pick(TRIGGER_KINDS),
                "size": pick(SIZES), "position": pick(POSITIONS), "poison_rate": pick(POISON_RATES),
            })
        plan.append(entry)
    return plan


def build_zoo(out: str | Path, config: ZooConfig = ZooConfig(), *, data_root: str | Path | None = None,
              progress: bool = True) -> list[dict[str, Any]]:
    """Train every model of the plan into `out`. A zoo folder resumes: models with a truth record are kept.
    An existing folder must be empty or a zoo (specs/truth.jsonl), so a typo cannot fill another folder."""
    out = check_folder_output(out, resumable=True)
    if out.is_dir() and any(out.iterdir()) and not (out / "specs" / "truth.jsonl").is_file():
        raise ConfigError(f"--out {shown(out)} holds files but is not a zoo folder (no specs/truth.jsonl); choose an "
                          "empty or new folder, or an existing zoo to resume")
    with output_folder(out):
        return _build(out, config, data_root, progress)


def _build(out: Path, config: ZooConfig, data_root: str | Path | None, progress: bool) -> list[dict[str, Any]]:
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    info = dataset_info(config.dataset)
    train_full = load_dataset(config.dataset, "train", data_root)
    test = load_dataset(config.dataset, "test", data_root)
    rest, _held = clean_holdout(train_full, config.clean_fraction, config.seed)
    if config.train_size is not None and config.train_size < len(rest):
        rest = rest.subset(torch.randperm(len(rest), generator=torch.Generator().manual_seed(config.seed))
                           [: config.train_size].sort().values)
    truth_path = out / "specs" / "truth.jsonl"
    done = {r["name"]: r for r in read_truth(out)} if truth_path.exists() else {}
    records = []
    started = time.perf_counter()
    plan = zoo_plan(config)
    for entry in tqdm(plan, desc="zoo", unit="model", disable=not progress):
        model_path = out / "models" / f"{entry['name']}.safetensors"
        if entry["name"] in done and model_path.exists():
            records.append(done[entry["name"]])
            continue
        train_config = TrainConfig(epochs=config.epochs, seed=entry["seed"], progress=progress)
        atk = None
        train_set = rest
        if entry["backdoored"]:
            atk = make_attack("badnets", num_classes=info.num_classes, channels=info.input_shape[0],
                              image_size=info.input_shape[1], trigger=entry["trigger"],
                              trigger_options={"size": entry["size"], "position": entry["position"]},
                              target=entry["target"], poison_rate=entry["poison_rate"], seed=entry["seed"])
            train_set = atk.poison(rest, torch.Generator().manual_seed(entry["seed"])).dataset
        r = train_model(config.architecture, train_set, test, train_config, model_path, atk, entry["name"])
        if r.spec_path is not None:
            shutil.move(str(r.spec_path), out / "specs" / r.spec_path.name)  # keep specs apart from models
        record = {**entry, "clean_accuracy": r.metrics["clean_accuracy"],
                  "attack_success_rate": r.metrics.get("attack_success_rate"),
                  "train_time_s": r.manifest.training["wall_time_s"]}
        records.append(record)
        done[entry["name"]] = record
        write_jsonl(truth_path, sorted(done.values(), key=lambda x: x["name"]))
    (out / "zoo.json").write_text(json.dumps({
        "config": config.__dict__, "models": len(plan), "versions": versions(),
        "wall_time_s": round(time.perf_counter() - started, 3),
    }, indent=1))
    return records


def read_truth(zoo_dir: str | Path) -> list[dict[str, Any]]:
    """The validated truth records of a zoo folder: strict JSON objects, model names confined to
    DIR/models/, no name twice, at least one record."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / "specs" / "truth.jsonl"
    if not zoo_dir.is_dir() or not os.path.lexists(path):
        raise ConfigError(f"{shown(zoo_dir)} is not a zoo folder (no specs/truth.jsonl); build one with "
                          "`backdoor-arena zoo build`")
    text = read_text(path, "zoo truth file")
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        what = f"zoo truth file {shown(path)} line {i}"
        raw = loads_json(line, what)
        if not isinstance(raw, dict):
            raise ConfigError(f"{what}: each line must be a JSON object, got {type(raw).__name__}")
        records.append(validate(TruthRecord, raw, what).model_dump())
    if not records:
        raise ConfigError(f"zoo truth file {shown(path)} has no records; rebuild the zoo with `backdoor-arena zoo build`")
    names = [r["name"] for r in records]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"zoo truth file {shown(path)} names model(s) {twice} twice; each model once")
    return records


def evaluate_zoo(zoo_dir: str | Path, detector: str = "neural-cleanse", *, params: dict[str, Any] | None = None,
                 clean_fraction: float = 0.05, seed: int = 0, fpr: float = 0.05, data_root: str | Path | None = None,
                 progress: bool = True, out: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Run a model detector on every zoo model; AUROC on its continuous scores, TPR at `fpr`, target accuracy.

    Writes DIR/eval-<detector>/{scores.jsonl, summary.json, roc.png} (or into `out`).
    """
    zoo_dir = Path(zoo_dir)
    truth = read_truth(zoo_dir)
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must be in (0, 1), got {fpr!r}")
    det = MODEL_DETECTORS.create(detector, **(params or {}))
    out = check_folder_output(out if out is not None else zoo_dir / f"eval-{detector}", overwrite=overwrite)
    for rec in truth:  # every model file exists before any detector time is spent
        check_regular_file(zoo_dir / "models" / f"{rec['name']}.safetensors", "zoo model file", ModelFileError)
    with output_folder(out):
        return _evaluate(zoo_dir, truth, det, detector, params, clean_fraction, seed, fpr, data_root, progress, out)


def _evaluate(zoo_dir: Path, truth: list[dict[str, Any]], det: Any, detector: str, params: dict[str, Any] | None,
              clean_fraction: float, seed: int, fpr: float, data_root: Any, progress: bool,
              out: Path) -> dict[str, Any]:
    rows = []
    held_cache: dict[str, Any] = {}
    for rec in tqdm(truth, desc=f"zoo {detector}", unit="model", disable=not progress):
        loaded = load_model(zoo_dir / "models" / f"{rec['name']}.safetensors")
        ds = loaded.manifest.dataset
        if ds not in held_cache:
            held_cache[ds] = clean_holdout(load_dataset(ds, "train", data_root), clean_fraction, seed)[1]
        started = time.perf_counter()
        verdict = det.inspect(loaded.model, held_cache[ds])
        rows.append({
            "name": rec["name"], "backdoored": bool(rec["backdoored"]), "target": rec.get("target"),
            "trigger": rec.get("trigger"), "size": rec.get("size"), "position": rec.get("position"),
            "score": float(verdict.score), "flagged": bool(verdict.flagged), "threshold": float(verdict.threshold),
            "suspected_target": verdict.suspected_target, "detect_time_s": round(time.perf_counter() - started, 3),
        })
        write_jsonl(out / "scores.jsonl", rows)
    summary = summarize(rows, fpr)
    summary.update({"detector": detector, "params": params or {}, "clean_fraction": clean_fraction, "seed": seed,
                    "zoo": str(zoo_dir), "versions": versions()})
    summary = json_safe(summary)  # AUROC is undefined (null) without both classes; never a bare NaN
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, allow_nan=False))
    plot_roc(out / "roc.png", rows, f"{detector} on {len(rows)} zoo models (AUROC {summary['auroc']:.3f})")
    (out / "scores.md").write_text(markdown_table(
        rows, ["name", "backdoored", "target", "trigger", "size", "position", "score", "flagged", "suspected_target"],
        {"score": ".3f"}))
    summary["out"] = str(out)
    return summary


def summarize(rows: list[dict[str, Any]], fpr: float = 0.05) -> dict[str, Any]:
    """AUROC and TPR@FPR on the scores (never the verdicts), verdict rates, and target accuracy."""
    labels = torch.tensor([r["backdoored"] for r in rows], dtype=torch.long)
    scores = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    both = bool(labels.any()) and bool((labels == 0).any())
    bad = [r for r in rows if r["backdoored"]]
    flagged_bad = [r for r in bad if r["flagged"]]
    return {
        "n_clean": int((labels == 0).sum()), "n_backdoored": int(labels.sum()),
        "auroc": auroc(labels, scores) if both else float("nan"),
        f"tpr_at_{round(100 * fpr)}pct_fpr": tpr_at_fpr(labels, scores, fpr) if both else float("nan"),
        "verdict_tpr": len(flagged_bad) / len(bad) if bad else float("nan"),
        "verdict_fpr": (sum(r["flagged"] for r in rows if not r["backdoored"]) / max(1, int((labels == 0).sum()))),
        # among all backdoored models, and among the flagged ones: is the suspected label the real target?
        "target_accuracy": sum(r["suspected_target"] == r["target"] for r in bad) / len(bad) if bad else float("nan"),
        "target_accuracy_flagged": (sum(r["suspected_target"] == r["target"] for r in flagged_bad) / len(flagged_bad)
                                    if flagged_bad else float("nan")),
    }
