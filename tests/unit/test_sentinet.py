"""SentiNet without knowledge of the trigger: the salient region is the predicted class's Grad-CAM thresholded
relative to its own maximum, from the model and the input alone. Its geometry (a higher threshold, a smaller
region) and determinism on a small synthetic backdoored model, and a real separation of triggered from clean
inputs on a small backdoored MNIST model trained here."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from backdoor_arena.data.dataset import Dataset
from backdoor_arena.defenses import INPUT_DETECTORS
from backdoor_arena.defenses.sentinet import SentiNet, grad_cam, grad_cams, threshold_region
from backdoor_arena.detection_metrics import auroc, far_frr
from backdoor_arena.errors import ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, tiny_dataset

TARGET = 0


def stamp_corner(x: torch.Tensor) -> torch.Tensor:
    """The test's trigger: a bright 3x3 square in the bottom-right corner (where no class band reaches)."""
    out = x.clone()
    out[..., -3:, -3:] = 1.0
    return out


def _float(ds: Dataset) -> torch.Tensor:
    return ds.float_images()


@pytest.fixture(scope="module")
def backdoored():
    """A small conv net (emnist-cnn on 12x12 band images) trained on 15% corner-stamped inputs relabelled to
    class 0; returns the model, a clean set for the defender, and clean / triggered test inputs."""
    torch.manual_seed(0)
    train = tiny_dataset(480, seed=0)
    x, y = _float(train), train.labels.clone()
    g = torch.Generator().manual_seed(0)
    poison = torch.randperm(len(x), generator=g)[: len(x) * 15 // 100]
    x[poison], y[poison] = stamp_corner(x[poison]), TARGET
    model, _ = create_model("emnist-cnn", TINY_INFO, seed=0)
    fit(model, Dataset(TINY_INFO, x, y), TrainConfig(epochs=6, batch_size=32, lr=0.05, progress=False))
    model.eval()
    defender = tiny_dataset(200, seed=1)
    test = tiny_dataset(120, seed=2)
    clean_x = _float(test)
    trig_x = stamp_corner(clean_x[test.labels != TARGET])
    with torch.no_grad():
        asr = float((model(trig_x).argmax(1) == TARGET).float().mean())
        acc = float((model(clean_x).argmax(1) == test.labels).float().mean())
    assert asr > 0.9 and acc > 0.9, (asr, acc)  # the backdoor is learned, the task too
    return model, defender, clean_x, trig_x


# --------------------------------------------------------------------------- no knowledge of the attack
def test_the_constructor_takes_no_attack_parameter():
    params = set(inspect.signature(SentiNet).parameters)
    assert params == {"mask_threshold", "proposals", "n_clean", "frr", "bins", "n_fit", "chunk", "seed"}
    assert "region_fraction" not in params  # the old region sized from the attack (top 6% = a 4x4 trigger)
    with pytest.raises(ConfigError, match="region_fraction"):
        INPUT_DETECTORS.create("sentinet", region_fraction=0.06)


def test_the_region_comes_from_the_model_and_the_input_alone(backdoored):
    model, defender, clean_x, trig_x = backdoored
    x = torch.cat([clean_x[:10], trig_x[:10]])
    a = SentiNet(n_clean=8, n_fit=20, seed=0).fit(model, defender)
    b = SentiNet(n_clean=12, n_fit=40, seed=5).fit(model, defender.subset(torch.arange(100, 200)))
    ra, rb = a.regions(x), b.regions(x)
    assert torch.equal(ra, rb)  # neither the clean set, its size nor the seed changes the region
    assert torch.equal(ra, threshold_region(grad_cam(model, x), a.mask_threshold))  # the oracle: CAM >= t * max
    # the region follows the model's attention: the stamped corner is in it for triggered inputs
    corner = ra[10:, :, -3:, -3:].flatten(1).mean(1)
    assert float(corner.mean()) > 0.8


def test_a_larger_trigger_gives_a_region_at_least_as_large(backdoored):
    """Nothing fixes the region's size: it grows with what the model attends to."""
    model, defender, clean_x, _ = backdoored
    det = SentiNet(n_clean=8, n_fit=20).fit(model, defender)
    x = clean_x[:40]
    small = x.clone()
    small[..., -2:, -2:] = 1.0
    large = x.clone()
    large[..., -5:, -5:] = 1.0
    sizes = [float(det.regions(v).sum((1, 2, 3)).float().mean()) for v in (small, large)]
    assert sizes[1] >= sizes[0]


# --------------------------------------------------------------------------- the mask threshold
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), t1=st.floats(0.05, 1.0), t2=st.floats(0.05, 1.0))
def test_a_higher_threshold_gives_a_nested_smaller_region(seed, t1, t2):
    lo, hi = sorted((t1, t2))
    heat = torch.rand(3, 9, 9, generator=torch.Generator().manual_seed(seed))
    heat = heat / heat.flatten(1).max(1).values[:, None, None]
    a, b = threshold_region(heat, lo), threshold_region(heat, hi)
    assert a.shape == (3, 1, 9, 9) and bool((b <= a).all())  # nested
    assert bool((b.sum((1, 2, 3)) >= 1).all())  # the peak is always in
    assert torch.equal(threshold_region(heat, 1.0)[:, 0].bool(), heat == 1.0)


