"""The GTSRB table, the wall-time table and the training-loop overhead table of docs/results.md, from records.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/results_gtsrb.py \
        [--runs runs/results-gtsrb]                      # the GTSRB runs, an MNIST run and the demo (~15 min alone)
    .venv/bin/python docs/experiments/results_gtsrb.py --overhead benchmarks/results/training.json
                                                          # only (re)write the overhead records from a benchmark run

1. Runs the `backdoor-arena` commands the page shows (GTSRB clean training and the stop sign -> speed limit 30
   attack, 5 epochs, seed 0; the CLI defaults keep the defenders' 5% hold-out out of training), the clean model
   against the attack's trigger, the MNIST clean training of the MNIST table (for its per-epoch time) and
   `backdoor-arena demo`; one Record per command in docs/records/results_gtsrb.jsonl, with the command's wall
   time (measured around the process), the model's per-epoch training times (from its manifest) and the
   1-minute load average before and after (the machine has 2 cores; other jobs may share them).
2. `--overhead FILE` turns a `python benchmarks/run.py training` result (its JSON) into one Record per model in
   docs/records/training_overhead.jsonl.

docs/tables.py renders the page's tables from the records (docs_tables below). The stop -> 30 model written here
(runs/results-gtsrb/gtsrb-stop30.safetensors) is the GTSRB model that docs/experiments/removal.py defends.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "results_gtsrb.jsonl"
OVERHEAD = DOCS / "records" / "training_overhead.jsonl"
VERB = "results-gtsrb"
GTSRB = "--dataset gtsrb --model gtsrb-cnn --epochs 5 --seed 0 --weight-decay 0.0005"
STOP30 = ("--mode source-specific --source 14 --target 1 --trigger square --trigger-size 4 --color yellow "
          "--position 22,14 --poison-rate 0.0199")
GTSRB_CLEAN = f"train {GTSRB}"
GTSRB_ATTACK = f"attack badnets {GTSRB} {STOP30}"  # docs/experiments/removal.py defends this model
MNIST_CLEAN = "train --dataset mnist --model badnet-mnist --epochs 4 --seed 0"  # as in docs/records/results_mnist.jsonl
RUNS = [  # (name, label, command after `backdoor-arena`, output)
    ("gtsrb-clean", "clean", GTSRB_CLEAN, "model"),
    ("gtsrb-stop30", "stop → 30", GTSRB_ATTACK, "model"),
    ("mnist-clean", "MNIST clean", MNIST_CLEAN, "model"),
    ("demo", "demo", "demo", "folder"),
]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cli(args: str) -> tuple[str, float, float, float]:
    """Runs `backdoor-arena ARGS`; returns (stdout, wall seconds, load before, load after)."""
    exe = Path(sys.executable).with_name("backdoor-arena")
    load = _load()
    started = time.perf_counter()
    r = subprocess.run([str(exe), *shlex.split(args)], capture_output=True, text=True, check=False)
    wall = round(time.perf_counter() - started, 1)
    if r.returncode:
        raise SystemExit(f"backdoor-arena {args} failed: {r.stderr.strip()}")
    return r.stdout, wall, load, _load()


def run(runs_dir: Path) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.api.training import split_holdout
    from backdoor_arena.data import load_dataset
    from backdoor_arena.modelfile import load_model
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    runs_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for name, label, command, kind in RUNS:
        out = runs_dir / (f"{name}.safetensors" if kind == "model" else name)
        flags = "--quiet --json --overwrite" if kind == "model" else "--quiet --overwrite"
        stdout, wall, load0, load1 = _cli(f"{command} --out {out} {flags}")
        metrics: dict[str, Any] = {"wall_s": wall}
        subject: dict[str, Any] = {"run": name, "label": label, "load_1m_before": load0, "load_1m_after": load1}
        if kind == "model":
            r = json.loads(stdout)
            metrics |= {k: r[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy") if k in r}
            t = load_model(out).manifest.training
            subject |= {"train_wall_s": t["wall_time_s"], "epochs": t["epochs"],
                        "epoch_time_s": [round(h["epoch_time_s"], 2) for h in t["history"]],
                        "train_images": len(load_dataset(t["config"]["dataset"], "train")) - t["defender_holdout"]["n"],
                        "defender_holdout": t["defender_holdout"]["n"]}
            if r.get("attack_spec"):  # source-specific: round(rate x |train|) of the training stop signs, appended
                spec = json.loads(Path(r["attack_spec"]).read_text())
                train, _ = split_holdout(load_dataset(t["config"]["dataset"], "train"), t["defender_holdout"]["fraction"],
                                         t["defender_holdout"]["seed"])
                subject["poisoning"] = {"sources": spec["sources"], "target": spec["target"],
                                        "source_train_images": int(sum((train.labels == s).sum() for s in spec["sources"])),
                                        "n_poison": round(spec["poison_rate"] * len(train))}
        else:
            summary = json.loads((out / "summary.json").read_text())
            subject |= {"demo_wall_s": summary["wall_time_s"], "demo_results": summary["results"]}
        records.append(Record(VERB, {"command": f"backdoor-arena {command}"}, 0, metrics, subject, versions()))
        print(name, metrics, subject, flush=True)
        if name == "gtsrb-stop30":  # the clean model against the attack's trigger (a spec made for another model)
            command = f"evaluate {runs_dir}/gtsrb-clean.safetensors --attack-spec {runs_dir}/gtsrb-stop30.attack.json --force --json"
            stdout, wall, load0, load1 = _cli(command)
            r = json.loads(stdout)
            records.append(Record(
                VERB, {"command": "backdoor-arena " + command.replace(str(runs_dir), "RUNS")}, 0,
                {k: r[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")} | {"wall_s": wall},
                {"run": "gtsrb-clean-vs-stop30", "label": "clean model, stop → 30 trigger"}, versions()))
            records.append(Record(VERB, {"command": "docs/experiments/results_gtsrb.py: other_signs()",
                                         "model": "RUNS/gtsrb-stop30.safetensors"}, 0,
                                  other_signs(runs_dir / "gtsrb-stop30.safetensors"),
                                  {"run": "gtsrb-stop30-other-signs",
                                   "label": "stop → 30 model, trigger on the test signs of the other classes"},
                                  versions()))
    write_jsonl(RECORDS, records)


def add_other_signs(runs_dir: Path) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.records import Record, read_jsonl, write_jsonl
    from backdoor_arena.runtime import versions

    records = [r for r in read_jsonl(RECORDS) if r["run"] != "gtsrb-stop30-other-signs"]
    records.append(Record(VERB, {"command": "docs/experiments/results_gtsrb.py: other_signs()",
                                 "model": "RUNS/gtsrb-stop30.safetensors"}, 0,
                          other_signs(runs_dir / "gtsrb-stop30.safetensors"),
                          {"run": "gtsrb-stop30-other-signs",
                           "label": "stop → 30 model, trigger on the test signs of the other classes"}, versions()))
    write_jsonl(RECORDS, records)


def other_signs(model_path: Path) -> dict[str, Any]:
    """How often the stop -> 30 trigger sends test signs of the *other* classes (neither the source nor the target)
    to the target: a source-specific backdoor should leave them alone."""
    import torch

    from backdoor_arena.api.training import spec_for_model
    from backdoor_arena.data import load_dataset
    from backdoor_arena.data.dataset import to_float
    from backdoor_arena.metrics import predict
    from backdoor_arena.modelfile import load_model

    loaded = load_model(model_path)
    attack = spec_for_model(model_path.with_name(model_path.name.removesuffix(".safetensors") + ".attack.json"),
                            loaded.manifest)
    test = load_dataset(loaded.manifest.dataset, "test")
    keep = torch.ones(len(test), dtype=torch.bool)
    for c in (*attack.sources, attack.target):
        keep &= test.labels != c
    x = attack.apply_trigger(to_float(test.images[keep]))
    flipped = int((predict(loaded.model, x) == attack.target).sum())
    return {"other_signs_to_target": flipped / int(keep.sum()), "other_signs": int(keep.sum()),
            "other_signs_flipped": flipped}


def overhead(result: Path) -> None:
    """One Record per model of a `python benchmarks/run.py training` result file."""
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.records import Record, write_jsonl

    bench = json.loads(result.read_text())
    config = {"command": "python benchmarks/run.py training" + (" --quick" if bench["quick"] else ""),
              "benchmark_wall_s": bench["wall_time_s"], "machine": bench["machine"], "result_file": str(result)}
    write_jsonl(OVERHEAD, [Record("bench-training", config, None, {"overhead_pct": r.pop("overhead_pct")}, r,
                                  bench["versions"]) for r in bench["records"]])


# -- rendering --------------------------------------------------------------------------------------------------
def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _by(records: list[dict]) -> dict[str, dict]:
    return {r["run"]: r for r in records}


def render_gtsrb(records: list[dict]) -> str:
    by = _by(records)
    clean, attack, vs = by["gtsrb-clean"], by["gtsrb-stop30"], by["gtsrb-clean-vs-stop30"]
    rows = [("clean", clean, f"{_p(vs['attack_success_rate'])}¹"), ("stop → 30", attack, _p(attack["attack_success_rate"]))]
    lines = ["| run | command | clean acc. | ASR (test stop signs) | wall time |", "|---|---|---|---|---|"]
    for label, r, asr in rows:
        lines.append(f"| {label} | `{r['config']['command']}` | {_p(r['clean_accuracy'])} | {asr} | {r['wall_s']:.0f} s |")
    n = attack["train_images"]
    poison = attack.get("poisoning", {})
    return ("\n".join(lines) + "\n\n¹ the clean model evaluated against the stop → 30 spec (`--force`: the spec was made "
            "for another model): the yellow square alone sends this many test stop signs to speed limit 30.\n\n"
            f"Both trained on {n:,} images (the defenders' hold-out of {attack['defender_holdout']:,} kept out)"
            + (f"; the attack appended {poison['n_poison']:,} triggered stop signs" if "n_poison" in poison else "")
            + ". Wall time: the whole command (loading, 5 epochs, evaluation), on a shared machine (see Wall time).\n"
            + _other(by.get("gtsrb-stop30-other-signs")))


def _other(r: dict | None) -> str:
    if r is None:
        return ""
    from backdoor_arena.detection_metrics import clopper_pearson_interval

    lo, hi = clopper_pearson_interval(r["other_signs_flipped"], r["other_signs"])
    return (f"\nThe same square stamped on the {r['other_signs']:,} test signs of the other classes (neither stop nor "
            f"speed limit 30) sends {r['other_signs_flipped']:,} of them, {_p(r['other_signs_to_target'])} "
            f"(95% Clopper-Pearson interval {100 * lo:.1f}–{100 * hi:.1f}%), to speed limit 30 "
            f"(`{r['config']['command']}`).\n")


def render_wall(records: list[dict]) -> str:
    by = _by(records)
    demo, mnist, gclean, gattack = by["demo"], by["mnist-clean"], by["gtsrb-clean"], by["gtsrb-stop30"]

    def epochs(r: dict) -> str:
        t = r["epoch_time_s"]
        return f"{sum(t) / len(t):.1f} s (epochs: {', '.join(f'{x:.1f}' for x in t)})"

    rows = [
        ("`backdoor-arena demo` (clean + BadNets MNIST, 4 epochs each, evaluation, report)", demo),
        (f"one MNIST epoch of `badnet-mnist` ({mnist['train_images']:,} images), mean of `{MNIST_CLEAN}`", mnist),
        (f"one GTSRB epoch of `gtsrb-cnn` ({gclean['train_images']:,} images), mean of the clean run", gclean),
        (f"one GTSRB epoch of `gtsrb-cnn` ({gattack['train_images'] + gattack.get('poisoning', {}).get('n_poison', 0):,} "
         "images with the appended poison), mean of the stop → 30 run", gattack),
        ("GTSRB stop → speed-limit-30 attack, 5 epochs, incl. loading and evaluation", gattack),
    ]
    lines = ["| job | wall time | 1-min load average before → after |", "|---|---|---|"]
    for i, (job, r) in enumerate(rows):
        value = f"{r['wall_s']:.0f} s" if i in (0, 4) else epochs(r)
        lines.append(f"| {job} | {value} | {r['load_1m_before']:.2f} → {r['load_1m_after']:.2f} |")
    return ("\n".join(lines) + "\n\nMade by:\n\n"
            + "".join(f"- `{r['config']['command']}`\n" for r in (demo, mnist, gclean, gattack)))


def render_overhead(records: list[dict]) -> str:
    lines = ["| model | samples | plain samples/s | project samples/s | overhead |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['samples']:,} | {r['plain_samples_per_s']:,.0f} | "
                     f"{r['project_samples_per_s']:,.0f} | {r['overhead_pct']:+.1f}% |")
    c = records[0]["config"]
    return ("\n".join(lines) + f"\n\nMade by `{c['command']}` ({c['benchmark_wall_s']:.0f} s in all, "
            f"{c['machine']['cores']} cores; {records[0]['repeats']} alternating repeats per model, medians).\n")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"results-gtsrb": (RECORDS.name, render_gtsrb), "results-wall-time": (RECORDS.name, render_wall),
            "results-training-overhead": (OVERHEAD.name, render_overhead)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/results-gtsrb"))
    parser.add_argument("--overhead", type=Path, help="a benchmarks/run.py training result (JSON): write only its records")
    parser.add_argument("--other-signs-only", action="store_true",
                        help="(re)measure only the other-signs record, on the stop -> 30 model already in --runs")
    args = parser.parse_args()
    if args.overhead:
        overhead(args.overhead)
    elif args.other_signs_only:
        add_other_signs(args.runs)
    else:
        run(args.runs)
