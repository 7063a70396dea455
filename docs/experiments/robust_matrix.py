"""The tables and heatmaps of docs/robust-aggregation.md: the two attack x aggregator matrices and the
aggregation benchmark, from records.

    BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/robust_matrix.py
        # runs (resuming) `backdoor-arena fl matrix --executor processes` (one one-thread job per core, each
        # cell a job) on configs/fl/mixtailor-matrix.toml and
        # configs/fl/backdoor-matrix.toml, copies their heatmaps to docs/figures/federated/, writes
        # docs/records/fl_matrix.jsonl (one slim record per cell) and, if benchmarks/results/aggregators.json
        # exists, docs/records/bench_aggregators.jsonl; then `python docs/tables.py` renders the page.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
MATRIX_RECORDS = DOCS / "records" / "fl_matrix.jsonl"
BENCH_RECORDS = DOCS / "records" / "bench_aggregators.jsonl"
FIGURES = DOCS / "figures" / "federated"
MATRICES = {  # name -> (config, run folder)
    "mixtailor": ("configs/fl/mixtailor-matrix.toml", "runs/fl-mixtailor"),
    "backdoor": ("configs/fl/backdoor-matrix.toml", "runs/fl-backdoor-matrix"),
}
BROKEN_DROP = 0.10  # a tailored attack "breaks" a rule when it costs >= 10 points of clean accuracy vs no attack


def _slim(name: str, command: str, r: dict[str, Any]) -> dict[str, Any]:
    sc = r["config"]["scenario"]
    return {"verb": "fl-matrix", "run_id": r["run_id"], "seed": r["seed"], "versions": r["versions"],
            "config": {"command": command, "matrix": name, "aggregator": sc["aggregator"], "attack": sc["attack"]},
            "matrix": name, "aggregator": r["aggregator"], "attack": r["attack"],
            **{k: r.get(k) for k in ("clean_accuracy", "attack_success_rate", "mean_attack_success_rate",
                                     "start_clean_accuracy", "attacked_rounds", "wall_s", "rounds", "error")}}


def run(names: list[str], execute: bool = True) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    from backdoor_arena.federated.matrix import cell_key, load_matrix
    from backdoor_arena.records import read_jsonl, write_jsonl

    exe = Path(sys.executable).with_name("backdoor-arena")
    kept = [r for r in read_jsonl(MATRIX_RECORDS) if r["matrix"] not in names] if MATRIX_RECORDS.is_file() else []
    for name in names:
        config, out = MATRICES[name]
        command = f"backdoor-arena fl matrix {config} --out {out} --resume --executor processes"
        if execute:
            subprocess.run([str(exe), *command.split()[1:]], check=True, cwd=ROOT)
        cells = {c.run_id: c for c in load_matrix(ROOT / config).cells()}
        latest: dict[str, dict] = {}
        for r in read_jsonl(ROOT / out / "matrix.jsonl"):  # the matrix file's current cells, the last record of each
            key = cell_key(r["config"]["scenario"], r["seed"])
            if key in cells:
                latest[key] = {**r, "aggregator": cells[key].aggregator, "attack": cells[key].attack}
        kept += [_slim(name, command, latest[k]) for k in cells if k in latest]
        FIGURES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / out / "matrix.png", FIGURES / f"matrix-{name}.png")
    write_jsonl(MATRIX_RECORDS, kept)
    bench = ROOT / "benchmarks" / "results" / "aggregators.json"
    if bench.is_file():
        data = json.loads(bench.read_text())
        meta = {"command": "python benchmarks/run.py aggregators", "machine": data["machine"]}
        write_jsonl(BENCH_RECORDS, [{"verb": "bench-aggregators", "config": meta, "versions": data["versions"], **r}
                                    for r in data["records"]])


# --------------------------------------------------------------------------- rendering
def _labels(records: list[dict], key: str) -> list[str]:
    out: list[str] = []
    for r in records:
        if r[key] not in out:
            out.append(r[key])
    return out


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _per_seed(records: list[dict], name: str, metric: str
              ) -> tuple[list[str], list[str], dict[tuple[str, str], dict[int, float]]]:
    """Aggregator and attack labels in order, and (aggregator, attack) -> {seed: metric}."""
    rs = [r for r in records if r["matrix"] == name]
    aggs, atts = _labels(rs, "aggregator"), _labels(rs, "attack")
    vals: dict[tuple[str, str], dict[int, float]] = {}
    for r in rs:
        if r.get(metric) is not None:  # None: the attack could not run against the rule (r["error"] says why)
            vals.setdefault((r["aggregator"], r["attack"]), {})[r["seed"]] = r[metric]
    return aggs, atts, vals


def _mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values)


def _means(vals: dict[tuple[str, str], dict[int, float]]) -> dict[tuple[str, str], float]:
    """(aggregator, attack) -> the metric's mean over the seeds run."""
    return {k: _mean(v) for k, v in vals.items()}


