"""The demo: a clean and a BadNets MNIST model, evaluated side by side, written as a report folder."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks import load_attack_spec
from ..data import load_dataset
from ..data.dataset import to_float
from ..metrics import evaluate, predict
from ..modelfile import load_model
from ..records import Record, write_jsonl
from ..report import markdown_table, plot_examples, plot_training_curves
from ..runtime import resolve_device, versions
from ..safeio import output_folder
from . import training
from .outputs import check_folder_output

TARGET = 7


@dataclass(frozen=True)
class DemoResult:
    """The demo's report folder, its summary (summary.json) and the records (records.jsonl)."""

    out: Path
    summary: dict[str, Any]
    records: list[Record]
    lines: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary, "out": str(self.out)}


def demo(out: str | Path, *, epochs: int = 4, seed: int = 0, data_root: str | Path | None = None,
         progress: bool = True, overwrite: bool = False, defender_holdout: float = 0.05,
         device: str = "auto") -> DemoResult:
    """Train a clean and a BadNets MNIST model, evaluate both, write a report folder (JSON + PNG); an
    existing non-empty folder is written into only with `overwrite`. `device`: where both models train
    (auto | cpu | cuda[:N] | mps), recorded in their manifests."""
    resolve_device(device, what="demo")  # a bad device is refused before the folder is made
    out = check_folder_output(out, overwrite=overwrite)
    with output_folder(out):
        return _demo(out, epochs, seed, data_root, progress, defender_holdout, device)


def _demo(out: Path, epochs: int, seed: int, data_root: str | Path | None, progress: bool,
          defender_holdout: float, device: str = "auto") -> DemoResult:
    started = time.perf_counter()
    common = {"epochs": epochs, "seed": seed, "data_root": data_root, "progress": progress,
              "defender_holdout": defender_holdout, "device": device}
    clean = training.train("mnist", "badnet-mnist", out / "clean.safetensors", overwrite=True, **common)
    bad = training.attack("badnets", "mnist", "badnet-mnist", out / "badnets.safetensors", target=TARGET,
                     trigger="pattern", trigger_options={"size": 3, "position": "bottom-right"},
                     poison_rate=0.1, injection="append", overwrite=True, **common)
    attack = load_attack_spec(bad.spec_path)
    test = load_dataset("mnist", "test", data_root)
    models = {"clean": load_model(clean.path).model, "badnets": load_model(bad.path).model}

    config = {"dataset": "mnist", "architecture": "badnet-mnist", "epochs": epochs, "attack": "badnets",
              "defender_holdout": defender_holdout,
              "trigger": "pattern", "trigger_size": 3, "target": TARGET, "poison_rate": 0.1}
    records = []
    for name, model in models.items():
        r = evaluate(model, test, attack)
        metrics = {k: r[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}
        records.append(Record("demo", config, seed, metrics, {"scenario": "demo", "model": name}, versions()))
    write_jsonl(out / "records.jsonl", records)

    # Example predictions: the first test image of every class other than the target.
    index = torch.stack([torch.nonzero(test.labels == c)[0, 0] for c in range(10) if c != TARGET])
    clean_x = to_float(test.images[index])
    trig_x = attack.apply_trigger(clean_x)
    examples = [{"index": int(i), "label": int(test.labels[i])} for i in index]
    for name, model in models.items():
        for which, x in (("clean", clean_x), ("triggered", trig_x)):
            for rec, p in zip(examples, predict(model, x), strict=True):
                rec[f"{name}_{which}"] = int(p)
    write_jsonl(out / "examples.jsonl", examples)
    plot_examples(out / "examples.png", clean_x, trig_x, examples, list(models), test.info.class_names)
    plot_training_curves(out / "training.png", {"clean": clean.history, "badnets": bad.history})

    table_rows = [{"model": r.subject["model"], **r.metrics} for r in records]
    table = markdown_table(table_rows, ["model", "clean_accuracy", "attack_success_rate", "robust_accuracy"],
                           {k: ".4f" for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")})
    wall = time.perf_counter() - started
    summary = {"scenario": "demo", "seed": seed, "epochs": epochs, "target": TARGET, "wall_time_s": round(wall, 1),
               "versions": versions(), "results": table_rows,
               "files": sorted(p.name for p in out.iterdir()) + ["summary.json", "summary.md"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    (out / "summary.md").write_text(
        "# backdoor-arena demo\n\nBadNets all-to-one on MNIST: 3x3 checkerboard, bottom-right, target 7, "
        f"10% appended poisoned copies, {epochs} epochs, seed {seed}.\n\n{table}\n"
        f"![examples](examples.png)\n\n![training](training.png)\n\nWall time {wall:.1f} s.\n"
    )
    lines = [table.rstrip(), f"report written to {out}/ ({wall:.0f} s)"]
    return DemoResult(out, summary, records, lines)
