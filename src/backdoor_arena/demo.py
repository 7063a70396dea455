"""The demo: a clean and a BadNets MNIST model, evaluated side by side, written as a report folder."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from . import api
from .attacks import load_attack_spec
from .data import load_dataset
from .data.dataset import to_float
from .metrics import evaluate, predict
from .modelfile import load_model
from .report import markdown_table, plot_examples, plot_training_curves, write_jsonl
from .runtime import versions

TARGET = 7


def run_demo(out: str | Path, *, epochs: int = 4, seed: int = 0, data_root: str | Path | None = None,
             progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    common = {"epochs": epochs, "seed": seed, "data_root": data_root, "progress": progress}
    clean = api.train("mnist", "badnet-mnist", out / "clean.safetensors", **common)
    bad = api.attack("badnets", "mnist", "badnet-mnist", out / "badnets.safetensors", target=TARGET,
                     trigger="pattern", trigger_options={"size": 3, "position": "bottom-right"},
                     poison_rate=0.1, injection="append", **common)
    attack = load_attack_spec(bad.spec_path)
    test = load_dataset("mnist", "test", data_root)
    models = {"clean": load_model(clean.path).model, "badnets": load_model(bad.path).model}

    records = []
    for name, model in models.items():
        r = evaluate(model, test, attack)
        for metric in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
            records.append({"scenario": "demo", "model": name, "dataset": "mnist", "architecture": "badnet-mnist",
                            "seed": seed, "epochs": epochs, "metric": metric, "value": r[metric]})
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

    table_rows = [{"model": name, **{r["metric"]: r["value"] for r in records if r["model"] == name}}
                  for name in models]
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
    return {**summary, "lines": lines}
