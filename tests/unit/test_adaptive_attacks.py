"""Adaptive attacks (attacks/adaptive.py): the pure pieces, and short real MNIST runs (4,000 images, 2 epochs)
in which each attack learns its backdoor and moves the statistic of the defense it targets in the attacker's
favour, compared with the plain poisoning trained the same way (a blended trigger: the 3x3 BadNets pattern
is not learned in so short a run)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from backdoor_arena.attacks import MODEL_ATTACKS, make_attack
from backdoor_arena.attacks.adaptive import random_patch_triggers, reverse_target_trigger, stamp, superimpose_add
from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import to_float
from backdoor_arena.errors import ConfigError
from backdoor_arena.metrics import evaluate
from backdoor_arena.train import TrainConfig, create_model, fit

CONFIG = TrainConfig(epochs=2, batch_size=32, lr=0.05, progress=False, seed=0)


@pytest.fixture(scope="module")
def mnist(data_root):
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(4000))
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(1000))
    return train, test


def _badnets(**kw):
    return make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.1, seed=1, **kw)


def _blended():
    return make_attack("blended", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.1, seed=1)


@pytest.fixture(scope="module")
def plain(mnist):
    train, test = mnist
    atk = _blended()
    model, _ = create_model("badnet-mnist", train.info, 0)
    fit(model, atk.poison(train, torch.Generator().manual_seed(atk.seed)).dataset, CONFIG)
    return model.eval(), atk


def _train(name: str, mnist, poisoning, **params):
    train, _ = mnist
    attack = MODEL_ATTACKS.create(name, poisoning=poisoning, **params)
    model, history, record = attack.train("badnet-mnist", train, CONFIG)
    return model, history, record


def test_stamp_superimpose_and_random_patches_are_what_they_say():
    x = torch.rand(3, 1, 8, 8)
    mask = torch.zeros(1, 8, 8)
    mask[0, :2, :2] = 1
    pattern = torch.ones(1, 8, 8)
    out = stamp(x, mask, pattern)
    assert torch.equal(out[:, :, :2, :2], torch.ones(3, 1, 2, 2)) and torch.equal(out[:, :, 2:], x[:, :, 2:])
    assert torch.equal(superimpose_add(x, x), (2 * x).clamp(0, 1))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    masks, patterns = random_patch_triggers(50, (3, 16, 16), (3, 6), g1)
    again = random_patch_triggers(50, (3, 16, 16), (3, 6), g2)
    assert torch.equal(masks, again[0]) and torch.equal(patterns, again[1])
    sides = masks[:, 0].sum((1, 2)).sqrt()
    assert masks.shape == (50, 1, 16, 16) and sides.min() >= 3 and sides.max() <= 6
    assert set(patterns.unique().tolist()) <= {0.0, 1.0}


def test_reversal_finds_a_trigger_and_leaves_the_network_alone(plain, mnist):
    model, atk = plain
    _, test = mnist
    x = to_float(test.images[test.labels != 7][:64])
    for p in model.parameters():
        p.grad = None
    before = [p.detach().clone() for p in model.parameters()]
    mask, pattern = reverse_target_trigger(model, x, 7, 60, 1e-3, 0.1, torch.Generator().manual_seed(0))
    with torch.no_grad():
        hit = (model(stamp(x, mask, pattern)).argmax(1) == 7).float().mean()
    start = (torch.tanh(torch.rand((1, 28, 28), generator=torch.Generator().manual_seed(0)) * 2 - 1) + 1) / 2
    assert hit > 0.9 and float(mask.sum()) < 0.5 * float(start.sum())  # a trigger, and the L1 cost shrank it
    assert all(torch.equal(p, q) and p.grad is None for p, q in zip(model.parameters(), before, strict=True))


def test_bad_parameters_are_one_line_errors():
    for name, params, match in (("nc-evasive", {"refresh": 0}, "refresh"),
                                ("strip-evasive", {"blend": 1.0}, "blend"),
                                ("tdc-evasive", {"negative_sides": (4, 2)}, "negative_sides")):
        with pytest.raises(ConfigError, match=match):
            MODEL_ATTACKS.create(name, poisoning=_badnets(), **params)
    with pytest.raises(ConfigError, match="all-to-one or source-specific"):
        MODEL_ATTACKS.create("nc-evasive", poisoning=_badnets(mode="all-to-all"))


def _strip_entropy(model, atk, test, n=64, overlays=16) -> float:
    """Mean STRIP entropy of triggered test inputs (saturating-sum superimposition)."""
    x = atk.apply_trigger(to_float(test.images[test.labels != 7][:n]))
    over = to_float(test.images[-overlays:])
    with torch.no_grad():
        p = F.softmax(model(superimpose_add(x[:, None], over[None]).flatten(0, 1)), 1)
    return float(-(p * p.clamp_min(1e-12).log()).sum(1).mean())


def test_strip_evasive_learns_the_backdoor_and_raises_strip_entropy(plain, mnist):
    _, test = mnist
    model, _, _ = _train("strip-evasive", mnist, _blended())
    m = evaluate(model, test, _blended())
    assert m["attack_success_rate"] > 0.8 and m["clean_accuracy"] > 0.93
    plain_model, atk = plain
    assert _strip_entropy(model, atk, test) > 5 * _strip_entropy(plain_model, atk, test)


def test_nc_evasive_learns_the_backdoor_and_its_reversed_trigger_grows(plain, mnist):
    _, test = mnist
    poisoning = _blended()
    model, _, record = _train("nc-evasive", mnist, poisoning, refresh=10, reverse_steps=20)
    steps = CONFIG.epochs * math.ceil(len(mnist[0]) * 1.1 / CONFIG.batch_size)  # 10% appended poisons
    assert record["reversals"] == math.ceil(steps / 10)  # one reversal every `refresh` steps
    assert record["trigger_l1"] == pytest.approx(0.2 * 28 * 28, rel=1e-4)  # a blend at alpha 0.2 everywhere
    m = evaluate(model, test, poisoning)
    assert m["attack_success_rate"] > 0.8 and m["clean_accuracy"] > 0.93
    x = to_float(test.images[test.labels != 7][:64])
    plain_model, _ = plain
    norms = [float(reverse_target_trigger(net, x, 7, 60, 1e-3, 0.1, torch.Generator().manual_seed(0))[0].sum())
             for net in (plain_model, model)]
    assert norms[1] > 1.5 * norms[0]  # Neural Cleanse's smallest trigger for the target grew


@pytest.mark.parametrize("poisoning", [_badnets, _blended], ids=["badnets", "blended"])
def test_tdc_evasive_fine_tunes_a_clean_network_into_a_close_specific_trojan(mnist, clean_net, poisoning):
    train, test = mnist
    before = [p.detach().clone() for p in clean_net.parameters()]
    atk = poisoning()
    model, _, _ = MODEL_ATTACKS.create("tdc-evasive", poisoning=atk).train("badnet-mnist", train, CONFIG,
                                                                           clean_model=clean_net)
    assert all(torch.equal(p, q) for p, q in zip(clean_net.parameters(), before, strict=True))  # clean untouched
    m, c = evaluate(model, test, atk), evaluate(clean_net, test, atk)
    assert m["attack_success_rate"] > 0.8 and m["clean_accuracy"] > c["clean_accuracy"] - 0.03
    # specificity: random patch triggers do not fire the backdoor
    x = to_float(test.images[test.labels != 7][:128])
    masks, patterns = random_patch_triggers(128, (1, 28, 28), (3, 10), torch.Generator().manual_seed(9))
    with torch.no_grad():
        fired = (model(stamp(x, masks, patterns)).argmax(1) == 7).float().mean()
    assert fired < 0.2


@pytest.fixture(scope="module")
def clean_net(mnist):
    train, _ = mnist
    net, _ = create_model("badnet-mnist", train.info, 0)
    fit(net, train, CONFIG)
    return net.eval()
