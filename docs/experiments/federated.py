"""The tables of docs/federated.md, from records: runs the `backdoor-arena fl run` commands the page shows
(configs/fl/*.toml, engine `sequential` named so that a rerun repeats them bit for bit), summarises each
variant's round records (`--out DIR` holds DIR/records.jsonl, or DIR/<variant>/records.jsonl per variant, and
run.json) into one Record per (figure, variant, seed) in docs/records/fl_summary.jsonl, the quick scenario's
rounds into docs/records/fl_quick.jsonl, and copies the engine benchmark's record (benchmarks/results/
federated.json, from `python benchmarks/run.py federated`) into docs/records/fl_engines.jsonl. docs/tables.py
renders the page's blocks from them; the page's PNG figures are copied (or, for Fig. 4b's three seeds, drawn)
from the runs.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 \\
        .venv/bin/python docs/experiments/federated.py [--runs runs/fl-docs] [--only quick fig4b ...]
    .venv/bin/python docs/experiments/federated.py --records-only   # re-summarise the runs already there
    .venv/bin/python docs/experiments/federated.py --bench-only     # copy the benchmark record only

A run whose folder already holds its summary.json is not repeated (`--force` reruns it).
"""

from __future__ import annotations

import argparse
import json
import math
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
RECORDS = DOCS / "records"
SUMMARY = "fl_summary.jsonl"
QUICK = "fl_quick.jsonl"
ENGINES = "fl_engines.jsonl"
FIGURES = DOCS / "figures" / "federated"
BENCH = ROOT / "benchmarks" / "results" / "federated.json"
ENGINE = "sequential"  # named, not `auto`: auto's timing on a loaded machine may pick either engine
OTHER_ENGINE = {"quick-vectorised": "vectorised"}  # figure -> engine, where not ENGINE
# figure -> (scenario file, seeds, (figures copied from the seed-0 run folder: source name -> page name))
FIGS: dict[str, tuple[str, tuple[int, ...], dict[str, str]]] = {
    "quick": ("configs/fl/quick.toml", (0,), {"curves.png": "quick.png"}),
    "quick-vectorised": ("configs/fl/quick.toml", (0,), {}),  # the same run with the other engine
    "fig1": ("configs/fl/fig1-adversary-fraction.toml", (0,),
             {"panels.png": "fig1-panels.png", "overlay.png": "fig1-overlay.png"}),
    "fig2": ("configs/fl/fig2-norm-bounded.toml", (0,),
             {"panels.png": "fig2-panels.png", "overlay.png": "fig2-overlay.png"}),
    "fig3": ("configs/fl/fig3-backdoor-tasks.toml", (0, 1, 2), {"panels.png": "fig3-panels.png"}),
    "fig4a": ("configs/fl/fig4a-norm-bound.toml", (0,),
              {"panels.png": "fig4a-panels.png", "overlay.png": "fig4a-overlay.png"}),
    "fig4b": ("configs/fl/fig4b-weak-dp.toml", (0, 1, 2), {"panels.png": "fig4b-panels.png"}),
}
# Two-sided 95% Student t quantiles by degrees of freedom (intervals over a few seeds).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def out_dir(runs: Path, fig: str, seed: int) -> Path:
    return runs / (fig if seed == 0 else f"{fig}-seed{seed}")


def command(fig: str, seed: int, out: Path) -> str:
    seed_part = f" seed={seed}" if seed else ""
    return f"backdoor-arena fl run {FIGS[fig][0]} federation.engine={OTHER_ENGINE.get(fig, ENGINE)}{seed_part} --out {out}"


