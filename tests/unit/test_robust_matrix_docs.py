"""docs/robust-aggregation.md's matrix tables over several seeds (docs/experiments/robust_matrix.py): each cell
the mean with the seeds' range, a tailored attack's verdict counted per seed, MixTailor's worst case compared
with its members' within each seed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("robust_matrix_docs_under_test",
                                                  ROOT / "docs" / "experiments" / "robust_matrix.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ACCURACY = {  # (rule, attack) -> clean accuracy in seeds 0, 1
    ("krum(f=2)", "none"): (0.85, 0.80),
    ("krum(f=2)", "fang-krum"): (0.10, 0.75),     # broken in seed 0 only (-75 pt, -5 pt)
    ("krum(f=2)", "alie"): (0.90, 0.82),
    ("mixtailor", "none"): (0.84, 0.86),
    ("mixtailor", "fang-krum"): (0.60, 0.80),
    ("mixtailor", "alie"): (0.83, 0.70),
}


def _records(seeds=(0, 1)):
    return [{"matrix": "mixtailor", "aggregator": agg, "attack": att, "seed": s, "clean_accuracy": acc[i],
             "config": {"command": "backdoor-arena fl matrix m.toml"}}
            for (agg, att), acc in ACCURACY.items() for i, s in enumerate(seeds)]


def test_cells_show_the_mean_and_the_range_of_the_seeds(docs):
    text = docs.render_matrix(_records(), "mixtailor", "clean_accuracy")
    krum = next(line for line in text.splitlines() if line.startswith("| krum(f=2)"))
    assert "| 0.425 (0.10-0.75) |" in krum and "**0.425** (fang-krum)" in krum
    assert "seed(s) 0, 1 (the mean over the seeds" in text


def test_claims_count_the_seeds_an_attack_broke_its_rule_in(docs):
    text = docs.render_claims(_records())
    fang = next(line for line in text.splitlines() if line.startswith("| fang-krum against krum(f=2)"))
    assert "0.825 -> 0.425 (-40.0 pt); per seed -75.0 / -5.0 pt" in fang
    assert "broken (broken in 1 of 2 seeds)" in fang
    alie = next(line for line in text.splitlines() if line.startswith("| alie against krum(f=2)"))
    assert "held (broken in 0 of 2 seeds)" in alie
    # worst cases: MixTailor 0.60 / 0.70 per seed, Krum 0.10 / 0.75: Krum is worse in seed 0 only
    mix = next(line for line in text.splitlines() if line.startswith("| MixTailor's worst case"))
    assert "per seed, worse than MixTailor in krum(f=2) 1 of 2" in mix


def test_one_seed_renders_without_ranges(docs):
    records = [r for r in _records() if r["seed"] == 0]
    assert "(0.10-" not in docs.render_matrix(records, "mixtailor", "clean_accuracy")
    claims = docs.render_claims(records)
    assert "per seed" not in claims.split("\n\n")[0] and "| broken |" in claims
