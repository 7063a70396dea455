"""Neural Cleanse over a population: false positives on clean MNIST models, and AUROC over a wide zoo.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/nc_population.py \
        --out runs/nc-zoo                       # build (resumes) + Neural Cleanse on every model + records + page
    .venv/bin/python docs/experiments/nc_population.py --table-only   # re-render the page from the records
    .venv/bin/python docs/experiments/nc_population.py --check        # exit 1 if the page and records disagree

1. `api.build_zoo`: clean and backdoored badnet-mnist models (api/zoo.py's plan: SGD and Adam, epochs drawn
   in [min, max], per-model seeds and seeded training subsets; backdoored ones cycle over square, pattern,
   pixel, blended, all-to-all and source-specific). The defenders' 5% hold-out of the training split is
   never trained on.
2. `api.evaluate_zoo` with Neural Cleanse at one setting for every model (on that hold-out).
3. One `records.Record` per model (verb "nc-zoo") in docs/records/nc_zoo.jsonl.
4. The tables of docs/nc-population.md (between `<!-- nc:NAME -->` and `<!-- /nc:NAME -->` markers) and
   docs/figures/detection/nc_zoo_{hist,roc}.png, from the records alone (`render_tables`, `draw_figures`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from backdoor_arena import api
from backdoor_arena.detection_metrics import clopper_pearson_interval, wilson_interval
from backdoor_arena.records import Record, read_jsonl, write_jsonl
from backdoor_arena.registries import MODEL_DETECTORS
from backdoor_arena.report import plot_roc, pyplot, save_figure
from backdoor_arena.runtime import versions

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "nc_zoo.jsonl"
PAGE = DOCS / "nc-population.md"
FIGURES = DOCS / "figures" / "detection"
VERB = "nc-zoo"
N_BOOT, BOOT_SEED, LEVEL = 2000, 0, 0.95
SWEEP = (1.5, 2.0, 2.5, 3.0, 4.0)  # thresholds shown besides the paper's 2
BLOCKS = ("headline", "scope", "clean", "thresholds", "families", "models")  # the generated blocks of the page


# --------------------------------------------------------------------------- running
def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    api.set_threads(args.threads)  # None: $BACKDOOR_ARENA_THREADS, else all cores
    out = Path(args.out)
    config = api.ZooConfig(dataset="mnist", architecture="badnet-mnist", clean=args.clean, backdoored=args.backdoored,
                           epochs=args.min_epochs, max_epochs=args.max_epochs, train_size=args.train_size,
                           seed=args.seed)
    nc = {"steps": args.steps, "batch_size": args.batch_size}
    started = time.perf_counter()
    print(f"[{time.strftime('%H:%M:%S')}] building {args.clean} + {args.backdoored} models in {out}", flush=True)
    api.build_zoo(out, config, progress=False)
    print(f"[{time.strftime('%H:%M:%S')}] zoo ready ({time.perf_counter() - started:.0f} s); Neural Cleanse", flush=True)
    summary = api.evaluate_zoo(out, "neural-cleanse", params=nc, seed=BOOT_SEED, out=out / "eval-neural-cleanse",
                               overwrite=True, progress=False, n_boot=N_BOOT, level=LEVEL)
    print(f"[{time.strftime('%H:%M:%S')}] done ({time.perf_counter() - started:.0f} s): AUROC {summary['auroc']}",
          flush=True)
    detector = MODEL_DETECTORS.create("neural-cleanse", **nc).params()
    truth = {r["name"]: r for r in api.read_truth(out)}
    scores = read_jsonl(out / "eval-neural-cleanse" / "scores.jsonl")
    plan = {e["name"]: e for e in api.zoo_plan(config)}
    records = []
    for s in sorted(scores, key=lambda r: r["name"]):
        t = truth[s["name"]]
        entry = plan[s["name"]]
        records.append(Record(
            verb=VERB, seed=entry["seed"],
            config={"zoo": config.to_dict(), "model": entry, "detector": "neural-cleanse", "detector_params": detector,
                    "clean_fraction": 0.05, "holdout_seed": BOOT_SEED},
            subject={"model": s["name"], "family": entry["family"], "optimizer": entry["optimizer"],
                     "lr": entry["lr"], "epochs": entry["epochs"], "backdoored": entry["backdoored"],
                     "target": entry.get("target"), "mode": entry.get("mode"), "trigger": entry.get("trigger"),
                     "size": entry.get("size"), "position": entry.get("position"),
                     "poison_rate": entry.get("poison_rate"), "alpha": entry.get("alpha"),
                     "cover_rate": entry.get("cover_rate"), "sources": entry.get("sources")},
            metrics={"anomaly_index": s["score"], "flagged": s["flagged"], "threshold": s["threshold"],
                     "suspected_target": s["suspected_target"], "clean_accuracy": t["clean_accuracy"],
                     "attack_success_rate": t.get("attack_success_rate"), "wall_s": s["detect_time_s"],
                     "train_wall_s": t.get("train_time_s")},
            versions=versions()))
    write_jsonl(args.records, records)
    print(f"wrote {len(records)} records to {args.records}", flush=True)
    return read_jsonl(args.records)


# --------------------------------------------------------------------------- tables from records
def _rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records as the rows `api.summarize` reads (score = the anomaly index)."""
    return [{**r, "score": r["anomaly_index"]} for r in records]


