"""Every model detector and the calibrated verdict on a held-out MNIST zoo whose trigger families neither the
calibration zoo nor MNTD's shadows saw.

    BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/heldout_zoo.py --root runs/heldout
    .venv/bin/python docs/tables.py                     # re-render docs/detection.md's blocks from the records

1. Two zoos (`api.build_zoo`, badnet-mnist, SGD and Adam, each model its own seeded training subset, the
   defenders' 5% hold-out (seed 0) never trained on):
   - calibration: 8 clean + 8 backdoored models of the wider zoo of docs/nc-population.md (runs/nc-zoo, made by
     docs/experiments/nc_population.py; same hold-out), two learned backdoors per family square, pattern,
     blended and source-specific, chosen by name order;
   - evaluation (held out): 20 clean + 20 backdoored, families hollow-square, x, wanet (strength 4 or 6, no
     noise mode) and invisible (a +-epsilon pattern, epsilon 16/255 or 32/255), 2-3 epochs on 6,000 images; and
     10 more backdoored (wanet, hollow-square; seed 17) so that at least 20 backdoors are learned.
   MNTD's shadows are jumbo-trained on the families mask and blend only (`mntd_shadows.py`).
2. `api.scan_calibrate` on the calibration zoo: every model detector, then the logistic-regression verdict.
3. `api.scan_zoo` on the evaluation zoo with the calibration: per detector and for the verdict AUROC (bootstrap
   95% interval), TPR at 5% FPR, per family, wall time per model; ROC plot.
4. One record per (model, detector) in docs/records/heldout_zoo.jsonl; the tables of docs/detection.md
   (`docs_tables`) and docs/figures/detection/heldout_roc*.png come from the records alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "heldout_zoo.jsonl"
FIGURES = DOCS / "figures" / "detection"
VERB = "heldout-zoo"
DETECTORS = ("neural-cleanse", "k-arm", "abs", "mntd")
VERDICT = "verdict"
N_BOOT, LEVEL, FPR, MIN_ASR = 2000, 0.95, 0.05, 0.5
# one defenders' hold-out (seed 0) for every zoo, the wider zoo's too: MNTD's shadows learn from one clean set
EVALUATION = {"dataset": "mnist", "architecture": "badnet-mnist", "epochs": 2, "max_epochs": 3, "train_size": 6000,
              "holdout_seed": 0, "clean": 20, "backdoored": 20, "seed": 14,
              "families": ("hollow-square", "x", "wanet", "invisible")}
# a second held-out zoo (same settings and hold-out, another seed) of the families whose backdoors the first
# learned most often, so that at least 20 learned backdoors are evaluated
EVALUATION_2 = {**EVALUATION, "clean": 0, "backdoored": 10, "seed": 17, "families": ("wanet", "hollow-square")}
EVAL_ZOOS = {"evaluation": EVALUATION, "evaluation-2": EVALUATION_2}
CALIBRATION_FAMILIES, PER_FAMILY, N_CLEAN_CALIBRATION = ("square", "pattern", "blended", "source-specific"), 2, 8
MNTD_SHADOWS = {"n_clean": 20, "n_backdoored": 20, "families": ["mask", "blend"], "optimizers": ["sgd"],
                "poison_rates": [0.05, 0.25], "shadow_epochs": 4, "meta_epochs": 30}


def params(root: Path) -> dict[str, dict[str, Any]]:
    """The detectors' settings: their defaults, with MNTD's shadows cached once for every model."""
    return {"mntd": {**MNTD_SHADOWS, "cache_dir": str((root / "mntd-shadows").resolve())}}


def run(args: argparse.Namespace) -> None:
    from backdoor_arena import api
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    root = Path(args.root)
    executor = api.Executor(args.executor, jobs=args.jobs) if args.executor != "local" else None
    started = time.perf_counter()
    zoos = {name: root / name for name in EVAL_ZOOS} | {"calibration": root / "calibration"}
    for name, cfg in EVAL_ZOOS.items():
        print(f"[{time.strftime('%H:%M:%S')}] zoo {name}", flush=True)
        api.build_zoo(zoos[name], api.ZooConfig(**cfg), progress=False, executor=executor)
    calibration_view(Path(args.calibration_zoo), zoos["calibration"])
    p = params(root)
    # the shadows once per zoo (its defenders' hold-out) before the scans: parallel scans would otherwise train
    # the same shadows side by side
    for zoo in zoos.values():
        print(f"[{time.strftime('%H:%M:%S')}] MNTD shadows for {zoo.name}", flush=True)
        _train_shadows(p["mntd"], zoo)
    calib = root / "calibration.json"
    print(f"[{time.strftime('%H:%M:%S')}] calibration scans", flush=True)
    api.scan_calibrate(zoos["calibration"], calib, detectors=list(DETECTORS), params=p, progress=False,
                       executor=executor)
    import json

    rows, truth, plan = [], {}, {}
    for name, cfg in EVAL_ZOOS.items():
        print(f"[{time.strftime('%H:%M:%S')}] scans of {name}", flush=True)
        scan_dir = root / ("scan" if name == "evaluation" else f"scan-{name}")
        summary = api.scan_zoo(zoos[name], scan_dir, detectors=list(DETECTORS), params=p, calibration=calib, fpr=FPR,
                               n_boot=N_BOOT, progress=False, executor=executor)
        prefix = "" if name == "evaluation" else f"{name}/"  # model names repeat across zoos
        truth |= {prefix + r["name"]: r for r in api.read_truth(zoos[name])}
        plan |= {prefix + e["name"]: e for e in api.zoo_plan(api.ZooConfig(**cfg))}
        rows += [{**r, "name": prefix + r["name"]} for r in
                 (json.loads(line) for line in (scan_dir / "scores.jsonl").read_text().splitlines() if line)]
    wall = time.perf_counter() - started
    command = ("BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/heldout_zoo.py --root "
               f"{args.root} --calibration-zoo {args.calibration_zoo} --executor {args.executor}" + (f" --jobs {args.jobs}" if args.jobs else ""))
    records = []
    for r in rows:
        entry, t = plan[r["name"]], truth[r["name"]]
        records.append(Record(
            verb=VERB, seed=entry["seed"],
            config={"evaluation_zoos": [api.ZooConfig(**c).to_dict() for c in EVAL_ZOOS.values()],
                    "calibration_zoo": {"source": "runs/nc-zoo", "clean": N_CLEAN_CALIBRATION,
                                        "backdoored": PER_FAMILY * len(CALIBRATION_FAMILIES),
                                        "families": list(CALIBRATION_FAMILIES)}, "detector": r["detector"],
                    "detector_params": p.get(r["detector"], {}) | ({"cache_dir": "ROOT/mntd-shadows"}
                                                                    if r["detector"] == "mntd" else {}),
                    "clean_fraction": 0.05, "command": command, "wall_time_s_total": round(wall, 1),
                    "executor": summary["executor"]},
            subject={"model": r["name"], "family": r["family"], "backdoored": r["backdoored"],
                     "optimizer": entry["optimizer"], "epochs": entry["epochs"], "target": entry.get("target"),
                     "detector": r["detector"]},
            metrics={"score": r["score"], "flagged": r["flagged"], "threshold": r["threshold"],
                     "suspected_target": r["suspected_target"], "wall_s": r["wall_time_s"],
                     "failure": r["failure"], "clean_accuracy": t["clean_accuracy"],
                     "attack_success_rate": t.get("attack_success_rate")},
            versions=versions()))
    write_jsonl(args.records, records)
    print(f"[{time.strftime('%H:%M:%S')}] wrote {len(records)} records to {args.records} ({wall:.0f} s)", flush=True)


def calibration_view(source: Path, out: Path) -> None:
    """A calibration zoo of models copied from a zoo that shares the hold-out: the clean models and, per
    family, the learned backdoors (ASR >= MIN_ASR), the first by name."""
    import shutil

    from backdoor_arena import api
    from backdoor_arena.records import write_jsonl

    truth = sorted(api.read_truth(source), key=lambda r: r["name"])
    chosen = [r for r in truth if not r["backdoored"]][:N_CLEAN_CALIBRATION]
    for fam in CALIBRATION_FAMILIES:
        chosen += [r for r in truth if r["backdoored"] and r.get("family") == fam
                   and (r.get("attack_success_rate") or 0) >= MIN_ASR][:PER_FAMILY]
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    for r in chosen:
        shutil.copyfile(source / "models" / f"{r['name']}.safetensors", out / "models" / f"{r['name']}.safetensors")
        spec = source / "specs" / f"{r['name']}.attack.json"
        if spec.is_file():
            shutil.copyfile(spec, out / "specs" / spec.name)
    write_jsonl(out / "specs" / "truth.jsonl", chosen)


def _train_shadows(mntd: dict[str, Any], zoo: Path) -> None:
    """MNTD's shadows and meta-classifier on the clean set a scan of this zoo's models draws (cached)."""
    from backdoor_arena.api.training import defender_clean_set
    from backdoor_arena.data import load_dataset
    from backdoor_arena.defenses import MODEL_DETECTORS
    from backdoor_arena.modelfile import read_manifest

    manifest = read_manifest(next(iter(sorted((zoo / "models").glob("*.safetensors")))))
    clean, _ = defender_clean_set(manifest, load_dataset("mnist", "train"), 0.05, 0)
    # the shadows train in parallel (the executor is not part of MNTD's cache keys)
    MODEL_DETECTORS.create("mntd", **mntd, executor="processes", jobs=2).fit(clean)


# --------------------------------------------------------------------------- tables from records
def _summaries(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from backdoor_arena import api

    out = {}
    for name in [*DETECTORS, VERDICT]:
        mine = [r for r in records if r["detector"] == name]
        ok = [{**r, "name": r["model"]} for r in mine if r["score"] is not None and not r["failure"]]
        s = api.summarize(ok, FPR, n_boot=N_BOOT, seed=0, level=LEVEL, min_asr=MIN_ASR) if ok else {}
        walls = [r["wall_s"] for r in mine if r["wall_s"] is not None]
        s.update(n_failed=len(mine) - len(ok), wall_mean=sum(walls) / len(walls) if walls else None)
        out[name] = s
    return out


def _f(x: Any) -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}"


def _auroc(s: dict[str, Any]) -> str:
    ci = s.get("auroc_ci") or [None, None]
    return f"{_f(s.get('auroc'))} [{_f(ci[0])}, {_f(ci[1])}]"


def _md(rows: list[list[Any]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]) + "\n"


def _scope(records: list[dict[str, Any]]) -> str:
    cfg = records[0]["config"]
    zoos, ca = cfg["evaluation_zoos"], cfg["calibration_zoo"]
    ev = zoos[0]
    models = {r["model"]: r for r in records}
    bad = [r for r in models.values() if r["backdoored"]]
    clean = [r for r in models.values() if not r["backdoored"]]
    learned = [r for r in bad if (r["attack_success_rate"] or 0) >= MIN_ASR]
    parts = "; ".join(f"seed {z['seed']}: {z['clean']} clean + {z['backdoored']} backdoored, families "
                      f"{', '.join(z['families'])}" for z in zoos)
    return (f"Scope: {len(clean)} clean + {len(bad)} backdoored badnet-mnist models from two held-out zoos ({parts}); "
            f"{len(learned)}/{len(bad)} backdoors learned (ASR >= {100 * MIN_ASR:.0f}%). SGD (lr 0.05) and Adam "
            f"(lr 1e-3), {ev['epochs']}-{ev['max_epochs']} epochs, each model on its own seeded {ev['train_size']:,}-image "
            f"subset. Calibration zoo (verdict only): {ca['clean']} clean + {ca['backdoored']} backdoored models of "
            f"{ca['source']} (docs/nc-population.md), families {', '.join(ca['families'])}. MNTD's shadows: "
            f"{MNTD_SHADOWS['n_clean']} clean + {MNTD_SHADOWS['n_backdoored']} jumbo-backdoored, families "
            f"{', '.join(MNTD_SHADOWS['families'])}. Every detector at its defaults, on the defenders' 5% hold-out "
            f"(seed 0, never trained on). AUROC intervals: stratified bootstrap, {N_BOOT} replicates, 95%. Wall time: "
            f"mean per model, {cfg['executor'].get('executor')} executor with {cfg['executor'].get('jobs')} worker "
            "processes of one thread each on 2 cores (the verdict's: the whole scan).\n\n"
            f"Made by `{cfg['command']}` (its last run took {cfg['wall_time_s_total'] / 60:.0f} min, resuming the "
            "models and scans of earlier runs: the zoos took 33 min to build and the scans 13 min on 2 cores).\n")


def render_overall(records: list[dict[str, Any]]) -> str:
    s = _summaries(records)
    rows = []
    for name in [*DETECTORS, VERDICT]:
        e = s[name].get("effective", {})
        rows.append([f"`{name}`" if name != VERDICT else "**calibrated verdict**",
                     f"{s[name].get('n_backdoored', 0)} vs {s[name].get('n_clean', 0)}", _auroc(s[name]),
                     _f(s[name].get(f"tpr_at_{round(100 * FPR)}pct_fpr")),
                     f"{e.get('n_backdoored', 0)} vs {e.get('n_clean', 0)}", _auroc(e) if e else "n/a",
                     s[name]["n_failed"], "n/a" if s[name]["wall_mean"] is None else f"{s[name]['wall_mean']:.1f} s"])
    return _md(rows, ["detector", "backdoored vs clean", "AUROC [95% CI]", "TPR at 5% FPR",
                      "learned backdoors only", "AUROC (learned) [95% CI]", "failed", "wall time / model"]) \
        + "\n" + _scope(records)


def _tpr(records: list[dict[str, Any]], name: str, family: str) -> float | None:
    """TPR at FPR of `name`'s scores: the family's backdoored models against every clean model."""
    import torch

    from backdoor_arena.detection_metrics import tpr_at_fpr

    ok = [r for r in records if r["detector"] == name and r["score"] is not None and not r["failure"]
          and (not r["backdoored"] or r["family"] == family)]
    labels = torch.tensor([int(r["backdoored"]) for r in ok])
    if not ok or not labels.any() or labels.all():
        return None
    return tpr_at_fpr(labels, torch.tensor([float(r["score"]) for r in ok], dtype=torch.float64), FPR)


def render_families(records: list[dict[str, Any]]) -> str:
    s = _summaries(records)
    families = sorted({f for name in s for f in s[name].get("per_family", {})})
    rows = []
    for fam in families:
        any_s = next(s[n]["per_family"][fam] for n in s if fam in s[n].get("per_family", {}))
        row = [fam, f"{any_s['n_learned']}/{any_s['n_backdoored']}"]
        for name in [*DETECTORS, VERDICT]:
            f = s[name].get("per_family", {}).get(fam)
            row.append("n/a" if not f else f"{_f(f['auroc'])} [{_f(f['auroc_ci'][0])}, {_f(f['auroc_ci'][1])}]; "
                                           f"TPR {_f(_tpr(records, name, fam))}")
        rows.append(row)
    return _md(rows, ["family (vs all clean)", "learned", *[f"`{n}`" for n in DETECTORS], "verdict"]) + (
        "\nEach cell: AUROC [95% CI]; TPR at 5% FPR, over all of the family's models (learned or not). ROC curves: "
        "docs/figures/detection/heldout_roc_families.png (first panel all families, then one per family).\n")


def draw_figures(records: list[dict[str, Any]]) -> None:
    from backdoor_arena.api.scanning import draw_rocs
    from backdoor_arena.report import pyplot, save_figure

    plt = pyplot()
    families = sorted({r["family"] for r in records if r["backdoored"]})
    groups = [("all families", None)] + [(f, f) for f in families]
    fig, axes = plt.subplots(1, len(groups), figsize=(3.3 * len(groups), 3.3), squeeze=False)
    for ax, (title, fam) in zip(axes[0], groups, strict=True):
        draw_rocs(ax, [r for r in records if r["detector"] in (*DETECTORS, VERDICT) and not r["failure"]
                       and (not r["backdoored"] or fam is None or r["family"] == fam)])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("FPR")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("TPR")
    save_figure(fig, FIGURES / "heldout_roc_families.png")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"heldout-zoo": (RECORDS.name, render_overall), "heldout-zoo-families": (RECORDS.name, render_families)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/heldout")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--calibration-zoo", default="runs/nc-zoo", help="made by docs/experiments/nc_population.py")
    parser.add_argument("--executor", default="local", choices=("local", "processes", "ray"))
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--figures-only", action="store_true")
    args = parser.parse_args()
    if not args.figures_only:
        run(args)
    import json

    draw_figures([json.loads(line) for line in args.records.read_text().splitlines() if line])