# --------------------------------------------------------------------------- running
def run_all(runs: Path, figs: list[str], force: bool) -> None:
    exe = Path(sys.executable).with_name("backdoor-arena")
    env = {**os.environ, "BACKDOOR_ARENA_THREADS": os.environ.get("BACKDOOR_ARENA_THREADS", "1")}
    for fig in figs:
        for seed in FIGS[fig][1]:
            out = out_dir(runs, fig, seed)
            if (out / "summary.json").is_file() and (out / "command.json").is_file() and not force:
                print(f"[{time.strftime('%H:%M:%S')}] {fig} seed {seed}: done already ({out})", flush=True)
                continue
            cmd = command(fig, seed, out)
            print(f"[{time.strftime('%H:%M:%S')}] {cmd}", flush=True)
            load0, started = os.getloadavg()[0], time.perf_counter()
            r = subprocess.run([str(exe), *shlex.split(cmd)[1:], "--quiet", "--overwrite"], cwd=ROOT, env=env,
                               capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if r.returncode:
                raise SystemExit(f"{cmd} failed ({r.returncode}): {r.stderr.strip()[-2000:]}")
            meta = {"command": cmd, "wall_s": round(wall, 1), "threads": int(env["BACKDOOR_ARENA_THREADS"]),
                    "load_avg_1m_start": round(load0, 2), "load_avg_1m_end": round(os.getloadavg()[0], 2),
                    "cores": os.cpu_count()}
            (out / "command.json").write_text(json.dumps(meta, indent=1))
            print(f"[{time.strftime('%H:%M:%S')}]   {wall:.0f} s", flush=True)


# --------------------------------------------------------------------------- records
def _variants(fig: str) -> dict[str, dict[str, Any]]:
    from backdoor_arena.federated import load_scenario

    return load_scenario(ROOT / FIGS[fig][0]).variants or {"": {}}


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise_run(fig: str, seed: int, label: str, overrides: dict[str, Any], folder: Path,
                  meta: dict[str, Any], versions: dict[str, str]) -> Any:
    from backdoor_arena.records import Record

    rounds = _read(folder / "records.jsonl")
    summary = json.loads((folder / "run.json").read_text())["summary"]
    attack = [r for r in rounds if r["round"] > 0 and r["phase"] == "attack"]
    malicious = [r["malicious_norm"] for r in attack if r.get("malicious_norm") is not None]
    aggregate = [r["aggregate_norm"] for r in rounds if r["round"] > 0 and r["aggregate_norm"] is not None]
    nonfinite = [r["round"] for r in rounds if r["round"] > 0 and r["aggregate_norm"] is None]  # NaN/inf: null
    metrics = {
        "clean_accuracy": summary["final_clean_accuracy"], "attack_success_rate": summary["final_attack_success_rate"],
        "mean_attack_success_rate": summary["mean_attack_success_rate"],
        "start_clean_accuracy": summary["start_clean_accuracy"],
        "start_attack_success_rate": summary["start_attack_success_rate"],
        "min_clean_accuracy": min(r["clean_accuracy"] for r in rounds if r["round"] > 0),
        "rounds": summary["rounds"], "attack_rounds": len(attack), "attacked_rounds": summary["attacked_rounds"],
        "median_benign_norm_p90": summary["median_benign_norm_p90"],
        "rounds_p90_below_bound": summary.get("rounds_p90_below_bound"), "max_norm": summary.get("max_norm"),
        "median_malicious_norm": statistics.median(malicious) if malicious else None,
        "median_aggregate_norm": statistics.median(aggregate) if aggregate else None,
        "nonfinite_rounds": len(nonfinite), "first_nonfinite_round": min(nonfinite) if nonfinite else None,
        "n_backdoor_eval": summary["n_backdoor_eval"], "n_backdoor_train": summary["n_backdoor_train"],
        "malicious_pool": summary["malicious_pool"],
        "test_samples": rounds[0]["config"]["data.test_samples"],
        "wall_s": round(summary["wall_s"], 1), "command_wall_s": meta["wall_s"],
        "load_avg_1m_start": meta["load_avg_1m_start"], "load_avg_1m_end": meta["load_avg_1m_end"],
    }
    config = {"command": meta["command"], "scenario_file": FIGS[fig][0], "variant_overrides": overrides,
              "threads": meta["threads"]}
    return Record("fl-summary", config, seed, metrics,
                  {"figure": fig, "variant": label, "engine": summary["engine"]}, versions)


def write_records(runs: Path) -> None:
    from backdoor_arena.federated.simulation import variant_dir
    from backdoor_arena.records import Record, write_jsonl

    records, quick = [], []
    for fig, (_file, seeds, _pngs) in FIGS.items():
        variants = _variants(fig)
        for seed in seeds:
            out = out_dir(runs, fig, seed)
            if not (out / "command.json").is_file():
                print(f"missing: {out} (not run yet); its records are left out", flush=True)
                continue
            meta = json.loads((out / "command.json").read_text())
            for label, overrides in variants.items():
                folder = out / variant_dir(label) if label else out
                versions = _read(folder / "records.jsonl")[0]["versions"]
                records.append(summarise_run(fig, seed, label, overrides, folder, meta, versions))
            if fig.startswith("quick"):
                for r in _read(out / "records.jsonl"):
                    metrics = {k: r.get(k) for k in ("clean_accuracy", "attack_success_rate", "n_malicious",
                                                     "malicious_norm", "attack_boost", "aggregate_norm", "wall_s")}
                    metrics["command_wall_s"] = meta["wall_s"]
                    quick.append(Record("fl-round", {"command": meta["command"], "scenario_file": FIGS[fig][0],
                                                     "threads": meta["threads"]}, seed, metrics,
                                        {"figure": fig, "round": r["round"], "phase": r["phase"],
                                         "engine": r["engine"]}, r["versions"]))
    write_jsonl(RECORDS / SUMMARY, records)
    if quick:
        write_jsonl(RECORDS / QUICK, quick)
    print(f"wrote {len(records)} summaries to {RECORDS / SUMMARY} and {len(quick)} rounds to {RECORDS / QUICK}")


def bench_records() -> None:
    """The engine benchmark's records (benchmarks/results/federated.json) as Records for the page."""
    from backdoor_arena.records import Record, write_jsonl

    bench = json.loads(BENCH.read_text())
    config = {"command": "BACKDOOR_ARENA_THREADS=1 python benchmarks/run.py federated",
              "source": "benchmarks/results/federated.json", "quick": bench["quick"]}
    out = []
    for r in bench["records"]:
        subject = {"model": r["model"]}
        metrics = {k: v for k, v in r.items() if k != "model"} | {"benchmark_wall_s": bench["wall_time_s"],
                                                                  "cores": bench["machine"]["cores"]}
        out.append(Record("bench-federated", config, None, metrics, subject, bench["versions"]))
    write_jsonl(RECORDS / ENGINES, out)
    print(f"wrote {len(out)} records to {RECORDS / ENGINES}")


# --------------------------------------------------------------------------- figures
def copy_figures(runs: Path) -> None:
    FIGURES.mkdir(parents=True, exist_ok=True)
    for fig, (_file, _seeds, pngs) in FIGS.items():
        for src, dst in pngs.items():
            path = out_dir(runs, fig, 0) / src
            if path.is_file():
                shutil.copyfile(path, FIGURES / dst)
    draw_fig4b(runs)


def draw_fig4b(runs: Path) -> None:
    """Fig. 4b over its seeds: backdoor accuracy (attack variants) and main accuracy (all variants) per round,
    the mean over seeds as a line and the seeds' range shaded."""
    import numpy as np

    from backdoor_arena.federated.simulation import variant_dir
    from backdoor_arena.report import pyplot, save_figure

    seeds = [s for s in FIGS["fig4b"][1] if (out_dir(runs, "fig4b", s) / "command.json").is_file()]
    if not seeds:
        return
    plt = pyplot()
    fig, (ax_b, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, label in enumerate(_variants("fig4b")):
        curves = []
        for s in seeds:
            recs = [r for r in _read(out_dir(runs, "fig4b", s) / variant_dir(label) / "records.jsonl") if r["round"] > 0]
            curves.append(([r["round"] for r in recs], [r["attack_success_rate"] for r in recs],
                           [r["clean_accuracy"] for r in recs]))
        x = np.array(curves[0][0])
        bd, main = np.array([c[1] for c in curves]), np.array([c[2] for c in curves])
        c, ls = colors[i % len(colors)], (":" if label.startswith("no attack") else "-")
        if not label.startswith("no attack"):
            ax_b.plot(x, bd.mean(0), color=c, ls=ls, lw=1.4, label=label)
            ax_b.fill_between(x, bd.min(0), bd.max(0), color=c, alpha=0.15)
        ax_m.plot(x, main.mean(0), color=c, ls=ls, lw=1.4, label=label)
        ax_m.fill_between(x, main.min(0), main.max(0), color=c, alpha=0.15)
    for ax, what in ((ax_b, "backdoor accuracy"), (ax_m, "main accuracy")):
        ax.set_xlabel("round")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax_b.set_ylim(0, 1.02)
    ax_m.set_ylim(0, 1.02)
    ax_b.legend(fontsize=7)
    ax_m.legend(fontsize=6, loc="center left")
    fig.suptitle(f"fig4b-weak-dp: clip 5 + Gaussian noise, norm-bounded attacker M = 5 every round; mean over seeds "
                 f"{', '.join(map(str, seeds))}, range shaded", fontsize=9)
    save_figure(fig, FIGURES / "fig4b-overlay.png")


# --------------------------------------------------------------------------- rendering helpers
def _f(x: Any, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _by(records: list[dict[str, Any]], fig: str) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["variant"], r["seed"]): r for r in records if r["figure"] == fig}


def _labels(records: list[dict[str, Any]], fig: str) -> list[str]:
    seen: list[str] = []
    for r in records:
        if r["figure"] == fig and r["variant"] not in seen:
            seen.append(r["variant"])
    return seen


def _seeds(records: list[dict[str, Any]], fig: str) -> list[int]:
    return sorted({r["seed"] for r in records if r["figure"] == fig})


def t_interval(xs: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the 95% Student t interval of the mean over seeds."""
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    half = T95[len(xs) - 1] * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def _spread(xs: list[float]) -> str:
    """mean [min, max] over seeds."""
    if len(xs) == 1:
        return _f(xs[0])
    return f"{_f(statistics.fmean(xs))} [{_f(min(xs))}, {_f(max(xs))}]"


def _made_by(records: list[dict[str, Any]], fig: str) -> str:
    rs = [r for r in records if r["figure"] == fig]
    cmds = sorted({r["config"]["command"] for r in rs})
    walls = {}
    for r in rs:
        walls[r["config"]["command"]] = (r["command_wall_s"], r["load_avg_1m_start"], r["load_avg_1m_end"])
    lines = "".join(f"- `{c}`: {walls[c][0]:.0f} s (1-minute load average {walls[c][1]:.1f} at the start, "
                    f"{walls[c][2]:.1f} at the end)\n" for c in cmds)
    threads = sorted({r["config"]["threads"] for r in rs})
    return (f"\nMade by (BACKDOOR_ARENA_THREADS={'/'.join(map(str, threads))}, on 2 CPU cores shared with other jobs; "
            f"wall time of the whole command, pre-training included):\n\n{lines}")


ADVERSARY = {  # Fig. 1 and 2 variant labels as the page names them
    "fixed f=1 (eps 3.3%)": "fixed, every round (ε = 3.3% of a round)",
    "random eps=3.3%": "random sampling, ε = 3.3%",
    "fixed f=1/10 (eps 0.33%)": "fixed, every 10th round (ε = 0.33%)",
    "random eps=0.33%": "random sampling, ε = 0.33%",
}


def render_quick(records: list[dict[str, Any]]) -> str:
    rounds = sorted((r for r in records if r["figure"] == "quick"), key=lambda r: r["round"])
    other = {r["round"]: r for r in records if r["figure"] == "quick-vectorised"}
    names = {"start": " (start)", "warmup": " (benign)"}
    header = ["round", *[f"{r['round']}{names.get(r['phase'], '')}" for r in rounds]]
    rows = [["main accuracy", *[_f(r["clean_accuracy"]) for r in rounds]],
            ["backdoor accuracy", *[_f(r["attack_success_rate"]) for r in rounds]],
            ["attackers in the round", *[str(r["n_malicious"]) for r in rounds]],
            ["boost β", *[_f(r["attack_boost"], 1) if r.get("attack_boost") is not None else "—" for r in rounds]]]
    attack = [r for r in rounds if r["phase"] == "attack"]
    asr = [r["attack_success_rate"] for r in attack]
    last = rounds[-1]
    text = (_table(header, rows) + "\n"
            f"Seed {rounds[0]['seed']}, engine `{last['engine']}`; main accuracy on 1,000 test images. Backdoor accuracy "
            f"after the attacked rounds {_f(min(asr))}-{_f(max(asr))}, mean over the {len(attack)} attack rounds "
            f"{_f(statistics.fmean(asr))}. `{last['config']['command']}` took {last['command_wall_s']:.0f} s in all "
            f"({last['wall_s']:.0f} s of rounds, the rest loading and pre-training; BACKDOOR_ARENA_THREADS="
            f"{last['config']['threads']}, on 2 shared cores).")
    if other:
        diff = {k: abs(other[k]["attack_success_rate"] - r["attack_success_rate"]) for k, r in
                ((r["round"], r) for r in rounds) if k in other}
        first = min((k for k, d in diff.items() if d >= 0.0005), default=None)  # differs in the printed digits
        worst = max(diff, key=diff.get)
        o_asr = [other[r["round"]]["attack_success_rate"] for r in attack]
        text += (f" The same run with `federation.engine=vectorised` (`{other[worst]['config']['command']}`) agrees "
                 + (f"to the printed digits up to round {first - 1} and then differs by up to {diff[worst]:.3f} in one "
                    f"round's backdoor accuracy (round {worst}): float rounding (3e-8 per round) amplified by the "
                    f"attack; the mean over the attack rounds is {_f(statistics.fmean(o_asr))} against "
                    f"{_f(statistics.fmean(asr))}." if first is not None else "to the printed digits in every round."))
    return text + "\n"


def render_adversaries(fig: str, records: list[dict[str, Any]]) -> str:
    by = _by(records, fig)
    rows = []
    for label in _labels(records, fig):
        r = by[(label, 0)]
        name = ADVERSARY.get(label, label) + (f" ({r['malicious_pool']} malicious writers)" if "random" in label else "")
        rows.append([name, str(r["attacked_rounds"]), f"**{_f(r['mean_attack_success_rate'])}**",
                     _f(r["attack_success_rate"]), _f(r["clean_accuracy"])])
    header = ["adversary (seed 0)", "attacked rounds", "mean backdoor", "final backdoor", "final main"]
    return _table(header, rows) + _made_by(records, fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def render_fig3(records: list[dict[str, Any]]) -> str:
    by, seeds = _by(records, "fig3"), _seeds(records, "fig3")
    rows = []
    for label in _labels(records, "fig3"):
        mean = [by[(label, s)]["mean_attack_success_rate"] for s in seeds]
        m, lo, hi = t_interval(mean)
        rows.append([label.split()[0],
                     " / ".join(f"{by[(label, s)]['n_backdoor_train']} + {by[(label, s)]['n_backdoor_eval']}" for s in seeds),
                     " / ".join(_f(x) for x in mean), f"**{_f(m)}** [{_f(lo)}, {_f(hi)}]",
                     " / ".join(_f(by[(label, s)]["clean_accuracy"]) for s in seeds)])
    header = ["backdoor tasks", "target writers' 7s: attacker's half + held-out half, per seed",
              f"mean backdoor, seeds {' / '.join(map(str, seeds))}", "mean over seeds [95% t-interval]",
              "final main, per seed"]
    return _table(header, rows) + _made_by(records, "fig3")


def render_fig4a(records: list[dict[str, Any]]) -> str:
    by = _by(records, "fig4a")
    rows = []
    for label in _labels(records, "fig4a"):
        r = by[(label, 0)]
        below = r.get("rounds_p90_below_bound")
        name = label.replace("M=", "M = ") if label.startswith("M=") else f"{label} (clip at {r['max_norm']:g})"
        rows.append([name, _f(r["mean_attack_success_rate"]), _f(r["attack_success_rate"]), _f(r["clean_accuracy"]),
                     _f(r["median_benign_norm_p90"], 2), "—" if label == "no attack" or below is None else f"{100 * below:.0f}%"])
    header = ["variant (seed 0)", "mean backdoor", "final backdoor", "final main", "benign p90 norm (median over rounds)",
              "rounds with p90 below M"]
    return _table(header, rows) + _made_by(records, "fig4a")


def _diverged(rs: list[dict[str, Any]]) -> str:
    bad = [r for r in rs if r["nonfinite_rounds"]]
    if not bad:
        return "never"
    firsts = sorted({r["first_nonfinite_round"] for r in bad})
    return (f"{len(bad)} of {len(rs)} seeds, from round {'/'.join(map(str, firsts))} on")


def _paired(by: dict, a: str, b: str, seeds: list[int], key: str) -> tuple[float, float, float]:
    return t_interval([by[(a, s)][key] - by[(b, s)][key] for s in seeds])


def render_fig4b(records: list[dict[str, Any]]) -> str:
    by, seeds = _by(records, "fig4b"), _seeds(records, "fig4b")
    rows = []
    for label in _labels(records, "fig4b"):
        rs = [by[(label, s)] for s in seeds]
        attacked = not label.startswith("no attack")
        rows.append([label, _spread([r["mean_attack_success_rate"] for r in rs]) if attacked else "—",
                     _spread([r["attack_success_rate"] for r in rs]),
                     _spread([r["clean_accuracy"] for r in rs]), _spread([r["min_clean_accuracy"] for r in rs]),
                     _f(statistics.median(r["median_aggregate_norm"] for r in rs), 1),
                     _diverged(rs)])
    header = ["variant", "mean backdoor", "final backdoor", "final main", "lowest main (any round)",
              "applied update norm (median of the finite ones)", "weights non-finite (NaN/inf)"]
    base, none = "clip 5 only (sigma=0)", "no attack (clip 5 only)"
    diffs = []
    for label in ("sigma=0.025", "sigma=0.158", "sigma=0.025 on the sum"):
        if (label, seeds[0]) not in by:
            continue
        m, lo, hi = _paired(by, label, base, seeds, "mean_attack_success_rate")
        cost = label.replace("sigma", "no attack (sigma") + ")" if "sum" not in label else None
        c_text = "—"
        if cost and (cost, seeds[0]) in by:
            cm, clo, chi = _paired(by, cost, none, seeds, "clean_accuracy")
            c_text = f"{cm:+.3f} [{clo:+.3f}, {chi:+.3f}]"
        diffs.append([label, f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]", c_text])
    return (_table(header, rows)
            + f"\nEach cell: mean over seeds {', '.join(map(str, seeds))} [min, max]; backdoor accuracy on the held-out "
            f"7s of the 30 target writers ({by[(base, seeds[0])]['n_backdoor_eval']} images for seed {seeds[0]}), main "
            "accuracy on 1,000 test images. Paired by seed against clip 5 alone (95% t-interval over the "
            f"{len(seeds)} seeds):\n\n"
            + _table(["noise", "Δ mean backdoor vs clip 5 only (attacked)", "Δ final main vs clip 5 only (no attack)"],
                     diffs)
            + _made_by(records, "fig4b"))


def _interval_words(lo: float, hi: float) -> str:
    if hi < 0:
        return "lower in the paired interval"
    if lo > 0:
        return "higher in the paired interval"
    return "not separated from it by the paired interval"


def render_fig4b_notes(records: list[dict[str, Any]]) -> str:
    """The paragraph under the Fig. 4b table: every number in it from the records."""
    by, seeds = _by(records, "fig4b"), _seeds(records, "fig4b")
    base, none, mb = "clip 5 only (sigma=0)", "no attack (clip 5 only)", "mean_attack_success_rate"
    n = len(seeds)

    def m(label: str, key: str) -> str:
        return _f(_mean(by, label, seeds, key))

    d1, lo1, hi1 = _paired(by, "sigma=0.025", base, seeds, mb)
    c1, clo1, chi1 = _paired(by, "no attack (sigma=0.025)", none, seeds, "clean_accuracy")
    big = [by[(lb, s)] for lb in ("sigma=0.158", "no attack (sigma=0.158)") for s in seeds]
    dead = [r for r in big if r["nonfinite_rounds"]]
    ds, los, his = _paired(by, "sigma=0.025 on the sum", base, seeds, mb)
    text = (
        f"**How large σ is, and where it applies, decides the outcome** (means over {n} seeds, differences paired by "
        f"seed with their 95% t-interval). σ = 0.025 per coordinate of the average: mean backdoor {m('sigma=0.025', mb)} "
        f"against {m(base, mb)} with clipping alone ({d1:+.3f} [{lo1:+.3f}, {hi1:+.3f}], "
        f"{_interval_words(lo1, hi1)}), final backdoor {m('sigma=0.025', 'attack_success_rate')} against "
        f"{m(base, 'attack_success_rate')}; without an attack it costs {-100 * c1:.1f} points of main accuracy "
        f"({m('no attack (sigma=0.025)', 'clean_accuracy')} against {m(none, 'clean_accuracy')}, "
        f"[{100 * clo1:+.1f}, {100 * chi1:+.1f}] points). "
    )
    if dead:
        firsts = sorted({r["first_nonfinite_round"] for r in dead})
        text += (
            f"σ = 0.158 (variance 0.025) makes the applied update a noise vector of norm "
            f"{statistics.median(r['median_aggregate_norm'] for r in big):.0f} (median), which the model does not "
            f"survive: its weights become non-finite (NaN/inf) from round {'/'.join(map(str, firsts))} on in "
            f"{len(dead)} of the {len(big)} runs with it, and main accuracy ends at {m('sigma=0.158', 'clean_accuracy')} "
            f"with the attack and {m('no attack (sigma=0.158)', 'clean_accuracy')} without (10 classes: chance). Its "
            f"backdoor accuracy of {m('sigma=0.158', mb)} says only that a model with non-finite weights never "
            "outputs the target class, not that the defense works. "
        )
    else:
        text += (
            f"σ = 0.158 (variance 0.025): mean backdoor {m('sigma=0.158', mb)}, main accuracy "
            f"{m('sigma=0.158', 'clean_accuracy')} with the attack and {m('no attack (sigma=0.158)', 'clean_accuracy')} "
            "without. "
        )
    text += (
        f"σ = 0.025 on the *sum* of the 30 clipped updates (the DP-FedAvg convention, σ/30 on the average): mean "
        f"backdoor {m('sigma=0.025 on the sum', mb)} ({ds:+.3f} [{los:+.3f}, {his:+.3f}] against clipping alone). "
    )
    if hi1 < 0:
        text += ("Of these readings only σ = 0.025 on the average lowers the backdoor while the model keeps learning; ")
    else:
        lower = sum(by[("sigma=0.025", s)][mb] < by[(base, s)][mb] for s in seeds)
        text += (f"None of these readings lowers the backdoor distinguishably from clipping alone, over {n} seeds, "
                 f"while the model keeps learning (σ = 0.025 on the average is lower in {lower} of the {n} seeds and "
                 "higher in the others); ")
    text += "the simulator's default is `noise_on = \"average\"`, and `noise_on = \"sum\"` is the option.\n"
    return text


def _mean(by: dict, label: str, seeds: list[int], key: str) -> float:
    return statistics.fmean(by[(label, s)][key] for s in seeds)


def render_claims(records: list[dict[str, Any]]) -> str:
    f1, f2, f3, f4a, f4b = (_by(records, f) for f in ("fig1", "fig2", "fig3", "fig4a", "fig4b"))
    s3, s4b = _seeds(records, "fig3"), _seeds(records, "fig4b")
    mb = "mean_attack_success_rate"
    hi1, r1 = f1[("fixed f=1 (eps 3.3%)", 0)], f1[("random eps=3.3%", 0)]
    lo1 = [f1[("fixed f=1/10 (eps 0.33%)", 0)], f1[("random eps=0.33%", 0)]]
    hi2 = [f2[("fixed f=1 (eps 3.3%)", 0)], f2[("random eps=3.3%", 0)]]
    lo2 = [f2[("fixed f=1/10 (eps 0.33%)", 0)], f2[("random eps=0.33%", 0)]]
    rows = []
    ok = hi1[mb] >= 0.5 and r1[mb] >= 0.3
    rows.append(["Without defense the attack succeeds when the adversary fraction is high",
                 "mean backdoor ≥ 0.5 with one attacker every round and ≥ 0.3 with random ε = 3.3%",
                 f"{_f(hi1[mb])} (final {_f(hi1['attack_success_rate'])}); random ε = 3.3%: {_f(r1[mb])}",
                 "yes" if ok else "**no**"])
    ok = all(r[mb] < hi1[mb] / 2 for r in lo1)
    rows.append(["...and fades when the fraction falls below about 1%",
                 "ε = 0.33%: mean backdoor below half of the every-round attacker's",
                 f"{_f(lo1[0][mb])} (fixed) / {_f(lo1[1][mb])} (random); final {_f(lo1[0]['attack_success_rate'])} / "
                 f"{_f(lo1[1]['attack_success_rate'])}", "yes" if ok else "**no**"])
    ok = min(r[mb] for r in hi2) > max(r[mb] for r in lo2)
    rows.append(["Norm-bounded attacks behave like Figure 1 under a bound the attacker knows",
                 "M = 10 against clip 10: both ε = 3.3% adversaries above both ε = 0.33% ones",
                 f"{_f(hi2[0][mb])} (every round), {_f(hi2[1][mb])} (random 3.3%); {_f(lo2[0][mb])} / {_f(lo2[1][mb])} "
                 "at 0.33%", "yes" if ok else "**no**"])
    labels3 = _labels(records, "fig3")
    means3 = [_mean(f3, lb, s3, mb) for lb in labels3]
    d, dlo, dhi = _paired(f3, labels3[-1], labels3[0], s3, mb)
    higher = sum(f3[(labels3[-1], s)][mb] > f3[(labels3[0], s)][mb] for s in s3)
    if dhi < 0:
        verdict = "yes"
    elif dlo > 0:
        verdict = "**no: the opposite** (below)"
    else:
        verdict = (f"not resolved by {len(s3)} seeds at 95%; leans the opposite way (higher with "
                   f"{labels3[-1].split()[0]} tasks in {higher} of {len(s3)} seeds; below)" if d > 0
                   else f"not resolved by {len(s3)} seeds")
    rows.append(["More backdoor tasks make the attack harder",
                 f"mean backdoor with {labels3[-1].split()[0]} tasks minus with {labels3[0].split()[0]}, paired by seed, "
                 "95% t-interval below 0",
                 ", ".join(f"{_f(m)} ({lb.split()[0]})" for m, lb in zip(means3, labels3, strict=True))
                 + f", mean of {len(s3)} seeds; difference {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]", verdict])
    m3, na = f4a[("M=3", 0)], f4a[("no attack", 0)]
    ok = (m3[mb] - na[mb] <= 0.05 and na["clean_accuracy"] - m3["clean_accuracy"] <= 0.02
          and (m3["rounds_p90_below_bound"] or 0) >= 0.9)
    rows.append(["Norm bound 3 mitigates the attack with almost no main-task loss, while 90% of benign updates stay "
                 "below the bound",
                 "M = 3: mean backdoor within 0.05 of no attack, main within 2 points, p90 ≤ 3 in ≥ 90% of rounds",
                 f"mean backdoor {_f(m3[mb])} (no attack {_f(na[mb])}), main {_f(m3['clean_accuracy'])} vs "
                 f"{_f(na['clean_accuracy'])}; benign p90 {_f(m3['median_benign_norm_p90'], 2)}, below 3 in "
                 f"{100 * (m3['rounds_p90_below_bound'] or 0):.0f}% of rounds", "yes" if ok else "**no**"])
    base, none = "clip 5 only (sigma=0)", "no attack (clip 5 only)"
    for label, reading in (("sigma=0.025", "σ = 0.025"), ("sigma=0.158", "σ = √0.025 = 0.158 (variance 0.025)")):
        if (label, s4b[0]) not in f4b:
            continue
        d, dlo, dhi = _paired(f4b, label, base, s4b, mb)
        cost = f"no attack ({label})"
        c, clo, chi = _paired(f4b, cost, none, s4b, "clean_accuracy")
        helps, hurts = dhi < 0, clo < -0.02
        if _mean(f4b, cost, s4b, "clean_accuracy") < 0.2:
            verdict = (f"**no**: the noise destroys the model (main accuracy {_f(_mean(f4b, cost, s4b, 'clean_accuracy'))} "
                       "without an attack)")
        elif helps and not hurts:
            verdict = "yes"
        elif helps:
            verdict = "**no**: it lowers the backdoor but costs main accuracy"
        elif dlo > 0:
            verdict = "**no**: the backdoor is higher"
        else:
            verdict = f"not resolved by {len(s4b)} seeds" + ("; and it costs main accuracy" if hurts else "")
        rows.append([f"Weak DP (noise \"with variance 0.025\") helps further without hurting the main task much; read "
                     f"as {reading} per coordinate of the average",
                     "mean backdoor below clip 5 alone (paired 95% t-interval below 0); without attack, main accuracy "
                     "at most 2 points below clip 5 alone (interval's low end)",
                     f"mean backdoor {_f(_mean(f4b, label, s4b, mb))} vs {_f(_mean(f4b, base, s4b, mb))}: "
                     f"{d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]; main without attack {_f(_mean(f4b, cost, s4b, 'clean_accuracy'))} "
                     f"vs {_f(_mean(f4b, none, s4b, 'clean_accuracy'))}: {c:+.3f} [{clo:+.3f}, {chi:+.3f}]; "
                     f"{len(s4b)} seeds", verdict])
    seeds = {fig: ", ".join(map(str, _seeds(records, fig))) for fig in ("fig1", "fig2", "fig3", "fig4a", "fig4b")}
    groups: dict[str, list[str]] = {}
    for fig, s in seeds.items():
        groups.setdefault(s, []).append(fig.replace("fig", ""))
    scope = "; ".join(f"Figure{'s' if len(f) > 1 else ''} {', '.join(f)}: seed{'s' if ',' in s else ''} {s}"
                      for s, f in groups.items())
    return (_table(["claim (Sun et al. 2019)", "test applied here", "measured here", "agrees?"], rows)
            + f"\n{scope}. The verdicts are computed from docs/records/{SUMMARY} by the test in the second column.\n")


def _test_samples(records: list[dict[str, Any]]) -> str:
    sizes = sorted({r["test_samples"] for r in records})
    return " or ".join(f"{s:,}" for s in sizes)


def render_start(records: list[dict[str, Any]]) -> str:
    thirty = [r for r in records if r["figure"] != "fig3" or r["variant"] == "30 tasks"]
    starts = [r["start_clean_accuracy"] for r in records]
    by_seed = {}
    for r in records:
        by_seed.setdefault(r["seed"], set()).add(round(r["start_clean_accuracy"], 3))
    per_seed = "; ".join(f"seed {s}: {', '.join(_f(x) for x in sorted(v))}" for s, v in sorted(by_seed.items()))
    return (f"The warm-up (1 epoch of central pre-training on 12,000 images, then 2 benign rounds) starts every run at "
            f"{_f(min(starts))}-{_f(max(starts))} main accuracy ({per_seed}; the pre-training depends on the seed "
            f"only). Backdoor accuracy is measured on the held-out half of the target writers' 7s "
            f"({min(r['n_backdoor_eval'] for r in thirty)}-{max(r['n_backdoor_eval'] for r in thirty)} images for "
            f"30 target writers, by seed), main accuracy on {_test_samples(records)} test images.\n")


def _times(median: float, each: list[float], bold: bool) -> str:
    text = f"{median:.1f} s" + (f" ({min(each):.1f}-{max(each):.1f})" if len(each) > 1 else "")
    return f"**{text}**" if bold else text


def render_engines(records: list[dict[str, Any]]) -> str:
    rows, notes = [], []
    models = [r for r in records if r.get("local_epochs")]
    for r in models:
        seq, vec = r["sequential_round_s"], r["vectorised_round_s"]
        better = "sequential" if seq <= vec else "vectorised"
        rows.append([f"{r['model']} ({r['parameters']:,} parameters)",
                     _times(seq, r["sequential_rounds_s"], seq <= vec), _times(vec, r["vectorised_rounds_s"], vec < seq),
                     str(r["rounds"]), r["auto_engine"], f"{r['auto_choice_s']:.1f} s",
                     _times(r["auto_round_s"], r["auto_rounds_s"], False), f"{r['auto_vs_best_pct']:+.1f}%",
                     f"{r['auto_vs_best_rounds_only_pct']:+.1f}%"])
        note = f"{r['model']}: {better} {max(seq, vec) / min(seq, vec):.1f}x faster than {'vectorised' if seq <= vec else 'sequential'}; "
        if r["auto_engine"] == better:
            note += (f"auto picked it, so its rounds-only difference ({r['auto_vs_best_rounds_only_pct']:+.1f}%) is "
                     "the load's noise between timings of one engine")
        else:
            note += ("auto picked the slower engine: its short measurement on the loaded machine did not predict the "
                     "rounds that followed")
        notes.append(note)
    mem = next((r for r in records if not r.get("local_epochs")), None)
    r0 = models[0]
    load = [x for r in models for x in (r["load_avg_1m_start"], r["load_avg_1m_end"])]
    head = ["model", "sequential s/round", "vectorised s/round", "rounds timed", "auto picks", "auto's measurement",
            "auto s/round (the first round includes the measurement)", "auto vs the better engine", "same, rounds only"]
    return (_table(head, rows)
            + f"\nThe paper's round shape (30 MNIST writers, {r0['local_epochs']} local epochs, batch 20, lr 0.1): "
            "median seconds per round over the rounds timed (range in parentheses), the engines alternating; torch "
            f"{records[0]['versions']['torch']}, {r0['threads']} thread on {r0['cores']} CPU cores shared with other "
            f"jobs (1-minute load average {min(load):.1f}-{max(load):.1f} during the timings): loaded-machine figures, "
            "slower and noisier than alone. `auto` rounds are real rounds with engine=\"auto\": a fresh chooser "
            "measures both engines once (auto's first round pays for it, as the first round of a run does) and every "
            "round then trains with the engine it picked. \"auto vs the better engine\" = (rounds timed / auto's "
            "total time, measurement included) / the better engine's rounds per second - 1; \"rounds only\" leaves "
            f"the measurement out. {'. '.join(notes)}. vmap pads every client to the longest: "
            f"{r0['vmap_padding']:.2f}x the loop's steps for these rounds (median)."
            + (f" Memory: {mem['note'].split(' (')[0]} for all 539 writers." if mem else "")
            + f"\n\nMade by `{records[0]['config']['command']}` ({records[0]['benchmark_wall_s']:.0f} s; "
            f"{records[0]['config']['source']}).\n")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {
        "fl-quick": (QUICK, render_quick),
        "fl-start": (SUMMARY, render_start),
        "fl-fig1": (SUMMARY, lambda rs: render_adversaries("fig1", rs)),
        "fl-fig2": (SUMMARY, lambda rs: render_adversaries("fig2", rs)),
        "fl-fig3": (SUMMARY, render_fig3),
        "fl-fig4a": (SUMMARY, render_fig4a),
        "fl-fig4b": (SUMMARY, render_fig4b),
        "fl-fig4b-notes": (SUMMARY, render_fig4b_notes),
        "fl-claims": (SUMMARY, render_claims),
        "fl-engines": (ENGINES, render_engines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/fl-docs"))
    parser.add_argument("--only", nargs="*", choices=list(FIGS), help="figures to run (default: all)")
    parser.add_argument("--force", action="store_true", help="rerun runs already done")
    parser.add_argument("--records-only", action="store_true", help="summarise the runs already there; run nothing")
    parser.add_argument("--bench-only", action="store_true", help="copy the benchmark record only")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    if args.bench_only:
        bench_records()
        return
    if not args.records_only:
        run_all(args.runs, args.only or list(FIGS), args.force)
    write_records(args.runs)
    if BENCH.is_file():
        bench_records()
    copy_figures(args.runs)


if __name__ == "__main__":
    main()