def _f(x: Any, fmt: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and x != x) else format(x, fmt)


def _ci(ci: list[Any], fmt: str = ".3f") -> str:
    return f"[{_f(ci[0], fmt)}, {_f(ci[1], fmt)}]"


def _pct(k: int, n: int) -> str:
    if n == 0:
        return "n/a"
    lo, hi = wilson_interval(k, n, LEVEL)
    return f"{k}/{n} = {100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command(records: list[dict[str, Any]]) -> str:
    """The command that made the records (its options are the zoo and detector settings they hold)."""
    cfg = records[0]["config"]
    zoo, det = cfg["zoo"], cfg["detector_params"]
    return ("BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python "
            f"docs/experiments/nc_population.py --out runs/nc-zoo --clean {zoo['clean']} --backdoored "
            f"{zoo['backdoored']} --train-size {zoo['train_size']} --min-epochs {zoo['epochs']} --max-epochs "
            f"{zoo['max_epochs']} --seed {zoo['seed']} --steps {det['steps']} --batch-size {det['batch_size']}")


def _spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def render_tables(records: list[dict[str, Any]]) -> dict[str, str]:
    """Every generated block of docs/nc-population.md, by name, from the records alone."""
    rows = _rows(records)
    s = api.summarize(rows, n_boot=N_BOOT, seed=BOOT_SEED, level=LEVEL)
    clean = [r for r in rows if not r["backdoored"]]
    bad = [r for r in rows if r["backdoored"]]
    thr = s["threshold"]
    cfg = records[0]["config"]
    zoo, det = cfg["zoo"], cfg["detector_params"]
    epochs = sorted({r["epochs"] for r in rows})
    blocks: dict[str, str] = {}

    blocks["scope"] = _table(["", "setting"], [
        ["models", f"{len(clean)} clean + {len(bad)} backdoored {zoo['architecture']} ({zoo['dataset']}); "
                   f"zoo seed {zoo['seed']}, model seeds {min(r['seed'] for r in rows)}-{max(r['seed'] for r in rows)}"],
        ["training data", f"each model its own seeded subset of {zoo['train_size']:,} images of the training split, "
                          f"the defenders' {100 * zoo['clean_fraction']:.0f}% hold-out excluded; batch 64, cosine schedule"],
        ["optimisers", ", ".join(f"{o} lr {lr:g}: {sum(r['optimizer'] == o for r in clean)} clean, "
                                 f"{sum(r['optimizer'] == o for r in bad)} backdoored"
                                 for o, lr in sorted({(r['optimizer'], r['lr']) for r in rows}))],
        ["epochs", f"{epochs[0]}-{epochs[-1]}, drawn uniformly per model"],
        ["Neural Cleanse", f"{det['steps']} steps, batch {det['batch_size']} per label, lr {det['lr']:g}, "
                           f"{det['n_samples']:,} clean hold-out images (seed {cfg['holdout_seed']}), "
                           f"success threshold {det['success_threshold']:g}, patience {det['patience']}, "
                           f"check every {det['check_every']}; flagged above {det['threshold']:g}; the same for every model"],
        ["wall time per model", f"training median {statistics.median(r['train_wall_s'] for r in rows):.0f} s "
                                f"(range {min(r['train_wall_s'] for r in rows):.0f}-{max(r['train_wall_s'] for r in rows):.0f}), "
                                f"Neural Cleanse median {statistics.median(r['wall_s'] for r in rows):.1f} s; one thread "
                                "on a 2-core machine shared with two other jobs (pessimistic)"],
        ["intervals", f"AUROC: stratified percentile bootstrap, {N_BOOT} replicates, seed {BOOT_SEED}; rates: Wilson "
                      f"score interval; all at {100 * LEVEL:.0f}%"],
    ]) + f"\nMade by `{command(records)}`.\n"

    # the clean population
    def clean_row(name: str, group: list[dict[str, Any]]) -> list[Any]:
        k, n = sum(r["flagged"] for r in group), len(group)
        cp = clopper_pearson_interval(k, n, LEVEL) if n else (float("nan"),) * 2
        return [name, n, _spread([r["score"] for r in group]), _pct(k, n), f"{100 * cp[1]:.1f}%" if n else "n/a"]

    groups = [("all clean models", clean)]
    groups += [(f"{o}", [r for r in clean if r["optimizer"] == o]) for o in sorted({r["optimizer"] for r in clean})]
    groups += [(f"{lo}-{hi} epochs", [r for r in clean if lo <= r["epochs"] <= hi])
               for lo, hi in ((epochs[0], 3), (4, epochs[-1])) if any(lo <= r["epochs"] <= hi for r in clean)]
    blocks["clean"] = _table(
        ["clean models", "n", "anomaly index min / median / max", f"flagged at {thr:g} (FPR, Wilson 95%)",
         "exact 95% upper bound"], [clean_row(n, g) for n, g in groups])

    # overall, backdoors that were learned, and per family
    e = s["effective"]
    learned = [r for r in bad if r["attack_success_rate"] is not None and r["attack_success_rate"] >= e["min_asr"]]
    fam_rows = [["all backdoored", f"{len(bad)} vs {len(clean)}", f"{len(learned)}/{len(bad)}",
                 f"{_f(s['auroc'])} {_ci(s['auroc_ci'])}", _pct(s["n_backdoored_flagged"], len(bad)),
                 f"{s['n_target_hits']}/{s['n_with_target']}", _spread([r["score"] for r in bad]),
                 _spread([r["attack_success_rate"] for r in bad])],
                [f"learned backdoors only (ASR >= {100 * e['min_asr']:.0f}%)", f"{e['n_backdoored']} vs {e['n_clean']}",
                 f"{len(learned)}/{len(learned)}", f"{_f(e['auroc'])} {_ci(e['auroc_ci'])}",
                 _pct(e["n_flagged"], e["n_backdoored"]), f"{e['n_target_hits']}/{e['n_with_target']}",
                 _spread([r["score"] for r in learned]), _spread([r["attack_success_rate"] for r in learned])]]
    for fam, f in s["per_family"].items():
        members = [r for r in bad if r["family"] == fam]
        fam_rows.append([fam, f"{f['n_backdoored']} vs {f['n_clean']}", f"{f['n_learned']}/{f['n_backdoored']}",
                         f"{_f(f['auroc'])} {_ci(f['auroc_ci'])}", _pct(f["n_flagged"], f["n_backdoored"]),
                         f"{f['n_target_hits']}/{f['n_with_target']}" if f["n_with_target"] else "- (no single target)",
                         _spread([r["score"] for r in members]),
                         _spread([r["attack_success_rate"] for r in members])])
    blocks["families"] = _table(
        ["backdoored models", "n backdoored vs n clean", f"backdoor learned (ASR >= {100 * e['min_asr']:.0f}%)",
         "AUROC [95% bootstrap]", f"flagged at {thr:g} (TPR, Wilson 95%)", "suspected = true target",
         "anomaly index min / median / max", "ASR min / median / max"], fam_rows)

    # thresholds a user might choose
    sweep = []
    for t in sorted({*SWEEP, thr}):
        fp, tp = sum(r["score"] > t for r in clean), sum(r["score"] > t for r in bad)
        sweep.append([f"**{t:g}** (default)" if t == thr else f"{t:g}", _pct(fp, len(clean)), _pct(tp, len(bad))])
    blocks["thresholds"] = _table(["flag above", "FPR (clean models)", "TPR (backdoored models)"], sweep)

    # every model
    order = sorted(rows, key=lambda r: (r["backdoored"], r["family"], -r["score"]))
    blocks["models"] = _table(
        ["model", "family", "optimiser", "epochs", "trigger", "target", "clean acc.", "ASR", "anomaly index",
         "flagged", "suspected"],
        [[r["model"], r["family"], r["optimizer"], r["epochs"], _trigger(r),
          "" if r["target"] is None else r["target"], f"{100 * r['clean_accuracy']:.2f}%",
          "" if r["attack_success_rate"] is None else f"{100 * r['attack_success_rate']:.1f}%",
          f"{r['score']:.2f}", "yes" if r["flagged"] else "no",
          "" if r["suspected_target"] is None else r["suspected_target"]] for r in order])

    # the headline, generated so that no number in it can drift from the records
    cs = s["clean_scores"]
    blocks["headline"] = "\n".join([
        f"- Clean population ({len(clean)} models): anomaly index min {cs['min']:.2f}, median {cs['median']:.2f}, "
        f"max {cs['max']:.2f}; flagged at {thr:g}: {_pct(s['n_clean_flagged'], len(clean))} (FPR, Wilson 95%).",
        f"- AUROC over all {len(bad)} backdoored vs {len(clean)} clean models: {_f(s['auroc'])} "
        f"{_ci(s['auroc_ci'])} (95% bootstrap); TPR at 5% FPR {_f(s['tpr_at_5pct_fpr'])}; flagged at {thr:g}: "
        f"{_pct(s['n_backdoored_flagged'], len(bad))}.",
        f"- Backdoors that were learned (ASR >= {100 * e['min_asr']:.0f}%: {e['n_backdoored']} of {len(bad)} models): "
        f"AUROC {_f(e['auroc'])} {_ci(e['auroc_ci'])}; flagged at {thr:g}: {_pct(e['n_flagged'], e['n_backdoored'])}.",
        f"- Target label named correctly for {s['n_target_hits']} of {s['n_with_target']} backdoored models with a "
        f"single target (all-to-all excluded); among those flagged: {_f(s['target_accuracy_flagged'], '.2f')}.",
    ]) + "\n"
    assert tuple(sorted(blocks)) == tuple(sorted(BLOCKS))
    return blocks


