"""Byzantine-robust aggregators, MixTailor and the tailored attacks on small stacks made here: each fast rule
equals its slow reference over random shapes, bounds are clear errors, robust rules resist extreme rows that
move FedAvg arbitrarily far, MixTailor's draw follows its seed, and each tailored attack breaks the rule it
targets on a synthetic round."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoor_arena.errors import ConfigError
from backdoor_arena.federated import make_aggregator
from backdoor_arena.federated.attacks import CLIENT_ATTACKS, AttackContext, AttackResult
from backdoor_arena.federated.components import make_component
from backdoor_arena.federated.robust import coordinate_median, pairwise_distances
from backdoor_arena.federated.tailored import alie_z
from backdoor_arena.federated.task import AttackerData


def make_attack(spec: dict):
    return make_component(CLIENT_ATTACKS, spec, "attack")


DETERMINISTIC = [
    {"name": "coordinate-median", "f": 1}, {"name": "trimmed-mean", "f": 1}, {"name": "krum", "f": 1},
    {"name": "krum", "f": 1, "p": 1}, {"name": "multi-krum", "f": 1}, {"name": "multi-krum", "f": 1, "m": 2},
    {"name": "geometric-median", "f": 1}, {"name": "bulyan", "f": 1},
    {"name": "bulyan", "f": 1, "selection": "coordinate-median", "aggregation": "mean"},
    {"name": "centered-clipping", "f": 1, "tau": 0.7, "iterations": 3},
]


def _inputs(d: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"global_weights": torch.randn(d, generator=g), "server_update": torch.randn(d, generator=g)}


@settings(max_examples=12, deadline=None, derandomize=True)
@given(n=st.integers(7, 12), d=st.integers(1, 9), seed=st.integers(0, 10_000))
def test_fast_rules_equal_their_slow_references(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g) * torch.rand(n, 1, generator=g) * 3
    weights = torch.randint(1, 50, (n,), generator=g).double()
    for spec in DETERMINISTIC + [{"name": "fltrust"}, {"name": "flame"}]:
        rule = make_aggregator(spec)
        fast = rule.aggregate(updates, weights, torch.Generator().manual_seed(1), _inputs(d))
        slow = rule.reference(updates, weights, torch.Generator().manual_seed(1), _inputs(d))
        if slow.scores is not None and spec["name"] == "krum":
            best = sorted(slow.scores.tolist())
            if best[1] - best[0] <= 1e-5 * (1 + abs(best[0])):  # an exact tie (l_1 sums are piecewise linear)
                assert float(slow.scores[fast.selected[0]]) == pytest.approx(best[0], rel=1e-5, abs=1e-5)
                continue
        assert torch.allclose(fast.update, slow.update, atol=1e-5, rtol=1e-4), (spec, fast.update, slow.update)
        if slow.selected is not None:
            assert sorted(fast.selected.tolist()) == sorted(slow.selected.tolist()), spec


def test_hand_worked_values():
    u = torch.tensor([[1.0], [2.0], [3.0], [40.0]])
    w = torch.ones(4, dtype=torch.float64)
    g = torch.Generator()
    assert make_aggregator({"name": "coordinate-median", "f": 1}).aggregate(u, w, g, {}).update.item() == 2.5
    assert make_aggregator({"name": "trimmed-mean", "f": 1}).aggregate(u, w, g, {}).update.item() == 2.5
    # Krum, f = 1 of 5: each row's score sums its n - f - 2 = 2 nearest squared distances
    u5 = torch.tensor([[0.0], [1.0], [2.0], [10.0], [-30.0]])
    krum = make_aggregator({"name": "krum", "f": 1}).aggregate(u5, torch.ones(5, dtype=torch.float64), g, {})
    assert krum.selected.tolist() == [1] and krum.update.item() == 1.0
    assert krum.scores.tolist()[:3] == pytest.approx([1 + 4, 1 + 1, 1 + 4], rel=1e-5)


def test_gram_distances_equal_cdist():
    x = torch.randn(9, 1000, generator=torch.Generator().manual_seed(0)) + 50  # far from the origin: centring matters
    exact = torch.cdist(x.double(), x.double()) ** 2
    assert torch.allclose(pairwise_distances(x), exact, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize(("spec", "n", "formula"), [
    ({"name": "krum", "f": 3}, 8, "n >= 2f + 3"), ({"name": "multi-krum", "f": 2}, 6, "n >= 2f + 3"),
    ({"name": "bulyan", "f": 2}, 10, "n >= 4f + 3"), ({"name": "coordinate-median", "f": 3}, 6, "n >= 2f + 1"),
    ({"name": "trimmed-mean", "f": 2}, 4, "n >= 2f + 1"),
])
def test_byzantine_bounds_are_clear_errors(spec, n, formula):
    rule = make_aggregator(spec)
    problems = rule.round_problems(n)
    assert len(problems) == 1 and formula in problems[0] and "lower f" in problems[0]
    with pytest.raises(ConfigError, match=formula.replace("+", r"\+")):
        rule.aggregate(torch.randn(n, 3), torch.ones(n, dtype=torch.float64), torch.Generator(), {})
    assert rule.round_problems(n + 1 if "4f" not in formula else 4 * spec["f"] + 3) == []
    mix = make_aggregator({"name": "mixtailor", "pool": ["coordinate-median", spec], "f": spec["f"]})
    assert any(formula in p for p in mix.round_problems(n))


ROBUST = [s for s in DETERMINISTIC if s["name"] != "centered-clipping"] + [
    {"name": "fltrust"}, {"name": "flame", "noise_lambda": 0.0},
    {"name": "mixtailor", "pool": ["krum", "coordinate-median", "geometric-median", "bulyan"], "f": 2}]


@pytest.mark.parametrize("spec", ROBUST, ids=lambda s: s["name"] + str(len(s)))
def test_robust_rules_ignore_extreme_rows(spec):
    """11 benign rows near mu, 2 rows at 1e6 in a random direction: FedAvg moves ~1e5, robust rules stay near mu."""
    g = torch.Generator().manual_seed(3)
    d = 50
    mu = torch.randn(d, generator=g)
    benign = mu + 0.1 * torch.randn(11, d, generator=g)
    bad = 1e6 * torch.randn(2, d, generator=g)
    updates = torch.cat([benign, bad])
    w = torch.ones(13, dtype=torch.float64)
    spec = {**spec, "f": 2} if "f" in spec else spec
    inputs = {"global_weights": torch.zeros(d), "server_update": mu.clone()}
    fedavg = make_aggregator("fedavg").aggregate(updates, w, torch.Generator(), inputs).update
    assert float((fedavg - mu).norm()) > 1e4
    for seed in range(3):
        out = make_aggregator(spec).aggregate(updates, w, torch.Generator().manual_seed(seed), dict(inputs)).update
        assert float((out - mu).norm()) < 1.0, (spec, float((out - mu).norm()))


def test_centered_clipping_moves_at_most_tau_per_iteration_and_keeps_its_centre():
    rule = make_aggregator({"name": "centered-clipping", "f": 2, "tau": 0.5, "iterations": 2})
    updates = torch.cat([torch.ones(8, 4), 1e6 * torch.ones(2, 4)])
    state: dict = {}
    first = rule.aggregate(updates, torch.ones(10, dtype=torch.float64), torch.Generator(), state).update
    assert float(first.norm()) <= 2 * 0.5 + 1e-6 and torch.equal(state["centre"], first)
    second = rule.aggregate(updates, torch.ones(10, dtype=torch.float64), torch.Generator(), state).update
    assert float((second - first).norm()) <= 2 * 0.5 + 1e-6 and float(second.norm()) > float(first.norm())


def test_mixtailor_draw_follows_the_seed_and_is_uniform():
    pool = ["krum", "coordinate-median", "geometric-median", "trimmed-mean"]
    u = torch.randn(9, 5, generator=torch.Generator().manual_seed(0))
    w = torch.ones(9, dtype=torch.float64)

    def draws(seed: int, rounds: int = 40) -> list[str]:
        rule, g, state = make_aggregator({"name": "mixtailor", "pool": pool, "f": 2}), torch.Generator().manual_seed(seed), {}
        return [rule.aggregate(u, w, g, state).info["rule"] for _ in range(rounds)]

    assert draws(7) == draws(7) and draws(7) != draws(8)
    many = draws(1, 800)
    counts = [many.count(label) for label in pool]
    assert min(counts) > 150 and max(counts) < 250  # uniform: 200 each, sd ~12
    # the drawn rule's own output is what MixTailor returns
    rule, g = make_aggregator({"name": "mixtailor", "pool": pool, "f": 2}), torch.Generator().manual_seed(5)
    res = rule.aggregate(u, w, g, {})
    alone = make_aggregator({"name": res.info["rule"], "f": 2}).aggregate(u, w, torch.Generator(), {})
    assert torch.allclose(res.update, alone.update)


def test_default_pool_is_mixtailors_families():
    rule = make_aggregator({"name": "mixtailor", "f": 2})
    names = {label.split("(")[0] for label in rule.labels}
    assert names == {"krum", "coordinate-median", "geometric-median", "bulyan"} and len(rule.labels) == 23
    assert rule.round_problems(12) == [] and rule.round_problems(10)  # Bulyan needs n >= 4f + 3 = 11


# ---- tailored attacks --------------------------------------------------------------------------------------

def _context(benign: torch.Tensor, m: int, rule: dict | None = None, seed: int = 0) -> AttackContext:
    d = benign.shape[1]
    agg = make_aggregator(rule) if rule else None
    return AttackContext(
        model=torch.nn.Linear(1, 1), global_weights=torch.zeros(d) + 0.3, data=AttackerData(torch.zeros(1, 1, 1, 1,
        dtype=torch.uint8), torch.zeros(1, dtype=torch.int64), 0), round=1, seed=seed, n_malicious=m,
        malicious_ids=tuple(range(m)), malicious_weights=torch.ones(m, dtype=torch.float64),
        weight_sum=float(benign.shape[0] + m), server_lr=1.0,
        aggregator_params=agg.public_params() if agg else {}, benign_updates=benign,
        benign_weights=torch.ones(benign.shape[0], dtype=torch.float64), aggregator=agg)


def _benign_round(n: int = 10, d: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.2 + 0.3 * torch.randn(n, d, generator=g)  # mean direction +0.2 per coordinate


def _inner(rule: dict, benign: torch.Tensor, malicious: torch.Tensor) -> float:
    stack = torch.cat([benign, malicious])
    w = torch.ones(len(stack), dtype=torch.float64)
    out = make_aggregator(rule).aggregate(stack, w, torch.Generator(), {"global_weights": torch.zeros(stack.shape[1])})
    return float(out.update @ benign.mean(0))


def test_alie_z_is_the_papers_formula():
    assert math.isclose(alie_z(25, 5), 0.4677, abs_tol=1e-3)  # Phi^-1(0.68)
    assert alie_z(25, 5) == pytest.approx(NormalDist().inv_cdf((25 - (13 - 5)) / 25), abs=1e-6)


@pytest.mark.parametrize(("attack", "rule", "most"), [
    ({"name": "fang-krum"}, {"name": "krum", "f": 2}, 0.0),
    ({"name": "ipm", "epsilon": 100.0}, {"name": "fedavg"}, 0.0),
    ({"name": "fang-trim"}, {"name": "trimmed-mean", "f": 2}, 0.75),
    ({"name": "fang-trim"}, {"name": "coordinate-median", "f": 2}, 0.75),
])
def test_each_tailored_attack_hurts_the_rule_it_targets(attack, rule, most):
    """On a synthetic round of 10 benign + 2 attackers, the aggregate's progress along the benign mean, relative
    to the same round with 2 more benign clients: Fang's Krum attack and IPM reverse it (< 0); Fang's
    trimmed-mean/median attack, which works over many rounds, cuts it by at least a quarter in one."""
    benign = _benign_round()
    base = _inner(rule, benign, benign[:2])
    assert base > 0
    result = make_attack(attack).craft(_context(benign, 2, rule))
    assert _inner(rule, benign, result.updates) < most * base, result.info


def test_fang_krum_gets_its_update_selected_and_alie_stays_within_the_spread():
    benign = _benign_round()
    ctx = _context(benign, 2, {"name": "krum", "f": 2})
    res = make_attack({"name": "fang-krum"}).craft(ctx)
    assert res.info["krum_selects_crafted"] and res.info["lambda"] > 1e-5
    alie = make_attack({"name": "alie"}).craft(_context(benign, 2))
    spread = (alie.updates[0] - benign.mean(0)).abs() / benign.std(0, correction=0)
    assert float(spread.max()) <= alie.info["z"] + 1e-4


@pytest.mark.parametrize("name", ["min-max", "min-sum"])
def test_min_distance_attacks_take_the_largest_gamma_within_the_benign_spread(name):
    benign = _benign_round()
    attack = make_attack({"name": name})
    res = attack.craft(_context(benign, 2))
    assert res.info["gamma"] > 0 and not attack.constraint_violations(_context(benign, 2), res)
    bigger = make_attack({"name": name})
    mu = benign.mean(0)
    p = res.updates[0] - mu
    pushed = (mu + 1.01 * p).unsqueeze(0).repeat(2, 1)
    assert bigger.constraint_violations(_context(benign, 2), AttackResult(pushed))  # 1% more breaks the limit


def test_adaptive_attack_picks_the_worst_epsilon_for_the_known_rule():
    benign = _benign_round()
    for rule in ({"name": "coordinate-median", "f": 2}, {"name": "fedavg"}):
        res = make_attack({"name": "adaptive"}).craft(_context(benign, 2, rule))
        chosen = _inner(rule, benign, res.updates)
        for eps in (0.1, 0.5, 1.0, 10.0, 100.0):
            assert chosen <= _inner(rule, benign, (-eps * benign.mean(0)).repeat(2, 1)) + 1e-6
    with pytest.raises(ConfigError, match="server's rule"):
        make_attack({"name": "adaptive"}).craft(_context(benign, 2))
    with pytest.raises(ConfigError, match="root data"):
        make_attack({"name": "adaptive"}).craft(_context(benign, 2, {"name": "fltrust"}))


def test_coordinate_median_of_even_count_averages_the_middle_pair():
    assert coordinate_median(torch.tensor([[4.0], [1.0], [3.0], [2.0]])).item() == 2.5


def test_flame_never_admits_a_non_finite_update():
    g = torch.Generator().manual_seed(0)
    benign = 0.5 + 0.05 * torch.randn(10, 20, generator=g)
    bad = torch.full((2, 20), float("nan"))
    bad[1] = float("inf")
    res = make_aggregator({"name": "flame", "noise_lambda": 0.0}).aggregate(
        torch.cat([benign, bad]), torch.ones(12, dtype=torch.float64), torch.Generator(), {"global_weights": torch.zeros(20)})
    assert bool(torch.isfinite(res.update).all()) and set(res.selected.tolist()) <= set(range(10))
