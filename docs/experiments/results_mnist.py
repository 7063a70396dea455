"""The MNIST table of docs/results.md, from records: runs the `backdoor-arena` commands the page shows (4 epochs,
seed 0, the CLI defaults, which keep the defenders' 5% hold-out out of training) and writes one Record per run
to docs/records/results_mnist.jsonl; docs/tables.py renders the page's tables from them.

    BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/results_mnist.py [--runs runs/results-mnist]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "results_mnist.jsonl"
COMMON = "--dataset mnist --model badnet-mnist --epochs 4 --seed 0"
RUNS = [  # (name, label, command after `backdoor-arena`, the part the page shows)
    ("clean", "clean", f"train {COMMON}", "train"),
    ("a2o-pattern", "all-to-one, 3x3 pattern, target 7",
     f"attack badnets {COMMON} --target 7 --trigger pattern --poison-rate 0.1",
     "attack badnets --target 7 --trigger pattern --poison-rate 0.1"),
    ("a2o-pixel", "all-to-one, single pixel, target 7",
     f"attack badnets {COMMON} --target 7 --trigger pixel --poison-rate 0.1",
     "attack badnets --target 7 --trigger pixel --poison-rate 0.1"),
    ("a2a-pattern", "all-to-all (i → i+1), 3x3 pattern",
     f"attack badnets {COMMON} --mode all-to-all --trigger pattern --poison-rate 0.1",
     "attack badnets --mode all-to-all --trigger pattern --poison-rate 0.1"),
    ("blended", "blended, uniform noise, α = 0.2, target 7",
     f"attack blended {COMMON} --target 7 --trigger noise --alpha 0.2 --poison-rate 0.1",
     "attack blended --target 7 --trigger noise --alpha 0.2 --poison-rate 0.1"),
]


def _cli(args: str) -> dict[str, Any]:
    exe = Path(sys.executable).with_name("backdoor-arena")
    r = subprocess.run([str(exe), *shlex.split(args)], capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"backdoor-arena {args} failed: {r.stderr.strip()}")
    return json.loads(r.stdout)


def run(runs_dir: Path) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    runs_dir.mkdir(parents=True, exist_ok=True)
    records = []
    for name, label, command, shown in RUNS:
        out = runs_dir / f"{name}.safetensors"
        started = time.perf_counter()
        r = _cli(f"{command} --out {out} --quiet --json --overwrite")
        wall = round(time.perf_counter() - started, 1)
        metrics = {k: r.get(k) for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")} | {"wall_s": wall}
        records.append(Record("results-mnist", {"command": f"backdoor-arena {command}", "shown": shown}, 0, metrics,
                              {"run": name, "label": label}, versions()))
        print(name, metrics, flush=True)
    # the clean model against the all-to-one pattern spec (a spec for another model: --force)
    command = f"evaluate {runs_dir}/clean.safetensors --attack-spec {runs_dir}/a2o-pattern.attack.json --force --json"
    r = _cli(command)
    metrics = {k: r.get(k) for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}
    records.append(Record("results-mnist", {"command": "backdoor-arena " + command.replace(str(runs_dir), "RUNS"),
                                            "shown": "evaluate clean --attack-spec a2o-pattern.attack.json --force"},
                          0, metrics, {"run": "clean-vs-a2o", "label": "clean model, all-to-one pattern trigger"},
                          versions()))
    write_jsonl(RECORDS, records)


def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def render_main(records: list[dict]) -> str:
    by = {r["run"]: r for r in records}
    vs = by.get("clean-vs-a2o", {})
    lines = ["| run | command (after the common options) | clean acc. | ASR | robust acc. | wall time |",
             "|---|---|---|---|---|---|"]
    for name, label, _command, shown in RUNS:
        r = by[name]
        asr, robust = r.get("attack_success_rate"), r.get("robust_accuracy")
        if name == "clean":
            asr, robust = vs.get("attack_success_rate"), vs.get("robust_accuracy")
        lines.append(f"| {label} | `{shown}` | {_p(r['clean_accuracy'])} | {_p(asr)}{'¹' if name == 'clean' else ''} | "
                     f"{_p(robust)}{'¹' if name == 'clean' else ''} | {r['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n\n¹ the clean model evaluated against the all-to-one pattern spec (`--force`: the spec " \
        "was made for another model): the trigger alone does not move it.\n"


def render_claims(records: list[dict]) -> str:
    by = {r["run"]: r for r in records}
    clean, a2o, a2a = by["clean"], by["a2o-pattern"], by["a2a-pattern"]
    rows = [
        ("clean `badnet-mnist` accuracy", "≥ 99.0% (paper: 99.5%)", _p(clean["clean_accuracy"])),
        ("BadNets all-to-one clean accuracy", "≥ 99.0%", _p(a2o["clean_accuracy"])),
        ("BadNets all-to-one ASR", "≥ 99.5% (paper: backdoor error ≤ 0.09%)",
         f"{_p(a2o['attack_success_rate'])} (backdoor error {_p(1 - a2o['attack_success_rate'])})"),
        ("all-to-all clean accuracy", "within 1 point of the clean model",
         f"{100 * (a2a['clean_accuracy'] - clean['clean_accuracy']):+.2f} points"),
        ("all-to-all ASR", "≥ 98% (paper: 99.44%, error 0.56%)", _p(a2a["attack_success_rate"])),
    ]
    return "| claim | target | measured |\n|---|---|---|\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"results-mnist": (RECORDS.name, render_main), "results-mnist-claims": (RECORDS.name, render_claims)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/results-mnist"))
    run(parser.parse_args().runs)