def _cell(values: dict[int, float]) -> str:
    """The mean over the seeds, with the range beside it when there are several."""
    mean = _mean(values)
    if len(values) < 2:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(values.values()):.2f}-{max(values.values()):.2f})"


def _worst(aggs: list[str], atts: list[str], grid: dict, lower: bool) -> dict[str, tuple[str, float]]:
    out = {}
    for agg in aggs:
        cands = [(a, grid[(agg, a)]) for a in atts if a != "none" and (agg, a) in grid]
        if cands:
            out[agg] = (min if lower else max)(cands, key=lambda c: c[1])
    return out


def render_matrix(records: list[dict], name: str, metric: str) -> str:
    aggs, atts, vals = _per_seed(records, name, metric)
    grid = _means(vals)
    worst = _worst(aggs, atts, grid, metric == "clean_accuracy")
    rows = []
    for agg in aggs:
        cells = [_cell(vals[(agg, a)]) if (agg, a) in vals else "n/a" for a in atts]
        w = worst.get(agg)
        rows.append([agg, *cells, f"**{w[1]:.3f}** ({w[0]})" if w else "—"])
    cmds = sorted({r["config"]["command"] for r in records if r["matrix"] == name})
    seeds = sorted({r["seed"] for r in records if r["matrix"] == name})
    what = "final clean accuracy" if metric == "clean_accuracy" else "final attack success rate"
    spread = " (the mean over the seeds, their range beside it; worst case: the attack with the worst mean)" \
        if len(seeds) > 1 else ""
    return (_md(["aggregator", *atts, "worst case"], rows)
            + f"\n{what}, seed(s) {', '.join(map(str, seeds))}{spread}. Made by `{'`, `'.join(cmds)}`.\n")


# A tailored attack and the rules it was designed against (the papers' own claims).
TARGETS = {
    "fang-krum": ["krum(f=2)"],
    "fang-trim": ["trimmed-mean(f=2)", "coordinate-median(f=2)"],
    "ipm 0.1": ["krum(f=2)"],
    "ipm 10": ["coordinate-median(f=2)"],
    "alie": ["krum(f=2)", "trimmed-mean(f=2)", "bulyan(f=2)"],
    "min-max": ["multi-krum(f=2)", "trimmed-mean(f=2)", "coordinate-median(f=2)"],
    "min-sum": ["multi-krum(f=2)", "trimmed-mean(f=2)", "coordinate-median(f=2)"],
}


def _seed_worst(vals: dict[tuple[str, str], dict[int, float]], agg: str, atts: list[str]) -> dict[int, float]:
    """Per seed, the rule's lowest clean accuracy over the attacks (no attack excluded)."""
    out: dict[int, float] = {}
    for a in atts:
        for seed, v in vals.get((agg, a), {}).items():
            if a != "none":
                out[seed] = min(out.get(seed, v), v)
    return out


