"""Adversary sampling counts, the backdoor task, boosting and the norm-bounded projection."""

from __future__ import annotations

import math

import pytest
import torch

from backdoor_arena.data import load_dataset
from backdoor_arena.errors import ConfigError
from backdoor_arena.federated.adversaries import FixedFrequency, RandomSampling
from backdoor_arena.federated.attacks import AttackContext, NormBoundedAttack, UnconstrainedAttack
from backdoor_arena.federated.engines import flat_params
from backdoor_arena.federated.partition import partition_by_writer
from backdoor_arena.federated.task import make_attacker_data, make_backdoor_task
from backdoor_arena.train import create_model


def test_fixed_frequency_attacks_every_f_rounds_and_skips_targets():
    adv = FixedFrequency(frequency=3, attackers=2)
    sampled = [4, 9, 2, 7]
    rounds = [adv.malicious(t, sampled, [9], frozenset(), t) for t in range(9)]
    assert rounds[0] == [4, 2] and rounds[3] == [4, 2] and rounds[1] == [] and rounds[2] == []
    assert adv.malicious(0, sampled, [], frozenset(), -1) == []  # warm-up rounds are benign


def test_random_sampling_counts_are_hypergeometric():
    k, c = 539, 30
    adv = RandomSampling(fraction=0.033)
    mal = adv.setup(k, excluded=[0, 1, 2], generator=torch.Generator().manual_seed(0))
    assert len(mal) == 18 and not mal & {0, 1, 2}
    g = torch.Generator().manual_seed(1)
    counts = torch.tensor([len(adv.malicious(t, torch.randperm(k, generator=g)[:c].tolist(), [], mal, t))
                           for t in range(4000)], dtype=torch.float64)
    mean = c * 18 / k
    var = mean * (1 - 18 / k) * (k - c) / (k - 1)
    assert abs(float(counts.mean()) - mean) < 0.05
    assert abs(float(counts.var()) - var) < 0.1
    p0 = math.comb(k - 18, c) / math.comb(k, c)
    assert abs(float((counts == 0).double().mean()) - p0) < 0.03


def test_adversary_parameters_are_validated():
    with pytest.raises(ConfigError, match="frequency"):
        FixedFrequency(frequency=0)
    with pytest.raises(ConfigError, match="fraction"):
        RandomSampling(fraction=1.5)
    with pytest.raises(ConfigError, match="norm_bound"):
        NormBoundedAttack(norm_bound=-1)
    with pytest.raises(ConfigError, match="boost"):
        UnconstrainedAttack(boost="big")


@pytest.fixture(scope="module")
def fed(data_root):
    return partition_by_writer(load_dataset("mnist", "train", data_root, writers=True))


def test_backdoor_task_splits_target_sevens(fed):
    task = make_backdoor_task(fed, 10, torch.Generator().manual_seed(0))
    labels = fed.dataset.labels
    assert len(task.target_clients) == 10
    assert bool((labels[task.attacker_index] == 7).all()) and bool((labels[task.eval_index] == 7).all())
    assert not set(task.attacker_index.tolist()) & set(task.eval_index.tolist())
    owners = set(fed.dataset.groups[task.eval_index].tolist())
    assert owners == {fed.client_ids[k] for k in task.target_clients}
    data = make_attacker_data(fed, task, 50, torch.Generator().manual_seed(0))
    assert len(data.labels) == len(task.attacker_index) + 50 and bool((data.labels[: data.n_backdoor] == 1).all())
    with pytest.raises(ConfigError, match="backdoor.tasks"):
        make_backdoor_task(fed, 10_000, torch.Generator().manual_seed(0))


def test_boost_and_norm_bound(fed):
    task = make_backdoor_task(fed, 5, torch.Generator().manual_seed(0))
    data = make_attacker_data(fed, task, 20, torch.Generator().manual_seed(0))
    model, _ = create_model("badnet-mnist", fed.dataset.info, seed=0)
    w = flat_params(model)
    ctx = AttackContext(model, w, data, round=1, seed=0, n_malicious=2, malicious_ids=(4, 9),
                        malicious_weights=torch.full((2,), 100.0, dtype=torch.float64), weight_sum=3000.0,
                        server_lr=1.0)
    res = UnconstrainedAttack(epochs=1).craft(ctx)
    assert res.info["boost"] == pytest.approx(15.0)  # 3000 / (1 * 2 * 100): two attackers split the replacement
    assert res.updates.shape == (2, w.numel()) and torch.equal(res.updates[0], res.updates[1])  # one per attacker
    assert float(res.updates[0].norm()) == pytest.approx(15.0 * res.info["unboosted_norm"], rel=1e-4)
    attack = NormBoundedAttack(norm_bound=1.0, epochs=1)
    bounded = attack.craft(ctx)
    assert float(bounded.updates.norm(dim=1).max()) <= 1.0 + 1e-4 and bounded.info["unboosted_norm"] <= 1.0 / 15 + 1e-6
    assert attack.constraint_violations(ctx, bounded) == []
    assert attack.constraint_violations(ctx, res) != []  # the unconstrained update is far longer than 1