def test_an_empty_map_gives_an_empty_region():
    heat = torch.zeros(2, 5, 5)
    assert threshold_region(heat, 0.15).sum() == 0


def test_on_a_real_model_the_region_shrinks_as_the_threshold_rises(backdoored):
    model, defender, clean_x, trig_x = backdoored
    x = torch.cat([clean_x[:20], trig_x[:20]])
    sizes = []
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        sizes.append(float(SentiNet(mask_threshold=t, n_clean=8, n_fit=20).fit(model, defender).regions(x).sum()))
    assert all(sizes[i] > sizes[i + 1] for i in range(len(sizes) - 1)), sizes


def test_class_proposals_only_remove_pixels(backdoored):
    model, defender, clean_x, trig_x = backdoored
    x = torch.cat([clean_x[:20], trig_x[:20]])
    whole = SentiNet(proposals=0, n_clean=8, n_fit=20).fit(model, defender).regions(x)
    less = SentiNet(proposals=2, n_clean=8, n_fit=20).fit(model, defender).regions(x)
    assert bool((less <= whole).all()) and bool((less.sum((1, 2, 3)) >= 1).all())
    cams = grad_cams(model, x, torch.stack([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)], 1))
    assert cams.shape == (40, 2, 12, 12) and cams.min() >= 0 and cams.max() <= 1 + 1e-6


@pytest.mark.parametrize("bad, message", [
    ({"mask_threshold": 0.0}, "mask_threshold"), ({"mask_threshold": 1.01}, "mask_threshold"),
    ({"mask_threshold": True}, "mask_threshold"), ({"proposals": -1}, "proposals"), ({"proposals": 1.5}, "proposals"),
])
def test_bad_parameters(bad, message):
    with pytest.raises(ConfigError, match=message):
        SentiNet(**bad)


# --------------------------------------------------------------------------- determinism and real behaviour
def test_same_seed_same_scores(backdoored):
    model, defender, clean_x, trig_x = backdoored
    x = torch.cat([clean_x[:15], trig_x[:15]])
    a = SentiNet(n_clean=16, n_fit=60, seed=3).fit(model, defender)
    b = SentiNet(n_clean=16, n_fit=60, seed=3).fit(model, defender)
    assert torch.equal(a.score(x), b.score(x)) and a.threshold == b.threshold
    assert torch.equal(a.score(x), a.score(x))  # scoring does not change the detector


def test_it_separates_triggered_from_clean_inputs_on_mnist(data_root):
    """Real behaviour: badnet-mnist trained here (6,000 MNIST images, 20% stamped with the default 3x3
    checkerboard and relabelled 0, 3 epochs: ~8 s); the defender's clean set is 400 other training images."""
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.data import load_dataset

    train, test = load_dataset("mnist", "train", data_root), load_dataset("mnist", "test", data_root)
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=0, poison_rate=0.2, seed=0)
    poisoned = atk.poison(train.subset(torch.arange(6000)), torch.Generator().manual_seed(0)).dataset
    model, _ = create_model("badnet-mnist", train.info, seed=0)
    fit(model, poisoned, TrainConfig(epochs=3, progress=False))
    model.eval()
    x, y = test.float_images()[:300], test.labels[:300]
    clean_x, trig_x = x[:100], atk.apply_trigger(x[100:][y[100:] != 0][:100])
    with torch.no_grad():
        assert float((model(trig_x).argmax(1) == 0).float().mean()) > 0.9  # the backdoor is learned

    det = SentiNet(n_clean=30, n_fit=200, frr=0.05).fit(model, train.subset(torch.arange(6000, 6400)))
    assert det.clean_scores is not None and float((det.clean_scores > det.threshold).double().mean()) <= 0.05
    clean_s, trig_s = det.score(clean_x), det.score(trig_x)
    labels = torch.cat([torch.zeros(len(clean_s)), torch.ones(len(trig_s))])
    assert auroc(labels, torch.cat([clean_s, trig_s])) > 0.95
    far, frr = far_frr(clean_s, trig_s, det.threshold)
    assert far < 0.1 and frr < 0.1, (far, frr)
    # the transplanted region hijacks the carriers: a high fooled rate for triggered inputs only
    assert float(det.points(trig_x)[:, 1].mean()) > float(det.points(clean_x)[:, 1].mean()) + 0.5
