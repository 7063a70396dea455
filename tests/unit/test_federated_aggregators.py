"""FedAvg weights, clipping and noise on crafted updates; the typed result and the public parameters."""

from __future__ import annotations

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.federated.aggregators import (
    FedAvg,
    GaussianNoise,
    NormClip,
    WeakDP,
    clip_updates,
    make_aggregator,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_fedavg_weights_by_sample_count():
    updates = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    weights = torch.tensor([10.0, 30.0, 60.0])
    res = FedAvg().aggregate(updates, weights, gen(), {})
    assert torch.allclose(res.update, torch.tensor([0.1 + 1.8, 0.3 + 1.8]))
    assert torch.equal(res.weights, weights) and res.selected is None and res.clip_factors is None
    assert res.info["weight_sum"] == 100.0 and res.clipped() is None
    uniform = FedAvg("uniform").aggregate(updates, weights, gen(), {})
    assert torch.allclose(uniform.update, torch.tensor([4 / 3, 4 / 3])) and torch.equal(uniform.weights, torch.ones(3))


def test_clipping_scales_only_long_updates():
    updates = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])  # norms 5, 0.5, 0
    clipped, norms = clip_updates(updates, 1.0)
    assert torch.allclose(norms, torch.tensor([5.0, 0.5, 0.0]))
    assert torch.allclose(clipped, torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]]))
    res = NormClip(max_norm=1.0).aggregate(updates, torch.tensor([1.0, 1.0, 2.0]), gen(), {})
    assert res.clipped() == 1 and torch.allclose(res.clip_factors, torch.tensor([0.2, 1.0, 1.0]))
    assert torch.allclose(res.update, torch.tensor([0.9 / 4, 1.2 / 4]))


def test_boosted_update_is_tamed_by_clipping():
    benign = torch.full((29, 4), 0.01)
    boosted = torch.full((1, 4), 30.0)
    updates, weights = torch.cat([benign, boosted]), torch.ones(30)
    raw = FedAvg().aggregate(updates, weights, gen(), {}).update
    clipped = NormClip(3.0).aggregate(updates, weights, gen(), {}).update
    assert raw.norm() > 1.9 and clipped.norm() < 0.12


def test_noise_on_average_and_on_sum():
    updates = torch.zeros(4, 20000)
    weights = torch.full((4,), 25.0)
    res = GaussianNoise(sigma=0.5).aggregate(updates, weights, gen(1), {})
    avg = res.update
    assert res.info["noise_std"] == 0.5 and abs(float(avg.std()) - 0.5) < 0.01 and abs(float(avg.mean())) < 0.01
    res = GaussianNoise(sigma=0.5, noise_on="sum").aggregate(updates, weights, gen(1), {})
    assert res.info["noise_std"] == pytest.approx(0.5 / 100)
    assert torch.allclose(res.update * 100, avg, atol=1e-5)  # same draws, divided by the weight sum
    uniform = GaussianNoise(sigma=0.5, noise_on="sum", inner=FedAvg("uniform"))
    assert uniform.aggregate(updates, weights, gen(1), {}).info["noise_std"] == pytest.approx(0.5 / 4)


def test_weak_dp_is_clip_then_mean_then_noise():
    updates = torch.tensor([[30.0, 40.0], [0.0, 0.1]])
    weights = torch.tensor([1.0, 1.0])
    res = WeakDP(max_norm=5.0, sigma=0.025).aggregate(updates, weights, gen(3), {})
    out = res.update
    chain = GaussianNoise(0.025, "average", NormClip(5.0, FedAvg()))
    assert torch.equal(out, chain.aggregate(updates, weights, gen(3), {}).update)
    assert res.clipped() == 1 and res.info["noise_std"] == 0.025
    noise = torch.randn(2, generator=gen(3)) * 0.025
    assert torch.allclose(out, torch.tensor([1.5, 2.05]) + noise)


def test_nested_specs_compose():
    agg = make_aggregator({"name": "gaussian-noise", "sigma": 0.0, "inner": {"name": "norm-clip", "max_norm": 1.0}})
    res = agg.aggregate(torch.tensor([[3.0, 4.0]]), torch.ones(1), gen(), {})
    assert torch.allclose(res.update, torch.tensor([0.6, 0.8])) and res.clipped() == 1


def test_public_params_say_what_an_attacker_may_know():
    assert FedAvg().public_params() == {"weighting": "samples"}
    assert NormClip(3.0).public_params() == {"max_norm": 3.0, "weighting": "samples"}
    assert WeakDP(max_norm=5.0, sigma=0.01).public_params() == {
        "max_norm": 5.0, "sigma": 0.01, "noise_on": "average", "weighting": "samples"}
    nested = make_aggregator({"name": "gaussian-noise", "sigma": 0.1, "inner": {"name": "norm-clip", "max_norm": 2.0,
                                                                               "inner": {"name": "norm-clip"}}})
    assert nested.public_params() == {"sigma": 0.1, "noise_on": "average", "max_norm": 2.0, "weighting": "samples"}


@pytest.mark.parametrize("spec, message", [
    ({"name": "norm-clip", "max_norm": 0}, "max_norm"),
    ({"name": "gaussian-noise", "noise_on": "total"}, "noise_on"),
    ({"name": "fedavg", "max_norm": 3}, "no parameter"),
    ({"name": "krumm"}, "unknown aggregator"),
    ({"name": "norm-clip", "inner": {"name": "fedavg", "weighting": "x"}}, "weighting"),
    ("fedavg ", "unknown aggregator"),
    ({"max_norm": 3}, "'name' key"),
])
def test_bad_specs_raise_config_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        make_aggregator(spec)


def test_bad_stacks_raise_config_error():
    with pytest.raises(ConfigError, match="weights"):
        FedAvg().aggregate(torch.zeros(3, 2), torch.ones(2), gen(), {})
