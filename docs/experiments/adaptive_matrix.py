"""Adaptive attacks against every defense: the attack-by-defense matrix of detection AUROCs on a small MNIST zoo.

    BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/adaptive_matrix.py --root runs/adaptive-matrix \
        --executor processes --jobs 2
    .venv/bin/python docs/tables.py                      # re-render docs/attacks.md's block from the records

1. One zoo (`api.build_zoo`, badnet-mnist, SGD and Adam, 2-3 epochs on 6,000-image subsets, the defenders' 5%
   hold-out (seed 0) never trained on) of 10 backdoored models per family; the clean models are the 20 of the
   held-out zoo (heldout_zoo.py: the same training settings and hold-out, scanned with the same detectors); every
   attack poisons 10% of its subset, blends at alpha 0.2, patches of 4-8 px:
   - `pattern` (plain BadNets, checkerboard 4-8 px) and `blended` (plain blended injection): the baselines;
   - `nc-evasive` and `strip-evasive` (attacks/adaptive.py around a blended poisoning), `tdc-evasive` (around a
     BadNets checkerboard, fine-tuned from a clean network with TDC 2022's similarity and specificity losses).
2. The model detectors (`api.scan_zoo`: Neural Cleanse, K-Arm, ABS, MNTD at their defaults; MNTD's shadows as in
   heldout_zoo.py): AUROC of each family's models against the 10 clean ones, with a bootstrap interval.
3. STRIP, an input detector: on every backdoored model, the AUROC of its entropy score between clean and
   triggered test inputs (`api.detect`, 500 of each); the cell is the mean over the family's models with a
   bootstrap interval over models.
4. One record per (model, defense) in docs/records/adaptive_matrix.jsonl; the table of docs/attacks.md
   (`docs_tables`) and the heatmap docs/figures/adaptive_matrix.png come from the records alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "adaptive_matrix.jsonl"
FIGURE = DOCS / "figures" / "adaptive_matrix.png"
VERB = "adaptive-matrix"
MODEL_DEFENSES = ("neural-cleanse", "k-arm", "abs", "mntd")
DEFENSES = (*MODEL_DEFENSES, "strip")
FAMILIES = ("pattern", "blended", "nc-evasive", "strip-evasive", "tdc-evasive")
# which defense each adaptive attack targets, and the plain attack it is compared with
PLAIN_BADNETS = "pattern"
TARGETS = {"nc-evasive": ("neural-cleanse", "blended"), "strip-evasive": ("strip", "blended"),
           "tdc-evasive": ("mntd", "pattern")}
# the attacks at settings that every family learns in 2-3 epochs on 6,000 images (a first build drew from the zoo's
# defaults, 5-10% poisoning, blends at 0.1-0.2, 3-8 px patches: half of the blended and 8 of 10 nc-evasive models
# stayed under 50% ASR, so AUROC differences would have measured unlearned backdoors, not evasion)
ZOO = {"dataset": "mnist", "architecture": "badnet-mnist", "clean": 0, "backdoored": 50, "epochs": 2, "max_epochs": 3,
       "train_size": 6000, "seed": 16, "holdout_seed": 0, "families": FAMILIES, "poison_rates": (0.1,),
       "blend_alphas": (0.2,), "patch_sizes": (4, 5, 6, 8)}
N_STRIP, N_BOOT, LEVEL = 500, 2000, 0.95
LEARNED = 0.8  # attack success at which a backdoor counts as learned well (the ASR-matched comparison)


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import heldout_zoo

    from backdoor_arena import api
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    root = Path(args.root)
    executor = api.Executor(args.executor, jobs=args.jobs) if args.executor != "local" else None
    started = time.perf_counter()
    zoo = root / "zoo"
    print(f"[{time.strftime('%H:%M:%S')}] zoo", flush=True)
    api.build_zoo(zoo, api.ZooConfig(**ZOO), progress=False, executor=executor)
    if args.build_only:
        return
    params = heldout_zoo.params(Path(args.shadows_root))
    heldout_zoo._train_shadows(params["mntd"], zoo)
    print(f"[{time.strftime('%H:%M:%S')}] model detectors", flush=True)
    api.scan_zoo(zoo, root / "scan", detectors=list(MODEL_DEFENSES), params=params, progress=False,
                 executor=executor)
    rows = [json.loads(line) for line in (root / "scan" / "scores.jsonl").read_text().splitlines() if line]
    truth = {r["name"]: r for r in api.read_truth(zoo)}
    plan = {e["name"]: e for e in api.zoo_plan(api.ZooConfig(**ZOO))}
    # the clean side: the held-out zoo's clean models, scanned there with the same detectors and clean set
    heldout = Path(args.shadows_root)
    clean_truth = {f"heldout/{r['name']}": r for r in api.read_truth(heldout / "evaluation") if not r["backdoored"]}
    for line in (heldout / "scan" / "scores.jsonl").read_text().splitlines():
        r = json.loads(line)
        if not r["backdoored"] and r["detector"] in MODEL_DEFENSES:
            rows.append({**r, "name": f"heldout/{r['name']}"})
    truth.update(clean_truth)
    plan.update({k: {**v, "seed": v["seed"]} for k, v in clean_truth.items()})
    print(f"[{time.strftime('%H:%M:%S')}] STRIP", flush=True)
    for name, t in sorted(truth.items()):
        if not t["backdoored"]:
            continue
        r = api.detect("strip", zoo / "models" / f"{name}.safetensors", attack_spec=zoo / "specs" / f"{name}.attack.json",
                       n_eval=N_STRIP, progress=False)
        rows.append({"name": name, "backdoored": True, "family": t["family"], "detector": "strip",
                     "score": r.values.get("auroc"), "flagged": None, "threshold": None, "suspected_target": None,
                     "wall_time_s": r.wall_time_s, "failure": None})
    wall = time.perf_counter() - started
    command = ("BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/adaptive_matrix.py --root "
               f"{args.root} --shadows-root {args.shadows_root} --executor {args.executor}"
               + (f" --jobs {args.jobs}" if args.jobs else ""))
    records = []
    for r in rows:
        t, entry = truth[r["name"]], plan[r["name"]]
        records.append(Record(
            verb=VERB, seed=entry["seed"],
            config={"zoo": api.ZooConfig(**ZOO).to_dict(), "defense": r["detector"],
                    "defense_params": ({"n_eval": N_STRIP} if r["detector"] == "strip" else
                                       params.get(r["detector"], {}) | ({"cache_dir": "ROOT/mntd-shadows"}
                                                                        if r["detector"] == "mntd" else {})),
                    "command": command, "wall_time_s_total": round(wall, 1)},
            subject={"model": r["name"], "family": t.get("family"), "backdoored": t["backdoored"],
                     "defense": r["detector"], "optimizer": entry["optimizer"], "epochs": entry["epochs"]},
            metrics={"score": r["score"], "flagged": r["flagged"], "wall_s": r["wall_time_s"], "failure": r["failure"],
                     "clean_accuracy": t["clean_accuracy"], "attack_success_rate": t.get("attack_success_rate")},
            versions=versions()))
    write_jsonl(args.records, records)
    print(f"[{time.strftime('%H:%M:%S')}] wrote {len(records)} records ({wall:.0f} s)", flush=True)


# --------------------------------------------------------------------------- matrix from records
def _bootstrap_mean(values: list[float], seed: int = 0) -> tuple[float, float]:
    import torch

    v = torch.tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    means = v[torch.randint(len(v), (N_BOOT, len(v)), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)).tolist()
    return lo, hi


def matrix(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(family, defense) -> AUROC, its 95% interval and the group sizes."""
    import torch

    from backdoor_arena.detection_metrics import auroc, auroc_bootstrap_ci

    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for defense in DEFENSES:
        mine = [r for r in records if r["defense"] == defense and r["score"] is not None and not r["failure"]]
        clean = [r for r in mine if not r["backdoored"]]
        for fam in FAMILIES:
            bad = [r for r in mine if r["backdoored"] and r["family"] == fam]
            if not bad:
                continue
            if defense == "strip":  # an input detector: mean per-model AUROC over the family
                values = [r["score"] for r in bad]
                lo, hi = _bootstrap_mean(values)
                cells[fam, defense] = {"auroc": sum(values) / len(values), "ci": [lo, hi], "n": len(bad), "n_clean": 0}
                continue
            labels = torch.tensor([1] * len(bad) + [0] * len(clean))
            scores = torch.tensor([r["score"] for r in bad + clean], dtype=torch.float64)
            cells[fam, defense] = {"auroc": auroc(labels, scores),
                                   "ci": list(auroc_bootstrap_ci(labels, scores, N_BOOT, 0, LEVEL)),
                                   "n": len(bad), "n_clean": len(clean)}
    return cells