def _trigger(r: dict[str, Any]) -> str:
    if r["trigger"] is None:
        return ""
    if r["trigger"] == "blend":
        return f"noise blend a={r['alpha']:g}"
    what = r["trigger"] if r["size"] is None else f"{r['size']}x{r['size']} {r['trigger']}"
    extra = f", sources {r['sources']}" + (f", cover {r['cover_rate']:g}" if r.get("cover_rate") else "") \
        if r.get("mode") == "source-specific" else ""
    return f"{what} {r['position']}{extra}"


def draw_figures(records: list[dict[str, Any]], folder: Path = FIGURES) -> list[Path]:
    rows = _rows(records)
    thr = rows[0]["threshold"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    clean = [r["score"] for r in rows if not r["backdoored"]]
    bad = [r["score"] for r in rows if r["backdoored"]]
    top = max(clean + bad)
    bins = torch.linspace(0, max(top, thr) + 0.25, 40).numpy()
    ax.hist(clean, bins=bins, alpha=0.7, label=f"clean ({len(clean)})", color="tab:blue")
    ax.hist(bad, bins=bins, alpha=0.5, label=f"backdoored ({len(bad)})", color="tab:red")
    ax.axvline(thr, c="k", ls="--", lw=1, label=f"threshold {thr:g}")
    ax.set_xlabel("Neural Cleanse anomaly index")
    ax.set_ylabel("models")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    ax.set_title("Anomaly index over the zoo (MNIST, badnet-mnist)", fontsize=9)
    hist = save_figure(fig, folder / "nc_zoo_hist.png")
    s = api.summarize(rows, n_boot=N_BOOT, seed=BOOT_SEED, level=LEVEL)
    roc = plot_roc(folder / "nc_zoo_roc.png", rows, f"Neural Cleanse on {len(clean)} clean + {len(bad)} backdoored "
                   f"models: AUROC {s['auroc']:.3f} [{s['auroc_ci'][0]:.3f}, {s['auroc_ci'][1]:.3f}]")
    return [hist, roc]


# This page's markers, and the suite-wide ones of docs/tables.py (`<!-- table:nc-zoo.NAME -->` ... `<!-- /table -->`,
# checked by tests/unit/test_docs_tables.py once docs/tables.py registers `docs_tables()`); same bodies.
MARKERS = (re.compile(r"(<!-- nc:(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /nc:(?P=name) -->)", re.S),
           re.compile(r"(<!-- table:nc-zoo\.(?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S))


def update_page(text: str, blocks: dict[str, str]) -> str:
    """`text` with every marked block replaced by its rendering; a marker without a rendering is an error."""
    seen = set()

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in blocks:
            raise SystemExit(f"{PAGE.name}: no table named {name!r} (known: {', '.join(blocks)})")
        seen.add(name)
        return m.group(1) + blocks[name] + m.group(4)

    for marker in MARKERS:
        text = marker.sub(sub, text)
    missing = sorted(set(blocks) - seen)
    if missing:
        raise SystemExit(f"{PAGE.name} has no marker for table(s) {missing}")
    return text


_CACHE: dict[str, dict[str, str]] = {}


def render_table(name: str, records: list[dict[str, Any]]) -> str:
    """One block by name (rendering all of them once per set of records)."""
    key = json.dumps(records, sort_keys=True)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = render_tables([r for r in records if r.get("verb") == VERB])
    return _CACHE[key][name]


def docs_tables() -> dict[str, tuple[str, Any]]:
    """For docs/tables.py: {"nc-zoo.NAME": (records file, renderer)}, one per block of this page."""
    return {f"nc-zoo.{n}": (RECORDS.name, lambda records, n=n: render_table(n, records)) for n in BLOCKS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/nc-zoo", help="zoo folder (resumes)")
    ap.add_argument("--clean", type=int, default=24)
    ap.add_argument("--backdoored", type=int, default=24)
    ap.add_argument("--train-size", type=int, default=12_000)
    ap.add_argument("--min-epochs", type=int, default=2)
    ap.add_argument("--max-epochs", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=150, help="Neural Cleanse steps (the same for every model)")
    ap.add_argument("--batch-size", type=int, default=16, help="Neural Cleanse batch per label")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--records", type=Path, default=RECORDS)
    ap.add_argument("--page", type=Path, default=PAGE)
    ap.add_argument("--table-only", action="store_true", help="re-render the page and figures from the records")
    ap.add_argument("--check", action="store_true", help="exit 1 if the page's tables differ from the records")
    args = ap.parse_args(argv)
    records = read_jsonl(args.records) if (args.table_only or args.check) else run(args)
    records = [r for r in records if r.get("verb") == VERB]
    if not records:
        print(f"no {VERB} records in {args.records}", file=sys.stderr)
        return 2
    text = args.page.read_text()
    new = update_page(text, render_tables(records))
    if args.check:
        if new != text:
            print(f"{args.page} disagrees with {args.records}; run {Path(__file__).name} --table-only", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(new)
    for p in draw_figures(records):
        print(f"wrote {p}")
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
