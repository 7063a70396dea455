"""The tables and figures of docs/detection.md, from records: runs the `backdoor-arena` commands the page shows
(the CLI defaults, which keep the defenders' 5% hold-out of the training split out of training) and writes one
Record per run to docs/records/detection.jsonl (models, Neural Cleanse, its mitigations, STRIP, Spectral
Signatures) and docs/records/detection_zoo.jsonl (the 10 + 10 zoo, one Record per model); `--bench` copies
the Neural Cleanse benchmark's summary (benchmarks/results/detection.json) into docs/records/detection_bench.jsonl.
docs/tables.py renders the page's `<!-- table:detection.* -->` blocks from these records (`docs_tables()`).

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/detection.py \
        [--work runs/detection]        # every run (resumes finished steps of the same command), records, figures
    .venv/bin/python docs/experiments/detection.py --figures-only     # redraw the figures from the records
    BACKDOOR_ARENA_THREADS=1 .venv/bin/python benchmarks/run.py detection && \
        .venv/bin/python docs/experiments/detection.py --bench        # benchmark summary -> records
    .venv/bin/python docs/tables.py                                   # rewrite the page's tables

Each step's JSON output, wall time and the machine's load average before and after it are cached in
WORK/steps/NAME.json; a step reruns only if its command changed (or with --fresh).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
RECORDS = DOCS / "records" / "detection.jsonl"
ZOO_RECORDS = DOCS / "records" / "detection_zoo.jsonl"
BENCH_RECORDS = DOCS / "records" / "detection_bench.jsonl"
BENCH_JSON = ROOT / "benchmarks" / "results" / "detection.json"
FIG = DOCS / "figures" / "detection"
VERB, ZOO_VERB, BENCH_VERB = "detection", "detection-zoo", "detection-bench"
N_BOOT, BOOT_SEED, LEVEL = 2000, 0, 0.95

COMMON = "--dataset mnist --model badnet-mnist --epochs 4 --seed 0"
SQUARE = "--target 7 --trigger square --trigger-size 4 --color white --position bottom-right"
NC = {"steps": 200, "batch_size": 16}  # Neural Cleanse on the two single models (and inside the mitigations)
ZOO_BUILD = "--dataset mnist --clean 10 --backdoored 10 --epochs 2 --train-size 20000 --threads 1"
ZOO_NC = {"steps": 120, "batch_size": 8, "check_every": 8, "patience": 4}


def _nc_p(params: dict[str, Any]) -> str:
    return " ".join(f"-p {k}={v}" for k, v in params.items())


def steps(work: str) -> list[tuple[str, str, str]]:
    """(name, what it is, command after `backdoor-arena`), in the order they run. WORK is the scratch folder."""
    w = work
    return [
        ("square", "BadNets square, 10%", f"attack badnets {COMMON} {SQUARE} --poison-rate 0.1 --out {w}/square.safetensors"),
        ("clean", "clean", f"train {COMMON} --out {w}/clean.safetensors"),
        ("square-1pct", "BadNets square, 1%",
         f"attack badnets {COMMON} {SQUARE} --poison-rate 0.01 --out {w}/square-1pct.safetensors"),
        ("clean-vs-square", "clean model, square trigger",
         f"evaluate {w}/clean.safetensors --attack-spec {w}/square.attack.json --force"),
        ("nc-square", "Neural Cleanse, BadNets square",
         f"detect neural-cleanse {w}/square.safetensors {_nc_p(NC)} --attack-spec {w}/square.attack.json "
         f"-o {w}/nc-square"),
        ("nc-clean", "Neural Cleanse, clean", f"detect neural-cleanse {w}/clean.safetensors {_nc_p(NC)} -o {w}/nc-clean"),
        ("nc-unlearning", "nc-unlearning",
         f"defend nc-unlearning {w}/square.safetensors --out {w}/square-unlearned.safetensors "
         f"--attack-spec {w}/square.attack.json --detector '{json.dumps(NC)}'"),
        ("nc-pruning", "nc-pruning",
         f"defend nc-pruning {w}/square.safetensors --out {w}/square-pruned.safetensors "
         f"--attack-spec {w}/square.attack.json --detector '{json.dumps(NC)}'"),
        ("strip", "STRIP, BadNets square",
         f"detect strip {w}/square.safetensors --attack-spec {w}/square.attack.json -o {w}/strip"),
        ("spectral-10pct", "Spectral Signatures, 10% poisoning",
         f"detect spectral {w}/square.safetensors --attack-spec {w}/square.attack.json --retrain-epochs 2"),
        ("spectral-1pct", "Spectral Signatures, 1% poisoning",
         f"detect spectral {w}/square-1pct.safetensors --attack-spec {w}/square-1pct.attack.json --retrain-epochs 4"),
        ("zoo-build", "zoo build", f"zoo build {ZOO_BUILD} --out {w}/zoo-mnist"),
        ("zoo-evaluate", "zoo evaluate",
         f"zoo evaluate {w}/zoo-mnist --detector neural-cleanse {_nc_p(ZOO_NC)} -o {w}/zoo-eval"),
    ]


# --------------------------------------------------------------------------- running
def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": round(one, 2), "5min": round(five, 2), "15min": round(fifteen, 2)}


def _cli(name: str, command: str, cache: Path, fresh: bool) -> dict[str, Any]:
    """Run `backdoor-arena COMMAND` (with --json where it has one), or reuse the cached result of the same command."""
    path = cache / f"{name}.json"
    if path.is_file() and not fresh:
        old = json.loads(path.read_text())
        if old.get("command") == command:
            print(f"[{time.strftime('%H:%M:%S')}] {name}: cached ({old['wall_s']} s)", flush=True)
            return old
    extra = [] if command.startswith("zoo build") else ["--json"]
    if not command.startswith("evaluate"):
        extra += ["--quiet"]
    if not command.startswith(("evaluate", "zoo build")):
        extra += ["--overwrite"]
    exe = Path(sys.executable).with_name("backdoor-arena")
    print(f"[{time.strftime('%H:%M:%S')}] {name}: backdoor-arena {command}", flush=True)
    before = _load()
    started = time.perf_counter()
    r = subprocess.run([str(exe), *shlex.split(command), *extra], capture_output=True, text=True,
                       check=False)
    wall = round(time.perf_counter() - started, 1)
    if r.returncode:
        raise SystemExit(f"backdoor-arena {command} failed ({r.returncode}): {r.stderr.strip()}")
    out = json.loads(r.stdout) if "--json" in extra else {"stdout": r.stdout.strip()}
    result = {"command": command, "wall_s": wall, "load_before": before, "load_after": _load(), "out": out}
    path.write_text(json.dumps(result, indent=1))
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {wall} s", flush=True)
    return result


def _shown(command: str, work: str) -> str:
    return "backdoor-arena " + command.replace(work + "/", "RUNS/")


def run(work: Path, fresh: bool) -> None:
    from backdoor_arena.api.detecting import poisoned_training_set
    from backdoor_arena.attacks import load_attack_spec
    from backdoor_arena.data import load_dataset
    from backdoor_arena.defenses import clean_holdout
    from backdoor_arena.modelfile import read_manifest
    from backdoor_arena.records import Record, read_jsonl, write_jsonl
    from backdoor_arena.registries import DATA_FILTERS, INPUT_DETECTORS, MODEL_DETECTORS
    from backdoor_arena.runtime import versions

    w = str(work)
    cache = work / "steps"
    cache.mkdir(parents=True, exist_ok=True)
    FIG.mkdir(parents=True, exist_ok=True)
    done = {name: _cli(name, command, cache, fresh) for name, _label, command in steps(w)}
    labels = {name: label for name, label, _c in steps(w)}
    v = versions()

    def record(name: str, metrics: dict[str, Any], **config: Any) -> Record:
        d = done[name]
        cfg = {"command": _shown(d["command"], w), "threads": os.environ.get("BACKDOOR_ARENA_THREADS"),
               "load_before": d["load_before"], "load_after": d["load_after"], **config}
        return Record(VERB, cfg, 0, {**metrics, "wall_s": d["wall_s"]}, {"run": name, "label": labels[name]}, v)

    recs = []
    for name in ("square", "clean", "square-1pct"):
        o = done[name]["out"]
        recs.append(record(name, {k: o.get(k) for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")},
                           defender_holdout=read_manifest(work / f"{name}.safetensors").training.get("defender_holdout")))
    o = done["clean-vs-square"]["out"]
    recs.append(record("clean-vs-square", {k: o.get(k) for k in ("clean_accuracy", "attack_success_rate",
                                                                  "robust_accuracy", "n_clean", "n_triggered")}))
    for name in ("nc-square", "nc-clean"):
        o = done[name]["out"]
        norms = o["norms"]
        recs.append(record(name, {
            "anomaly_index": o["anomaly_index"], "flagged": o["flagged"], "threshold": o["threshold"],
            "suspected_target": o["suspected_target"], "smallest_norm_label": o["smallest_norm_label"],
            "true_target": o.get("true_target"), "norms": [round(x, 3) for x in norms],
            "median_norm": o["median_norm"], "clean_samples": o["clean_samples"]},
            detector_params=MODEL_DETECTORS.create("neural-cleanse", **NC).params()))
        shutil.copyfile(work / name / "reversed_triggers.png", FIG / f"nc_reversed_{name.removeprefix('nc-')}.png")
    for name in ("nc-unlearning", "nc-pruning"):
        o = done[name]["out"]
        details = read_manifest(o["out"]).training["defense"]["details"]
        curve = [json.loads(line) for line in Path(o["curve_jsonl"]).read_text().splitlines() if line.strip()]
        curve = [{k: (round(x, 4) if isinstance(x, float) else x) for k, x in row.items() if k not in ("defense", "model")}
                 for row in curve]
        metrics = {**o["after"], **{f"before_{k}": x for k, x in o["before"].items()},
                   "reversed_label": details.get("label"), "clean_samples": o["clean_samples"]}
        if name == "nc-pruning":
            metrics.update({"pruned": details["pruned"], "neurons": details["neurons"],
                            "fraction_pruned": details["pruned"] / details["neurons"], "curve": curve})
        else:
            metrics.update({"stamped": details["stamped"], "curve": curve})
        recs.append(record(name, metrics, defense_params=o["params"]))
    o = done["strip"]["out"]
    recs.append(record("strip", {k: o[k] for k in ("threshold", "frr", "far", "auroc", "n_clean_eval",
                                                   "n_triggered_eval", "inputs_per_second", "clean_samples")},
                       detector_params=INPUT_DETECTORS.create("strip").params()))
    shutil.copyfile(work / "strip" / "strip_hist.png", FIG / "strip_hist.png")
    train = load_dataset("mnist", "train")
    for name, model in (("spectral-10pct", "square"), ("spectral-1pct", "square-1pct")):
        o = done[name]["out"]
        hold = read_manifest(work / f"{model}.safetensors").training["defender_holdout"]
        rest = clean_holdout(train, hold["fraction"], hold["seed"])[0]
        atk = load_attack_spec(work / f"{model}.attack.json")
        data, poisoned = poisoned_training_set(atk, rest)
        in_target = data.labels == atk.target
        tp = round(o["target_class_recall"] * o["n_poisoned"])
        removed_in_target = round(tp / o["target_class_precision"]) if o["target_class_precision"] else 0
        before = done[model]["out"]
        recs.append(record(name, {
            **{k: o[k] for k in ("n_samples", "n_poisoned", "n_removed", "removal_precision", "removal_recall",
                                 "target_class_precision", "target_class_recall", "auroc", "retrain_epochs",
                                 "retrained_clean_accuracy", "retrained_attack_success_rate", "clean_samples")},
            "target": atk.target, "target_class_size": int(in_target.sum()),
            "target_class_poisoned": int((poisoned & in_target).sum()), "removed_in_target": removed_in_target,
            "poison_rate": atk.poison_rate, "before_clean_accuracy": before["clean_accuracy"],
            "before_attack_success_rate": before["attack_success_rate"]},
            detector_params=DATA_FILTERS.create("spectral").params()))
    write_jsonl(RECORDS, recs)
    print(f"wrote {len(recs)} records to {RECORDS}", flush=True)

    # the zoo: one record per model (its plan entry, truth and score), the build and evaluation in each config
    zoo = work / "zoo-mnist"
    truth = {r["name"]: r for r in read_jsonl(zoo / "specs" / "truth.jsonl")}
    scores = read_jsonl(work / "zoo-eval" / "scores.jsonl")
    built = json.loads((zoo / "zoo.json").read_text())
    zrecs = []
    for s in sorted(scores, key=lambda r: r["name"]):
        t = truth[s["name"]]
        zrecs.append(Record(ZOO_VERB, {
            "build": _shown(done["zoo-build"]["command"], w), "evaluate": _shown(done["zoo-evaluate"]["command"], w),
            "zoo": built["config"], "detector_params": MODEL_DETECTORS.create("neural-cleanse", **ZOO_NC).params(),
            "build_wall_s": built["wall_time_s"], "evaluate_wall_s": done["zoo-evaluate"]["wall_s"],
            "threads": os.environ.get("BACKDOOR_ARENA_THREADS"),
            "load_evaluate": [done["zoo-evaluate"]["load_before"], done["zoo-evaluate"]["load_after"]]},
            t["seed"], {"anomaly_index": s["score"], "flagged": s["flagged"], "threshold": s["threshold"],
                        "suspected_target": s["suspected_target"], "clean_accuracy": t["clean_accuracy"],
                        "attack_success_rate": t.get("attack_success_rate"), "wall_s": s["detect_time_s"],
                        "train_wall_s": t.get("train_time_s")},
            {"model": s["name"], **{k: t.get(k) for k in ("backdoored", "family", "optimizer", "lr", "epochs", "mode",
                                                          "target", "sources", "trigger", "size", "position",
                                                          "poison_rate", "alpha", "cover_rate")}}, v))
    write_jsonl(ZOO_RECORDS, zrecs)
    print(f"wrote {len(zrecs)} records to {ZOO_RECORDS}", flush=True)


def bench_to_records(path: Path = BENCH_JSON) -> None:
    """The benchmark's summary (benchmarks/results/detection.json) as Records."""
    from backdoor_arena.records import Record, write_jsonl

    b = json.loads(path.read_text())
    cfg = {"command": f"BACKDOOR_ARENA_THREADS={b['records'][0]['threads']} python benchmarks/run.py detection",
           "source": "benchmarks/results/detection.json", "machine": b["machine"], "quick": b["quick"],
           "benchmark_wall_s": b["wall_time_s"]}
    recs = []
    for r in b["records"]:
        subject = {k: r[k] for k in ("what", "setting", "mode") if k in r}
        metrics = {k: x for k, x in r.items() if k not in subject}
        recs.append(Record(BENCH_VERB, cfg, 0, metrics, subject, b["versions"]))
    write_jsonl(BENCH_RECORDS, recs)
    print(f"wrote {len(recs)} records to {BENCH_RECORDS}")


