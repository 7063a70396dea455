"""The round-speed table of docs/flower.md, from the benchmark's JSON: copies benchmarks/results/rounds.json
(written by `python benchmarks/run.py rounds`) into docs/records/fl_rounds.jsonl, one Record per row;
docs/tables.py renders the page's block from them.

    .venv/bin/python docs/experiments/flower.py      # after python benchmarks/run.py rounds
    .venv/bin/python docs/tables.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
RECORDS = DOCS / "records"
ROUNDS = "fl_rounds.jsonl"
BENCH = ROOT / "benchmarks" / "results" / "rounds.json"
COMMAND = "python benchmarks/run.py rounds"


def bench_records() -> None:
    """benchmarks/results/rounds.json as Records (verb "bench-rounds")."""
    sys.path.insert(0, str(ROOT / "src"))
    from backdoor_arena.records import Record, write_jsonl

    bench = json.loads(BENCH.read_text())
    config = {"command": COMMAND, "source": "benchmarks/results/rounds.json", "quick": bench["quick"]}
    out = []
    for r in bench["records"]:
        subject = {"system": r["system"], "local_epochs": r.get("local_epochs")}
        metrics = {k: v for k, v in r.items() if k not in subject and k not in ("times", "client_train_s")}
        metrics |= {"benchmark_wall_s": bench["wall_time_s"], "cores": bench["machine"]["cores"]}
        out.append(Record("bench-rounds", config, None, metrics, subject, bench["versions"]))
    write_jsonl(RECORDS / ROUNDS, out)
    print(f"wrote {len(out)} records to {RECORDS / ROUNDS}")


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f} s"


def _x(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}x"


def _yes(x: bool | None, runs: int | None = None, repeats: int | None = None) -> str:
    if x is None:
        return "—"
    counted = f" (met in {runs} of {repeats})" if runs is not None and repeats and repeats > 1 else ""
    return ("yes" if x else "no") + counted


def _seconds_with_runs(r: dict[str, Any], key: str) -> str:
    runs = r.get(f"{key}_runs")
    text = _s(r.get(key))
    return text if not runs or len(runs) < 2 else f"{text} ({' / '.join(f'{v:.3f}' for v in runs)})"


def _with_runs(r: dict[str, Any], key: str) -> str:
    """The median over the comparisons, with every comparison's value when there were several."""
    runs = r.get(f"{key}_runs")
    text = _x(r.get(key))
    return text if not runs or len(runs) < 2 else f"{text} ({' / '.join(f'{v:.2f}' for v in runs)})"


def render_rounds(records: list[dict[str, Any]]) -> str:
    rows = []
    head = ["local epochs", "system", "rounds timed", "s / round", "clients' training / worker, s / round",
            "x floor (per comparison)", "speed vs best Flower (per comparison)", "goal (issue 12)", "floor goal met?",
            "Flower goal met?"]
    for r in records:
        if r.get("local_epochs") is None:
            continue
        goal = r.get("goal") or ""
        floor_row = r["system"].startswith("floor")
        n = r.get("repeats")
        rows.append([str(r["local_epochs"]), r["system"], str(r.get("rounds", "")), _s(r.get("round_s")),
                     "" if r.get("train_s") is None else _seconds_with_runs(r, "train_s"),
                     "1.00x" if floor_row else _with_runs(r, "x_floor"),
                     "" if floor_row else _with_runs(r, "vs_flower"), goal,
                     _yes(r.get("meets_floor_goal"), r.get("meets_floor_goal_runs"), n) if goal else "",
                     _yes(r.get("meets_flower_goal"), r.get("meets_flower_goal_runs"), n) if goal else ""])
    table = "| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n"
    table += "".join("| " + " | ".join(row) + " |\n" for row in rows)
    machine = next(r for r in records if r["system"] == "machine")
    starts = [r for r in records if r["system"].endswith("start-up")]
    floor = next(r for r in records if r["system"].startswith("floor") and r["local_epochs"] == 1)
    flower = [r for r in records if r.get("mode") and r.get("local_epochs") is not None]
    loads = [r["load_1m"] for r in records if r.get("load_1m") is not None]
    overhead = "; ".join(f"{r['system'].split(': ', 1)[1]}, {r['local_epochs']} epoch"
                         f"{'s' if r['local_epochs'] > 1 else ''}: {_seconds_with_runs(r, 'overhead_s')}"
                         for r in flower)
    ceilings = "; ".join(f"{r['local_epochs']} epoch{'s' if r['local_epochs'] > 1 else ''}: overhead "
                         f"{_seconds_with_runs(r, 'overhead_s')}, with none "
                         f"{_with_runs(r, 'vs_flower_no_overhead')} Flower's speed"
                         for r in records if r["system"] == "built-in auto" and r.get("train_s") is not None)
    if ceilings:
        ceilings = (f" The built-in `auto` engine split the same way (round minus its clients' training time, "
                    f"measured in its workers, / workers): {ceilings}.")
    repeats = records[0].get("repeats", 1)
    notes = (f"\nScope: badnet-mnist, 30 of MNIST's 539 writers per round (the same clients in every system, seed "
             f"0), batch 20, lr 0.1, FedAvg, no attack, no evaluation in the round; median over the timed rounds "
             f"(the first round of each system is a warm-up); {repeats} whole comparison(s) run one after another, "
             f"the table's values their median, a goal met only if met in every comparison. The floor is "
             f"{floor['note']} (FlopCounterMode on a "
             f"training step; float32 matmul probe on the same threads, best of 512/1024/2048). Flower: 2 Ray "
             f"actors x 1 thread running the same local training code as the `processes` engine "
             f"(`engines.LocalTrainer`); per-round overhead (round minus the clients' own training time / 2 "
             f"actors): {overhead}.{ceilings} Start-up: " + " ".join(f"{r['system'].split(': ')[1]}: {r['note']}."
                                                           for r in starts)
             + f" Machine: {machine['note']}; torch {records[0]['versions']['torch']}, {machine['cores']} cores "
             f"shared with other jobs: 1-minute load average {min(loads):.2f}-{max(loads):.2f} during the run "
             f"(per row in the JSON).\n")
    wall = records[0].get("benchmark_wall_s")
    return table + notes + f"\nMade by `{COMMAND}` ({wall:.0f} s; benchmarks/results/rounds.json).\n"


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"fl-rounds": (ROUNDS, render_rounds)}


if __name__ == "__main__":
    bench_records()
