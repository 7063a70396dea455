"""Behaviour unchanged across refactors: the demo's numbers equal those recorded before the architecture
step (tests/golden/, made by `backdoor-arena demo --epochs 1` at commit c06a846), exactly. Release 0.2 keeps a
defenders' hold-out out of training by default; `--defender-holdout 0` is the training of release 0.1.

Exactly on the same kind of CPU: vector kernels round differently from one CPU to another (on an AMD EPYC
with AVX-512 the clean accuracy came out 0.01-0.07 points apart), so each golden file is one CPU's, and the
run must equal one of them bit for bit. demo-epochs1.records.jsonl is the CPU of the machines up to
2026-11-29; demo-epochs1.amd-epyc-avx512.records.jsonl was recorded on 2026-11-30 on an AMD EPYC (torch CPU
capability AVX512) by the code that still equalled the first file on the first CPU."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import run_cli

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def test_demo_numbers_identical_to_the_recorded_ones(tmp_path, capsys, monkeypatch):
    code, _out, err = run_cli(["demo", "--epochs", "1", "--defender-holdout", "0", "--out", str(tmp_path / "demo"), "-q"], capsys, monkeypatch)
    assert code == 0, err
    goldens = {}
    for path in sorted(GOLDEN.glob("demo-epochs1*.records.jsonl")):
        old = [json.loads(line) for line in path.read_text().splitlines()]
        goldens[path.name] = {(r["model"], r["metric"]): r["value"] for r in old}
    assert len(goldens) >= 2
    new = [json.loads(line) for line in (tmp_path / "demo" / "records.jsonl").read_text().splitlines()]
    got = {(r["model"], m): r[m] for r in new for m in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}
    assert any(got == expected for expected in goldens.values()), (got, goldens)
    assert all(r["verb"] == "demo" and r["seed"] == 0 and r["versions"]["torch"] for r in new)