# --------------------------------------------------------------------------- figures from records
def draw_figures() -> list[Path]:
    from backdoor_arena.records import read_jsonl
    from backdoor_arena.report import plot_roc, pyplot, save_figure

    out = []
    by = {r["run"]: r for r in read_jsonl(RECORDS) if r.get("verb") == VERB}
    curve = by["nc-pruning"]["curve"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = [c["fraction"] for c in curve]
    ax.plot(x, [c["clean_set_accuracy"] for c in curve], marker="o", label="defender's clean-set accuracy")
    ax.plot(x, [c["reversed_success"] for c in curve], marker="x", ls="--", label="reversed-trigger success (clean set)")
    if "attack_success_rate" in curve[0]:
        ax.plot(x, [c["attack_success_rate"] for c in curve], marker=".", ls=":", label="real trigger ASR (evaluator)")
    ax.set_xlabel("fraction of penultimate neurons pruned")
    ax.set_ylabel("fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out.append(save_figure(fig, FIG / "nc_pruning_curve.png"))
    rows = _zoo_rows(read_jsonl(ZOO_RECORDS))
    s = _zoo_summary(rows)
    out.append(plot_roc(FIG / "zoo_roc.png", rows, f"Neural Cleanse on {s['n_clean']} clean + {s['n_backdoored']} "
                        f"backdoored models (10 + 10 zoo): AUROC {s['auroc']:.3f} "
                        f"[{s['auroc_ci'][0]:.3f}, {s['auroc_ci'][1]:.3f}]"))
    return out


# --------------------------------------------------------------------------- tables from records
def _p(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def _wilson(k: int, n: int, digits: int = 1) -> str:
    from backdoor_arena.detection_metrics import wilson_interval

    lo, hi = wilson_interval(k, n, LEVEL)
    return f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]%"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _made_by(*records: dict[str, Any]) -> str:
    return "".join(f"\nMade by `{r['config']['command']}`.\n" for r in records)


def _by(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["run"]: r for r in records if r.get("verb") == VERB}


def render_models(records: list[dict[str, Any]]) -> str:
    by = _by(records)
    vs = by["clean-vs-square"]
    rows = [[by["square"]["label"], _p(by["square"]["clean_accuracy"]), _p(by["square"]["attack_success_rate"]),
             f"{by['square']['wall_s']:.0f} s"],
            [by["clean"]["label"], _p(by["clean"]["clean_accuracy"]), _p(vs["attack_success_rate"]) + "¹",
             f"{by['clean']['wall_s']:.0f} s"],
            [by["square-1pct"]["label"], _p(by["square-1pct"]["clean_accuracy"]),
             _p(by["square-1pct"]["attack_success_rate"]), f"{by['square-1pct']['wall_s']:.0f} s"]]
    hold = by["square"]["config"]["defender_holdout"]
    loads = [x for r in by.values() for x in (r["config"]["load_before"]["1min"], r["config"]["load_after"]["1min"])]
    threads = sorted({str(r["config"]["threads"]) for r in by.values()})
    return (_table(["model", "clean accuracy (10,000 test images)", "ASR (4x4 square -> 7, test images not of class 7)",
                    "wall time"], rows)
            + f"\n¹ the clean model against the square model's attack spec (`evaluate --force`), on "
              f"{vs['n_triggered']:,} triggered test images. Every model kept the defenders' "
              f"{100 * hold['fraction']:.0f}% hold-out (seed {hold['seed']}) out of training.\n"
            + f"\nEvery run on this page (tables above and below, not the zoo's): {' or '.join(threads)} thread"
              f"{'' if threads == ['1'] else 's'}; the "
              f"machine's load average (1 min) at the start and end of the runs was {min(loads):.1f}-{max(loads):.1f} "
              "on its 2 cores (other jobs were running), so every wall time here is pessimistic; accuracies do not "
              "depend on load.\n"
            + _made_by(by["square"], by["clean"], by["square-1pct"], vs))


def render_nc(records: list[dict[str, Any]]) -> str:
    by = _by(records)
    rows = []
    for name, what in (("nc-square", "BadNets square"), ("nc-clean", "clean, same network")):
        r = by[name]
        target = "—"
        if r["flagged"]:
            ok = r["true_target"] is None or r["suspected_target"] == r["true_target"]
            target = f"**{r['suspected_target']}**" + ("" if r["true_target"] is None else
                                                      (" (correct)" if ok else f" (true: {r['true_target']})"))
        others = [n for i, n in enumerate(r["norms"]) if i != r["smallest_norm_label"]]
        rows.append([what, f"**{r['anomaly_index']:.2f}**", "yes" if r["flagged"] else "no", target,
                     f"{min(r['norms']):.1f} (label {r['smallest_norm_label']}) / {r['median_norm']:.1f}",
                     f"{min(others):.1f}-{max(others):.1f}", f"{r['wall_s']:.0f} s"])
    p = by["nc-square"]["config"]["detector_params"]
    return (_table(["model", "anomaly index", f"flagged (> {p['threshold']:g})", "suspected target",
                    "smallest norm / median", "other labels' norms", "wall time"], rows)
            + f"\nSettings: {p['steps']} Adam steps (lr {p['lr']:g}), batch {p['batch_size']} per label, "
              f"{p['n_samples']:,} images of the {by['nc-square']['clean_samples']:,}-image hold-out, seed {p['seed']}; "
              "one run per model (no repeats).\n"
            + _made_by(by["nc-square"], by["nc-clean"]))


def render_mitigation(records: list[dict[str, Any]]) -> str:
    by = _by(records)
    u, pr = by["nc-unlearning"], by["nc-pruning"]
    up, pp = u["config"]["defense_params"], pr["config"]["defense_params"]
    rows = [["before (BadNets square, 10%)", _p(u["before_clean_accuracy"]), _p(u["before_attack_success_rate"]), ""]]
    rows.append([f"nc-unlearning ({up['epochs']} epochs on the {u['clean_samples']:,}-image clean set, "
                 f"{100 * up['stamp_fraction']:.0f}% stamped with the reversed trigger of label {u['reversed_label']}, labels "
                 f"kept; SGD lr {up['lr']:g})",
                 f"**{_p(u['clean_accuracy'])}** ({100 * (u['clean_accuracy'] - u['before_clean_accuracy']):+.2f} pt)",
                 f"**{_p(u['attack_success_rate'])}**", f"{u['wall_s']:.0f} s"])
    rows.append([f"nc-pruning (zero penultimate neurons by activation gap, {100 * pp['step_fraction']:g}% at a time, "
                 f"until the reversed trigger succeeds on < {100 * pp['stop_success']:g}% of the clean set): "
                 f"{pr['pruned']} of {pr['neurons']} pruned",
                 f"{_p(pr['clean_accuracy'])} ({100 * (pr['clean_accuracy'] - pr['before_clean_accuracy']):+.2f} pt)",
                 _p(pr["attack_success_rate"]), f"{pr['wall_s']:.0f} s"])
    return (_table(["", "clean accuracy", "ASR", "wall time (incl. Neural Cleanse)"], rows)
            + "\nEach mitigation runs its own Neural Cleanse (same settings as above) on the hold-out; one run, seed 0.\n"
            + _made_by(u, pr))


def render_strip(records: list[dict[str, Any]]) -> str:
    r = _by(records)["strip"]
    n_c, n_t = r["n_clean_eval"], r["n_triggered_eval"]
    k_frr, k_far = round(r["frr"] * n_c), round(r["far"] * n_t)
    p = r["config"]["detector_params"]
    rows = [["BadNets square, 10%", f"{_p(r['frr'])} ({k_frr}/{n_c:,}) {_wilson(k_frr, n_c)}",
             f"**{_p(r['far'])}** ({k_far}/{n_t:,}) {_wilson(k_far, n_t)}", f"{r['auroc']:.4f}",
             f"{r['wall_s']:.0f} s"]]
    return (_table(["model", "FRR (clean test images)", "FAR (triggered test images)", "AUROC", "wall time"], rows)
            + f"\nN = {p['n_overlays']} overlays; threshold fitted to reject "
              f"{100 * p['frr']:g}% of the defender's clean hold-out; Wilson 95% intervals.\n"
            + _made_by(r))


def render_spectral(records: list[dict[str, Any]]) -> str:
    by = _by(records)
    rows = []
    for name in ("spectral-1pct", "spectral-10pct"):
        r = by[name]
        cap = min(1.0, r["target_class_poisoned"] / r["removed_in_target"]) if r["removed_in_target"] else 1.0
        rows.append([f"{100 * r['poison_rate']:g}% of the set ({r['n_poisoned']:,})",
                     f"{r['target_class_poisoned']:,} / {r['target_class_size']:,} = "
                     f"{100 * r['target_class_poisoned'] / r['target_class_size']:.1f}%",
                     f"{r['n_removed']:,} ({r['removed_in_target']:,} of class {r['target']})",
                     f"**{_p(r['removal_recall'], 1)}** (at most "
                     f"{_p(min(r['n_poisoned'], r['removed_in_target']) / r['n_poisoned'], 1)})",
                     f"{_p(r['target_class_precision'], 1)} (at most {_p(cap, 1)})",
                     f"{r['auroc']:.3f}",
                     f"{_p(r['before_attack_success_rate'])} -> **{_p(r['retrained_attack_success_rate'])}** "
                     f"({r['retrain_epochs']} epochs)",
                     f"{_p(r['retrained_clean_accuracy'])} (model before: {_p(r['before_clean_accuracy'])})",
                     f"{r['wall_s']:.0f} s"])
    p = by["spectral-1pct"]["config"]["detector_params"]
    return (_table(["poisoning (4x4 square -> 7)", f"poisons / class {by['spectral-1pct']['target']}", "removed",
                    "recall", f"precision in class {by['spectral-1pct']['target']}", "AUROC (all samples)",
                    "ASR before -> after retraining", "clean accuracy after retraining", "wall time"], rows)
            + f"\nepsilon = {p['epsilon']:g}, removal factor {p['removal_factor']:g} (the top "
              f"{100 * p['epsilon'] * p['removal_factor']:g}% of every class is removed); one run each, seed 0.\n"
            + _made_by(by["spectral-1pct"], by["spectral-10pct"]))


def _zoo_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**r, "score": r["anomaly_index"], "name": r["model"]} for r in records if r.get("verb") == ZOO_VERB]