def render_claims(records: list[dict]) -> str:
    aggs, atts, vals = _per_seed(records, "mixtailor", "clean_accuracy")
    grid = _means(vals)
    seeds = sorted({s for v in vals.values() for s in v})
    several = len(seeds) > 1
    rows = []
    for attack, rules in TARGETS.items():
        for rule in rules:
            if (rule, attack) not in grid or (rule, "none") not in grid:
                continue
            base, hit = grid[(rule, "none")], grid[(rule, attack)]
            drops = {s: vals[(rule, "none")][s] - vals[(rule, attack)][s] for s in seeds
                     if s in vals[(rule, "none")] and s in vals[(rule, attack)]}
            broken = sum(d >= BROKEN_DROP for d in drops.values())
            verdict = "broken" if base - hit >= BROKEN_DROP else "held"
            measured = f"{base:.3f} -> {hit:.3f} ({100 * (hit - base):+.1f} pt)"
            if several:
                measured += f"; per seed {' / '.join(f'{-100 * drops[s]:+.1f}' for s in sorted(drops))} pt"
                verdict += f" (broken in {broken} of {len(drops)} seeds)"
            rows.append([f"{attack} against {rule}", measured, verdict])
    worst = _worst(aggs, atts, grid, True)
    mix = next((a for a in aggs if a.startswith("mixtailor")), None)
    members = [a for a in aggs if a.split("(")[0] in ("krum", "coordinate-median", "geometric-median", "bulyan")]
    if mix and mix in worst and members:
        m_worst = {a: worst[a][1] for a in members if a in worst}
        below = [a for a, v in m_worst.items() if v < worst[mix][1]]
        verdict = f"{len(below)} of {len(m_worst)} members worse than MixTailor"
        if several:  # the same comparison within each seed: each rule's worst attack in that seed
            mix_seed = _seed_worst(vals, mix, atts)
            counts = {a: sum(_seed_worst(vals, a, atts).get(s, 1.0) < mix_seed[s] for s in mix_seed) for a in m_worst}
            verdict += "; per seed, worse than MixTailor in " + ", ".join(
                f"{a} {k} of {len(mix_seed)}" for a, k in counts.items())
        rows.append(["MixTailor's worst case is better than the worst case of every rule it mixes",
                     f"MixTailor {worst[mix][1]:.3f} ({worst[mix][0]}); members: "
                     + ", ".join(f"{a} {v:.3f}" for a, v in m_worst.items()), verdict])
        ref = grid.get(("fedavg", "none"))
        if ref is not None:
            gap = worst[mix][1] - ref
            rows.append(["MixTailor loses at most 2 points vs the attack-free aggregate (paper's commented-out line, "
                         "indicative)", f"{worst[mix][1]:.3f} vs fedavg without attack {ref:.3f} ({100 * gap:+.1f} pt)",
                         "yes" if gap >= -0.02 else "no"])
    return _md(["claim", "measured here (final clean accuracy, none -> attacked)", "verdict"], rows) + (
        f"\n\"broken\": the attack costs at least {int(100 * BROKEN_DROP)} points of clean accuracy against the rule "
        f"it targets, relative to the same rule without attack (the mean over seed(s) {', '.join(map(str, seeds))} "
        "of the untargeted matrix above; per seed, the same rule in the same seed).\n")


def render_bench(records: list[dict]) -> str:
    rows = [[r["rule"], str(r["n"]), f"{r['d']:,}", f"{r['median_s']:.3f}", f"[{r['min_s']:.3f}, {r['max_s']:.3f}]",
             f"{r['vs_fedavg']:.1f}x"] for r in records]
    load = records[0]["config"]["machine"].get("load_average_1_5_15_min_at_end") if records else None
    return (_md(["rule", "n", "d", "median s / round", "[min, max]", "vs fedavg"], rows)
            + f"\nSynthetic updates, median of 3 repeats; load average at the end {load}. "
            f"Made by `{records[0]['config']['command'] if records else ''}`.\n")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {
        "matrix-mixtailor": (MATRIX_RECORDS.name, lambda rs: render_matrix(rs, "mixtailor", "clean_accuracy")),
        "matrix-backdoor": (MATRIX_RECORDS.name, lambda rs: render_matrix(rs, "backdoor", "attack_success_rate")),
        "matrix-claims": (MATRIX_RECORDS.name, render_claims),
        "bench-aggregators": (BENCH_RECORDS.name, render_bench),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help=f"matrices to run (default: all of {list(MATRICES)})")
    ap.add_argument("--records-only", action="store_true", help="convert finished matrices without running them")
    args = ap.parse_args()
    unknown = sorted(set(args.names) - set(MATRICES))
    if unknown:
        ap.error(f"unknown matrix {unknown}; choose from {list(MATRICES)}")
    run(args.names or list(MATRICES), execute=not args.records_only)


if __name__ == "__main__":
    main()
