"""The board arithmetic against independent references (sklearn's AUROC, a slow bootstrap loop, hand-worked
attacker scores), and the sealing and commitment of specs."""

from __future__ import annotations

import math

import pytest
import torch

from backdoor_arena.game import crypto
from backdoor_arena.game.scoring import Entry, attacker_board, cross_entropy, defender_board, macro_auroc


def _entries() -> list[Entry]:
    return ([Entry(f"r{i}", True, "red", 0.98, 0.99) for i in range(3)]
            + [Entry(f"b{i}", True, "blue", 0.97, 0.95) for i in range(3)]
            + [Entry(f"c{i}", False, None, 0.98, None) for i in range(4)])


def test_macro_auroc_matches_sklearn_and_a_slow_bootstrap():
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(1)
    groups = {t: (torch.rand(5, generator=g).add(0.3).tolist(), torch.rand(7, generator=g).tolist()) for t in "ab"}
    macro, lo, hi, per = macro_auroc(groups, n_boot=400, seed=3)
    for t, (p, n) in groups.items():
        assert per[t] == pytest.approx(roc_auc_score([1] * len(p) + [0] * len(n), p + n))
    assert macro == pytest.approx(sum(per.values()) / 2)
    # the slow reference: the same draws (positives, then negatives, group by group), one AUROC at a time
    g = torch.Generator().manual_seed(3)
    reps = torch.zeros(400, dtype=torch.float64)
    for t in sorted(groups):
        p, n = (torch.tensor(v, dtype=torch.float64) for v in groups[t])
        pi = torch.randint(len(p), (400, len(p)), generator=g)
        ni = torch.randint(len(n), (400, len(n)), generator=g)
        for b in range(400):
            pp, nn = p[pi[b]], n[ni[b]]
            reps[b] += ((pp[:, None] > nn[None]).double() + 0.5 * (pp[:, None] == nn[None]).double()).mean() / 2
    q = torch.quantile(reps, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    assert (lo, hi) == pytest.approx(q)
    assert lo <= macro <= hi


def test_attacker_scores_by_hand():
    entries = _entries()
    # the detector finds red perfectly and blue never (blue below every clean model: AUROC 0, AUROC' 1 -> flipped)
    det = {**{f"r{i}": 10.0 + i for i in range(3)}, **{f"b{i}": -5.0 for i in range(3)},
           **{f"c{i}": float(i) for i in range(4)}}
    removal = {"fine-tuning": {**{f"r{i}": (0.97, 0.5) for i in range(3)},
                               **{f"b{i}": (0.80, 0.0) for i in range(3)},  # lost 17 points: counts as survived
                               **{f"c{i}": (0.98, None) for i in range(4)}}}
    board = {r["team"]: r for r in attacker_board(entries, {"nc": det}, removal, removal_max_drop=0.05)}
    assert board["red"]["detectors"]["nc"] == 1.0 and board["blue"]["detectors"]["nc"] == 1.0
    assert board["red"]["evasion"] == 0.0
    assert board["red"]["survival"] == pytest.approx(0.5) and board["blue"]["survival"] == 1.0
    assert board["red"]["score"] == pytest.approx(25.0) and board["blue"]["score"] == pytest.approx(50.0)
    assert board["blue"]["rank"] == 1


def test_defender_board_ranks_and_cross_entropy():
    entries = _entries()
    truth = {e.pool_id: float(e.is_trojan) for e in entries}
    half = {e.pool_id: 0.5 for e in entries}
    rows = defender_board(entries, {"team:oracle": truth, "team:coin": half, "det": {"r0": 1.0}},
                          {"team:oracle", "team:coin"}, {"det": 2.5}, n_boot=200)
    by = {r["defense"]: r for r in rows}
    assert [r["defense"] for r in rows][0] == "team:oracle"
    assert by["team:oracle"]["macro_auroc"] == 1.0 and by["team:coin"]["macro_auroc"] == 0.5
    assert by["team:coin"]["cross_entropy"] == pytest.approx(math.log(2))
    assert by["det"]["missing"] == 9 and by["det"]["runtime_s"] == 2.5 and by["det"]["cross_entropy"] is None
    ce, half_width = cross_entropy([1, 0], [1e-20, 0.0])  # clipped, never infinite
    assert ce == pytest.approx(-math.log(1e-12) / 2) and math.isfinite(half_width)


def test_sealed_spec_opens_only_with_the_key_and_its_own_ids(tmp_path):
    priv, pub = crypto.keygen(tmp_path)
    spec = {"attack": "blended", "target": 3}
    sealed = crypto.seal(pub.read_bytes(), crypto.canonical_json(spec), b"round=1;submission=a")
    assert b"blended" not in sealed
    assert crypto.unseal(priv.read_bytes(), sealed, b"round=1;submission=a") == crypto.canonical_json(spec)
    from backdoor_arena.errors import ConfigError

    with pytest.raises(ConfigError, match="authentication failed"):
        crypto.unseal(priv.read_bytes(), sealed, b"round=1;submission=b")  # moved onto another submission
    salt = b"s" * 16
    assert crypto.commitment(salt, spec) == crypto.commitment(salt, {"target": 3, "attack": "blended"})
    assert crypto.commitment(salt, spec) != crypto.commitment(salt, {**spec, "target": 4})
    assert crypto.verify_password(crypto.hash_password("correct horse"), "correct horse")
    assert not crypto.verify_password(crypto.hash_password("correct horse"), "wrong horse")


def test_shipped_demo_config_is_the_demo_round():
    from pathlib import Path

    from backdoor_arena.game.config import load_round_config, loads_round_config
    from backdoor_arena.game.demo import DEMO_TOML

    shipped = load_round_config(Path(__file__).resolve().parents[2] / "configs" / "game" / "demo.toml")
    assert shipped == loads_round_config(DEMO_TOML)


def test_a_rerun_of_the_demo_takes_the_next_free_round_name():
    from backdoor_arena.game.demo import free_round_name

    assert free_round_name("demo", set()) == "demo"
    assert free_round_name("demo", {"demo"}) == "demo-2"
    assert free_round_name("demo", {"demo", "demo-2", "other"}) == "demo-3"