def _zoo_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from backdoor_arena import api

    return api.summarize(rows, n_boot=N_BOOT, seed=BOOT_SEED, level=LEVEL)


def _trigger(r: dict[str, Any]) -> str:
    if r["trigger"] is None:
        return ""
    if r["trigger"] == "blend":
        return f"noise blend, alpha {r['alpha']:g}"
    what = r["trigger"] if r["size"] is None else f"{r['size']}x{r['size']} {r['trigger']}"
    extra = f", sources {r['sources']}" if r.get("mode") == "source-specific" else ""
    return f"{what}, {r['position']}{extra}"


def render_zoo(records: list[dict[str, Any]]) -> str:
    rows = _zoo_rows(records)
    s = _zoo_summary(rows)
    clean = [r for r in rows if not r["backdoored"]]
    bad = [r for r in rows if r["backdoored"]]
    cfg = rows[0]["config"]
    thr = s["threshold"]
    e = s["effective"]

    def rng(vals: list[float], fmt: str = ".2f") -> str:
        return f"{format(min(vals), fmt)} - {format(max(vals), fmt)}"

    summary = _table(["", "value"], [
        ["AUROC (on anomaly indices) [95% bootstrap]",
         f"**{s['auroc']:.3f}** [{s['auroc_ci'][0]:.3f}, {s['auroc_ci'][1]:.3f}]"],
        ["TPR at 5% FPR", f"{s['tpr_at_5pct_fpr']:.2f}"],
        [f"learned backdoors only (ASR >= {100 * e['min_asr']:.0f}%: {e['n_backdoored']} of {len(bad)}): AUROC, "
         f"flagged at {thr:g}", f"{e['auroc']:.3f} [{e['auroc_ci'][0]:.3f}, {e['auroc_ci'][1]:.3f}]; "
                                f"{e['n_flagged']}/{e['n_backdoored']} {_wilson(e['n_flagged'], e['n_backdoored'], 0)}"],
        [f"backdoored flagged at {thr:g} (Wilson 95%)",
         f"{s['n_backdoored_flagged']}/{len(bad)} {_wilson(s['n_backdoored_flagged'], len(bad), 0)}"],
        [f"clean flagged at {thr:g} (Wilson 95%)",
         f"{s['n_clean_flagged']}/{len(clean)} {_wilson(s['n_clean_flagged'], len(clean), 0)}"],
        ["suspected = true target (single-target models)", f"{s['n_target_hits']}/{s['n_with_target']}"],
        ["anomaly index, backdoored", rng([r["score"] for r in bad])],
        ["anomaly index, clean", rng([r["score"] for r in clean])],
        ["clean accuracy, all 20 models" if len(rows) == 20 else "clean accuracy, all models",
         f"{rng([100 * r['clean_accuracy'] for r in rows])}%"],
        ["ASR, backdoored", f"{rng([100 * r['attack_success_rate'] for r in bad], '.1f')}%"],
        ["wall time: build / Neural Cleanse per model (median)",
         f"{cfg['build_wall_s']:.0f} s / {statistics.median(r['wall_s'] for r in rows):.0f} s"],
    ])
    order = sorted(rows, key=lambda r: (r["backdoored"], r["family"], -r["score"]))
    models = _table(
        ["model", "family", "optimiser", "trigger", "target", "poison rate", "clean acc.", "ASR", "anomaly index",
         "flagged", "suspected"],
        [[r["model"], r["family"], r["optimizer"], _trigger(r), "" if r["target"] is None else r["target"],
          "" if r["poison_rate"] is None else f"{100 * r['poison_rate']:g}%", f"{100 * r['clean_accuracy']:.2f}%",
          "" if r["attack_success_rate"] is None else f"{100 * r['attack_success_rate']:.1f}%",
          f"{r['score']:.2f}", "yes" if r["flagged"] else "no",
          "" if r["suspected_target"] is None else r["suspected_target"]] for r in order])
    return (summary + "\n" + models
            + f"\nMade by `{cfg['build']}` and `{cfg['evaluate']}` (RUNS = the script's --work folder).\n")