def drop_interval(records: list[dict[str, Any]], fam: str, base: str, defense: str, seed: int = 0
                  ) -> tuple[float, float, float]:
    """AUROC(base) - AUROC(fam) under one defense, and its 95% bootstrap interval: the two families' models
    and the clean models each resampled, the clean ones shared by both AUROCs in each replicate (so the
    comparison is paired on the clean side; overlapping marginal intervals understate it). STRIP: the
    difference of the two families' mean per-model AUROCs."""
    import torch

    from backdoor_arena.detection_metrics import auroc

    mine = [r for r in records if r["defense"] == defense and r["score"] is not None and not r["failure"]]
    a, b = ([r["score"] for r in mine if r["backdoored"] and r["family"] == f] for f in (fam, base))
    clean = [r["score"] for r in mine if not r["backdoored"]]
    a_t, b_t, c_t = (torch.tensor(v, dtype=torch.float64) for v in (a, b, clean))

    def value(x: torch.Tensor, c: torch.Tensor) -> float:
        if defense == "strip":
            return float(x.mean())
        return auroc(torch.tensor([1] * len(x) + [0] * len(c)), torch.cat([x, c]))

    g = torch.Generator().manual_seed(seed)
    drops = []
    for _ in range(N_BOOT):
        c = c_t[torch.randint(len(c_t), (len(c_t),), generator=g)] if len(c_t) else c_t
        xa = a_t[torch.randint(len(a_t), (len(a_t),), generator=g)]
        xb = b_t[torch.randint(len(b_t), (len(b_t),), generator=g)]
        drops.append(value(xb, c) - value(xa, c))
    lo, hi = torch.quantile(torch.tensor(drops, dtype=torch.float64),
                            torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)).tolist()
    return value(b_t, c_t) - value(a_t, c_t), lo, hi


