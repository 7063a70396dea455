"""Behaviour unchanged across refactors: the demo's numbers equal those recorded before the architecture
step (tests/golden/, made by `backdoor-arena demo --epochs 1` at commit c06a846), exactly. Release 0.2 keeps a
defenders' hold-out out of training by default; `--defender-holdout 0` is the training of release 0.1."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_demo_numbers_identical_to_the_recorded_ones(tmp_path, capsys, monkeypatch):
    code, _out, err = run_cli(["demo", "--epochs", "1", "--defender-holdout", "0", "--out", str(tmp_path / "demo"), "-q"], capsys, monkeypatch)
    assert code == 0, err
    old = [json.loads(line) for line in (GOLDEN / "demo-epochs1.records.jsonl").read_text().splitlines()]
    expected = {(r["model"], r["metric"]): r["value"] for r in old}
    new = [json.loads(line) for line in (tmp_path / "demo" / "records.jsonl").read_text().splitlines()]
    got = {(r["model"], m): r[m] for r in new for m in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}
    assert got == expected
    assert all(r["verb"] == "demo" and r["seed"] == 0 and r["versions"]["torch"] for r in new)
