"""Every generated table in docs/ from the committed run records in docs/records/ (JSONL, one Record per line).

A page marks each generated table:

    <!-- table:NAME -->
    | ... the table, written by this script; do not edit by hand ... |
    <!-- /table -->

    python docs/tables.py            # rewrite the tables of every page from the records
    python docs/tables.py --check    # exit 1 naming every table that disagrees with its records (the test suite
                                     # runs this: tests/unit/test_docs_tables.py)

A renderer takes the records of one file and returns markdown; the records say which command made them
(`config.command`), and every renderer prints that command under its table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

DOCS = Path(__file__).resolve().parent
RECORDS = DOCS / "records"
MARK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)

Renderer = Callable[[list[dict]], str]
TABLES: dict[str, tuple[str, Renderer]] = {}


def table(name: str, records_file: str) -> Callable[[Renderer], Renderer]:
    def add(fn: Renderer) -> Renderer:
        TABLES[name] = (records_file, fn)
        return fn
    return add


def read(records_file: str) -> list[dict]:
    path = RECORDS / records_file
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pct(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{100 * x:.{digits}f}%"


def interval(lo: float | None, hi: float | None, digits: int = 1) -> str:
    return "—" if lo is None or hi is None else f"[{100 * lo:.{digits}f}, {100 * hi:.{digits}f}]%"


def md(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def commands(records: list[dict]) -> str:
    cmds = sorted({r.get("config", {}).get("command", "") for r in records} - {""})
    return "".join(f"\nMade by `{c}`.\n" for c in cmds)


# ---- renderers (one per generated table) -------------------------------------------------------------------
@table("fuzz-modelfile", "fuzz_modelfile.jsonl")
def fuzz_table(records: list[dict]) -> str:
    rows = [[r["fuzzer"], r["architecture"], r["mutation"], f"{r['cases']:,}", f"{r['refused']:,}", f"{r['unchanged']:,}",
             str(r["failures"])] for r in records]
    total = sum(r["cases"] for r in records)
    bad = sum(r["failures"] for r in records)
    return (md(rows, ["fuzzer", "model", "mutation", "cases", "refused (ModelFileError)", "loaded unchanged",
                      "other outcomes"])
            + f"\nTotal: {total:,} cases, {bad} outcomes other than a one-line ModelFileError or an unchanged load.\n"
            + commands(records))


def _experiment_tables() -> None:
    """Experiment scripts under docs/experiments/ that render their own page blocks expose `docs_tables()`:
    {name: (records file, renderer)}; they join TABLES here."""
    import importlib.util

    for script in sorted((DOCS / "experiments").glob("*.py")):
        if "def docs_tables" not in script.read_text():
            continue
        spec = importlib.util.spec_from_file_location(f"docs_experiment_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        TABLES.update(module.docs_tables())


def _render_all() -> dict[str, str]:
    _experiment_tables()
    out = {}
    for name, (records_file, fn) in TABLES.items():
        if (RECORDS / records_file).is_file():
            out[name] = fn(read(records_file))
    return out


def process(check: bool) -> list[str]:
    """Rewrite (or, with `check`, compare) every marked table; returns the problems found."""
    rendered = _render_all()
    problems = []
    seen = set()
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()

        def replace(m: re.Match[str], page: Path = page) -> str:
            name = m["name"]
            seen.add(name)
            if name not in rendered:
                problems.append(f"{page.name}: table {name!r} has no renderer or no records file")
                return m.group(0)
            if check and m["body"] != rendered[name]:
                problems.append(f"{page.name}: table {name!r} disagrees with docs/records/{TABLES[name][0]}")
            return m.group(1) + rendered[name] + m.group(4)

        new = MARK.sub(replace, text)
        if not check and new != text:
            page.write_text(new)
    problems += [f"records for table {n!r} are not shown on any page" for n in sorted(set(rendered) - seen)]
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on any difference")
    args = parser.parse_args()
    problems = process(args.check)
    for p in problems:
        print(p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