def render_matrix(records: list[dict[str, Any]]) -> str:
    cells = matrix(records)
    models = {r["model"]: r for r in records}
    header = ["attack family", "models", "clean acc. (mean)", "ASR (mean, min)", *[f"`{d}`" for d in DEFENSES]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for fam in FAMILIES:
        ms = [m for m in models.values() if m["backdoored"] and m["family"] == fam]
        if not ms:
            continue
        asr = [m["attack_success_rate"] for m in ms]
        row = [f"`{fam}`", str(len(ms)), f"{100 * sum(m['clean_accuracy'] for m in ms) / len(ms):.1f}%",
               f"{100 * sum(asr) / len(asr):.1f}%, {100 * min(asr):.1f}%"]
        for d in DEFENSES:
            c = cells.get((fam, d))
            target = TARGETS.get(fam, (None,))[0] == d
            text = "n/a" if c is None else f"{c['auroc']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]"
            row.append(f"**{text}**" if target else text)
        lines.append("| " + " | ".join(row) + " |")
    clean = [m for m in models.values() if not m["backdoored"]]
    cfg = records[0]["config"]
    lines.append("")
    lines.append("Bold: the defense the adaptive attack targets. The claim, each adaptive attack lowers the AUROC of "
                 "its target defense against the plain attack it wraps and against plain BadNets (`pattern`) (drop "
                 "with a paired 95% bootstrap interval; lower when the interval is above 0):")
    # the adaptive losses cost some attack success: the same comparison on the models that learned their
    # backdoor well, so that a lower AUROC is not just a weaker backdoor
    learned = matrix([r for r in records if not r["backdoored"] or (r["attack_success_rate"] or 0) >= LEARNED])
    comparisons = [(fam, defense, b) for fam, (defense, base) in TARGETS.items()
                   for b in dict.fromkeys((base, PLAIN_BADNETS))]
    for fam, defense, base in comparisons:
        a, b = cells.get((fam, defense)), cells.get((base, defense))
        if a is None or b is None:
            continue
        disjoint = a["ci"][1] < b["ci"][0]
        la, lb = learned.get((fam, defense)), learned.get((base, defense))
        matched = ("" if la is None or lb is None else
                   f"; only models with ASR >= {100 * LEARNED:.0f}%: {la['auroc']:.2f} [{la['ci'][0]:.2f}, "
                   f"{la['ci'][1]:.2f}] ({la['n']} models) vs {lb['auroc']:.2f} ({lb['n']})")
        drop, lo, hi = drop_interval(records, fam, base, defense)
        verdict = "lower" if lo > 0 else "not shown lower" if a["auroc"] < b["auroc"] else "not lower"
        lines.append(f"- `{fam}` vs `{base}` under `{defense}`: {a['auroc']:.2f} vs {b['auroc']:.2f}, a drop of "
                     f"{drop:.2f} [{lo:.2f}, {hi:.2f}] ({verdict}{', marginal intervals disjoint' if disjoint else ''}"
                     f"{matched}).")
    lines.append("")
    lines.append(f"Scope: {len(clean)} clean badnet-mnist models (the held-out zoo's) and 10 backdoored per family (zoo seed {cfg['zoo']['seed']},"
                 f" SGD and Adam, {cfg['zoo']['epochs']}-{cfg['zoo']['max_epochs']} epochs on "
                 f"{cfg['zoo']['train_size']:,}-image subsets, one seed per model; every attack poisons "
                 f"{', '.join(f'{100 * r:g}%' for r in cfg['zoo']['poison_rates'])} of its subset, blends at alpha "
                 f"{', '.join(f'{a:g}' for a in cfg['zoo']['blend_alphas'])}, patches of "
                 f"{', '.join(str(x) for x in cfg['zoo']['patch_sizes'])} px). Model detectors: AUROC of the family's "
                 "models against the clean ones (stratified bootstrap 95% interval, 2,000 replicates). STRIP: per model, the "
                 f"AUROC between {N_STRIP} clean and {N_STRIP} triggered test inputs, averaged over the family (bootstrap "
                 "over models). Every defense at its defaults, on the defenders' 5% hold-out. Heatmap: "
                 "docs/figures/adaptive_matrix.png.")
    lines.append("")
    lines.append(f"Made by `{cfg['command']}` ({cfg['wall_time_s_total'] / 60:.0f} min in all).")
    return "\n".join(lines) + "\n"


def draw(records: list[dict[str, Any]]) -> None:
    from backdoor_arena.report import pyplot, save_figure

    cells = matrix(records)
    fams = [f for f in FAMILIES if any((f, d) in cells for d in DEFENSES)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(DEFENSES) + 2.2, 0.55 * len(fams) + 1.5))
    data = [[cells[f, d]["auroc"] if (f, d) in cells else float("nan") for d in DEFENSES] for f in fams]
    im = ax.imshow(data, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(DEFENSES)), DEFENSES, rotation=20, fontsize=8)
    ax.set_yticks(range(len(fams)), fams, fontsize=8)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, "n/a" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=8)
    for fam, (defense, _) in TARGETS.items():  # outline the defense each adaptive attack targets
        if fam in fams:
            i, j = fams.index(fam), DEFENSES.index(defense)
            ax.add_patch(plt.Rectangle((j - 0.48, i - 0.48), 0.96, 0.96, fill=False, lw=2, ec="black"))
    n_clean = len({r["model"] for r in records if not r["backdoored"]})
    ax.set_title(f"detection AUROC, 10 models per attack (model detectors: vs {n_clean} clean models; "
                 "STRIP: triggered vs clean inputs); outlined: the targeted defense", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    save_figure(fig, FIGURE)


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"adaptive-matrix": (RECORDS.name, render_matrix)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/adaptive-matrix")
    parser.add_argument("--shadows-root", default="runs/heldout", help="where heldout_zoo.py keeps MNTD's shadows")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--executor", default="local", choices=("local", "processes", "ray"))
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--figures-only", action="store_true")
    parser.add_argument("--build-only", action="store_true", help="train the zoo and stop (it resumes)")
    args = parser.parse_args()
    if not args.figures_only:
        run(args)
    if not args.build_only:
        draw([json.loads(line) for line in args.records.read_text().splitlines() if line])
