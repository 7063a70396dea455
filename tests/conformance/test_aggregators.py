"""Every registered aggregator, enrolled automatically (no per-plugin table): it declares its example and
bad parameters and its parameters' help; returns an AggregationResult; equals its own slow per-row loop
reference; is invariant to client order (rows and weights permuted together); is deterministic for a
generator seed and never mutates its inputs. The checks live in `backdoor_arena.federated.checks`."""

from __future__ import annotations

import pytest
import torch

from backdoor_arena.federated import checks
from backdoor_arena.federated.aggregators import AGGREGATORS, AggregationResult, Aggregator, make_aggregator


@pytest.mark.parametrize("check", checks.AGGREGATOR_CHECKS, ids=lambda c: c.__name__.removeprefix("check_aggregator_"))
@pytest.mark.parametrize("name", AGGREGATORS.names())
def test_aggregator_conformance(name, check):
    check(name)


def test_the_slow_references_are_the_obvious_maths():
    """The references themselves, by hand on a 2 x 2 stack: FedAvg, clipping to 1, and clipping then noise."""
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    weights = torch.tensor([1.0, 3.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(make_aggregator("fedavg").reference(updates, weights, g).update, torch.tensor([0.975, 1.3]))
    clip = make_aggregator({"name": "norm-clip", "max_norm": 1.0}).reference(updates, weights, g)
    assert torch.allclose(clip.update, torch.tensor([(0.6 + 0.9) / 4, (0.8 + 1.2) / 4]))
    assert torch.allclose(clip.clip_factors, torch.tensor([0.2, 1.0]))
    noisy = make_aggregator({"name": "weak-dp", "max_norm": 1.0, "sigma": 0.5}).reference(
        updates, weights, torch.Generator().manual_seed(4))
    noise = torch.randn(2, generator=torch.Generator().manual_seed(4)) * 0.5
    assert torch.allclose(noisy.update, clip.update + noise)


def test_a_rule_that_breaks_a_property_fails_its_check():
    """The checks can fail: a rule that favours the first row fails order invariance and its reference."""

    class FirstRow(Aggregator):
        example_params: dict = {}
        bad_params = (({"x": 1}, "no parameter"),)
        param_help: dict = {}

        def aggregate(self, updates, weights, generator, state):
            return AggregationResult(updates[0].clone())

        def reference(self, updates, weights, generator, state=None):
            return AggregationResult(updates.mean(0))

    with AGGREGATORS.temporarily("toy-first-row", FirstRow):
        checks.check_aggregator_result("toy-first-row")
        with pytest.raises(AssertionError, match="client order"):
            checks.check_aggregator_order_invariance("toy-first-row")
        with pytest.raises(AssertionError, match="reference"):
            checks.check_aggregator_reference("toy-first-row")
    assert "toy-first-row" not in AGGREGATORS