def render_bench(records: list[dict[str, Any]]) -> str:
    recs = [r for r in records if r.get("verb") == BENCH_VERB]
    nc = [r for r in recs if r["what"] == "neural-cleanse"]

    def t(r: dict[str, Any]) -> str:
        return f"{r['median_s']:.2f} s [{r['min_s']:.2f}, {r['max_s']:.2f}]"

    rows = []
    for r in nc:
        speed = "1 (baseline)" if r["mode"] == "loop" else \
            f"**{r['speedup']:.2f}x** [{r['speedup_min']:.2f}, {r['speedup_max']:.2f}]"
        diff = "" if r["mode"] == "loop" else f"{r['max_mask_diff']:.1e}"
        rows.append([r["setting"], r["mode"], r["images_per_pass"], t(r), speed, diff])
    out = _table(["setting", "mode", "images per pass", f"time: median [min, max] of {nc[0]['repeats']}",
                  "speedup vs loop: median [min, max]", "max mask difference vs loop"], rows)
    net = [r for r in recs if r["what"] == "network pass"]
    if net:
        out += "\n" + _table(["badnet-mnist forward + backward to the input", "per image: median [min, max]"],
                             [[r["setting"], f"{r['median_us']:.0f} us [{r['min_us']:.0f}, {r['max_us']:.0f}]"]
                              for r in net])
    strip = [r for r in recs if r["what"] == "strip"]
    if strip:
        s = strip[0]
        out += "\n" + _table(["STRIP", "inputs per second: median [min, max]"],
                             [[s["setting"], f"{s['median_inputs_per_s']:.0f} [{s['min_inputs_per_s']:.0f}, "
                                             f"{s['max_inputs_per_s']:.0f}]"]])
    c = recs[0]["config"]
    load = recs[0].get("load_before"), recs[-1].get("load_after")
    out += (f"\nThreads: {recs[0]['threads']} (of {c['machine']['cores']} cores); load average (1 min) "
            f"{load[0]['1min']:.2f} before and {load[1]['1min']:.2f} after; other busy processes at the start: "
            f"{'; '.join(recs[0]['others_busy']) or 'none'}. Benchmark wall time {c['benchmark_wall_s']:.0f} s.\n")
    return out + f"\nMade by `{c['command']}` (copied to docs/records/{BENCH_RECORDS.name} by " \
                 "`docs/experiments/detection.py --bench`).\n"


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"detection.models": (RECORDS.name, render_models), "detection.nc": (RECORDS.name, render_nc),
            "detection.nc-mitigation": (RECORDS.name, render_mitigation),
            "detection.strip": (RECORDS.name, render_strip), "detection.spectral": (RECORDS.name, render_spectral),
            "detection.zoo": (ZOO_RECORDS.name, render_zoo), "detection.bench": (BENCH_RECORDS.name, render_bench)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("runs/detection"), help="scratch folder (models, step cache)")
    ap.add_argument("--fresh", action="store_true", help="rerun every step even if its cached command is the same")
    ap.add_argument("--figures-only", action="store_true", help="redraw the figures from the records")
    ap.add_argument("--bench", action="store_true", help=f"copy {BENCH_JSON.relative_to(ROOT)} into the records")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.bench:
        bench_to_records()
        return
    if not args.figures_only:
        run(args.work, args.fresh)
    for p in draw_figures():
        print(f"wrote {p}")


if __name__ == "__main__":
    main()
