"""Numbers in docs/ trace to committed records: every generated table equals what docs/tables.py renders from
docs/records/, and a changed record or a hand-edited table is caught."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _load(docs: Path):
    spec = importlib.util.spec_from_file_location("docs_tables", docs / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_docs_table_matches_its_records():
    problems = _load(DOCS).process(check=True)
    assert not problems, "\n".join(problems) + "\nrun `python docs/tables.py` after updating docs/records/"
    assert len(list((DOCS / "records").glob("*.jsonl"))) >= 1


def test_a_hand_edited_table_is_caught(tmp_path):
    copy = tmp_path / "docs"
    shutil.copytree(DOCS, copy, ignore=shutil.ignore_patterns("figures"))
    page = next(p for p in copy.glob("*.md") if "<!-- table:" in p.read_text())
    text = page.read_text()
    start = text.index("<!-- table:")
    row = text.index("\n|", text.index("|---", start)) + 1
    page.write_text(text[:row] + "| 99 " + text[row:])  # a digit typed into the first data row
    problems = _load(copy).process(check=True)
    assert any(page.name in p for p in problems)
