"""Benchmark runner: `python benchmarks/run.py [NAME ...] [--quick]`.

Each `bench_<name>.py` module here defines `run(quick: bool) -> list[dict]` (flat records) and
`COLUMNS` (the table's columns). The runner writes `results/<name>.json` (records plus machine and
versions) and `results/<name>.md` (a markdown table), and prints the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backdoor_arena.report import markdown_table  # noqa: E402
from backdoor_arena.runtime import available_cores, set_threads, versions  # noqa: E402


def main() -> None:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", choices=[[]] + names, help=f"benchmarks to run (default: all of {names})")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke run")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    set_threads()
    for name in args.names or names:
        module = importlib.import_module(f"bench_{name}")
        started = time.perf_counter()
        records = module.run(quick=args.quick)
        meta = {"benchmark": name, "quick": args.quick, "wall_time_s": round(time.perf_counter() - started, 1),
                "machine": {"cores": available_cores(), "platform": platform.platform(),
                            "processor": platform.processor(),
                            # other jobs on the machine inflate absolute times (ratios measured side by side less)
                            "load_average_1_5_15_min_at_end": [round(x, 2) for x in os.getloadavg()]},
                "versions": versions()}
        (args.out / f"{name}.json").write_text(json.dumps({**meta, "records": records}, indent=1))
        table = markdown_table(records, module.COLUMNS, getattr(module, "FORMATS", {}))
        (args.out / f"{name}.md").write_text(
            f"# {name}\n\n{module.__doc__.strip()}\n\n{table}\nMachine: {meta['machine']['cores']} cores, "
            f"torch {meta['versions']['torch']}; `python benchmarks/run.py {name}`.\n")
        print(f"## {name} ({meta['wall_time_s']} s)\n{table}")


if __name__ == "__main__":
    main()
