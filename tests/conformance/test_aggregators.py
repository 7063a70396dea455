"""Every registered aggregator: matches a slow loop reference, is invariant to client order, is
deterministic for a seed, does not mutate its inputs, and rejects bad parameters with ConfigError.

A newly registered aggregator fails `test_every_aggregator_is_enrolled` until it is added below."""

from __future__ import annotations

import math

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.federated.aggregators import AGGREGATORS, make_aggregator


def _loop_mean(updates, weights):
    n, d = updates.shape
    total = sum(float(w) for w in weights)
    return torch.tensor([sum(float(weights[k]) * float(updates[k, j]) for k in range(n)) / total for j in range(d)])


def _loop_clip(updates, m):
    rows = []
    for u in updates:
        norm = math.sqrt(sum(float(x) ** 2 for x in u))
        rows.append(u * (1.0 / max(1.0, norm / m)))
    return torch.stack(rows)


def _noise(d, sigma, seed):
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * sigma


# name -> (params, slow reference(updates, weights, seed), order invariant?, bad params)
ENROLLED = {
    "fedavg": ({"weighting": "samples"}, lambda u, w, s: _loop_mean(u, w), True, {"weighting": "median"}),
    "norm-clip": ({"max_norm": 1.5}, lambda u, w, s: _loop_mean(_loop_clip(u, 1.5), w), True, {"max_norm": -2}),
    "gaussian-noise": ({"sigma": 0.1}, lambda u, w, s: _loop_mean(u, w) + _noise(u.shape[1], 0.1, s), True,
                       {"sigma": -0.1}),
    "weak-dp": ({"max_norm": 1.5, "sigma": 0.02},
                lambda u, w, s: _loop_mean(_loop_clip(u, 1.5), w) + _noise(u.shape[1], 0.02, s), True,
                {"max_norm": 0}),
}


def stack(seed=0, n=7, d=13):
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g) * torch.linspace(0.1, 4.0, n).unsqueeze(1)
    weights = torch.randint(19, 131, (n,), generator=g).double()
    return updates, weights


def test_every_aggregator_is_enrolled():
    assert set(AGGREGATORS.names()) == set(ENROLLED)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_matches_slow_reference(name):
    params, reference, _, _ = ENROLLED[name]
    updates, weights = stack()
    out, info = make_aggregator({"name": name, **params}).aggregate(updates, weights, torch.Generator().manual_seed(5),
                                                                    {})
    assert isinstance(info, dict) and out.shape == (updates.shape[1],)
    assert torch.allclose(out, reference(updates, weights, 5).to(out.dtype), atol=1e-5)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_client_order_invariance(name):
    params, _, invariant, _ = ENROLLED[name]
    if not invariant:
        pytest.skip(f"{name} depends on client order by design")
    updates, weights = stack(1)
    perm = torch.randperm(len(weights), generator=torch.Generator().manual_seed(2))
    agg = make_aggregator({"name": name, **params})
    a, _ = agg.aggregate(updates, weights, torch.Generator().manual_seed(3), {})
    b, _ = agg.aggregate(updates[perm], weights[perm], torch.Generator().manual_seed(3), {})
    assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_deterministic_for_a_seed_and_no_mutation(name):
    params, _, _, _ = ENROLLED[name]
    updates, weights = stack(2)
    u0, w0 = updates.clone(), weights.clone()
    agg = make_aggregator({"name": name, **params})
    a, _ = agg.aggregate(updates, weights, torch.Generator().manual_seed(9), {})
    b, _ = agg.aggregate(updates, weights, torch.Generator().manual_seed(9), {})
    assert torch.equal(a, b)
    assert torch.equal(updates, u0) and torch.equal(weights, w0)


@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_bad_params_raise_config_error(name):
    _, _, _, bad = ENROLLED[name]
    with pytest.raises(ConfigError, match=next(iter(bad))):
        make_aggregator({"name": name, **bad})
    with pytest.raises(ConfigError, match="no parameter"):
        make_aggregator({"name": name, "not_a_parameter": 1})
