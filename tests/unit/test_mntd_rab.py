"""MNTD (meta neural trojan detection) and RAB (certified robustness to training-set perturbation) on real
MNIST: small shadow zoos and ensembles trained here, once per session."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from backdoor_arena.attacks import make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses import MODEL_DETECTORS, ROBUST_TRAINERS
from backdoor_arena.defenses import mntd_shadows as shadows
from backdoor_arena.defenses.rab import (
    RAB,
    certified_accuracy,
    certified_radius,
    clopper_pearson_bounds,
    hoeffding_bounds,
    radius_cap,
)
from backdoor_arena.detection_metrics import auroc
from backdoor_arena.errors import ArenaError, ConfigError
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import state_of

SHADOW_FAMILIES = ("mask", "blend")  # what the shadows learn; the suspects use square and pattern triggers
SMALL = {"n_clean": 6, "n_backdoored": 6, "families": SHADOW_FAMILIES, "optimizers": ("sgd",), "shadow_epochs": 2,
         "meta_epochs": 30}


@pytest.fixture(scope="module")
def mnist(data_root):
    train = load_dataset("mnist", "train", data_root)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(5))
    defender = train.subset(order[:2000].sort().values)  # the shadows' data
    attacker = train.subset(order[2000:4000].sort().values)  # the suspects' data, disjoint
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(1000))
    return defender, attacker, test


@pytest.fixture(scope="module")
def suspects(mnist):
    """3 clean and 3 backdoored badnet-mnist models (square and pattern triggers: families the shadows never
    saw), trained on the attacker's images with the project's BadNets attack; each with its ASR."""
    _defender, attacker, test = mnist
    out = []
    for i in range(6):
        backdoored = i >= 3
        data, asr = attacker, None
        atk = None
        if backdoored:
            trigger = ("square", "pattern", "square")[i - 3]
            atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger=trigger,
                              trigger_options={"size": 5, "position": ("top-left", "bottom-right", "top-right")[i - 3]},
                              target=(1, 4, 8)[i - 3], poison_rate=0.15, seed=i)
            data = atk.poison(attacker, torch.Generator().manual_seed(i)).dataset
        model, _ = create_model("badnet-mnist", attacker.info, 100 + i)
        fit(model, data, TrainConfig(epochs=4, lr=0.05, seed=100 + i, progress=False))
        model.eval()
        if atk is not None:
            victims = test.labels != atk.target
            with torch.no_grad():
                asr = float((model(atk.apply_trigger(test.float_images()[victims])).argmax(1) == atk.target)
                            .double().mean())
        out.append((model, backdoored, asr))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mntd-cache")


def _auroc(detector, suspects, clean) -> float:
    labels = torch.tensor([b for _m, b, _a in suspects])
    scores = torch.tensor([detector.inspect(m, clean).score for m, _b, _a in suspects])
    return auroc(labels, scores)


# ------------------------------------------------------------------------------------------------ MNTD
def test_mntd_separates_unseen_trigger_families(mnist, suspects, cache):
    defender, _attacker, _test = mnist
    assert all(asr > 0.9 for _m, b, asr in suspects if b), "the suspects' backdoors must work for the test to mean anything"
    detector = MODEL_DETECTORS.create("mntd", cache_dir=cache, **SMALL)
    area = _auroc(detector, suspects, defender)
    assert area > 0.5 + 1e-9, f"MNTD AUROC {area} on held-out families is no better than chance"
    # cached: a new detector with the same settings loads the meta-model and gives the same scores
    again = MODEL_DETECTORS.create("mntd", cache_dir=cache, **SMALL)
    model = suspects[3][0]
    assert again.inspect(model, defender).score == detector.inspect(model, defender).score
    assert list(cache.glob("meta-*.safetensors")) and list(cache.glob("meta-*.json"))


def test_mntd_one_class_runs_and_scores(mnist, suspects, cache):
    defender, _attacker, _test = mnist
    detector = MODEL_DETECTORS.create("mntd", cache_dir=cache, **{**SMALL, "one_class": True})
    verdicts = [detector.inspect(m, defender) for m, _b, _a in suspects]
    assert all(math.isfinite(v.score) and v.flagged == (v.score > 0) for v in verdicts)
    assert len({round(v.score, 6) for v in verdicts}) > 1, "one score for every model: the queries collapsed"
    assert verdicts[0].details["variant"] == "one-class"


def test_mntd_shadows_resume_and_refuse_tampered_files(mnist, cache, monkeypatch):
    defender, _attacker, _test = mnist
    folder = next(cache.glob("shadows-*"))
    files = sorted(folder.glob("shadow-*.safetensors"))
    assert len(files) == SMALL["n_clean"] + SMALL["n_backdoored"]  # the one-class run reused the clean shadows
    files[0].unlink()
    files[1].write_bytes(files[1].read_bytes()[:-8] + b"\x00" * 8)  # weights changed behind the manifest
    for meta in cache.glob("meta-*"):
        meta.unlink()
    trained = []
    real = shadows.train_shadow
    monkeypatch.setattr(shadows, "train_shadow", lambda entry, *a, **k: trained.append(entry["name"]) or real(entry, *a, **k))
    MODEL_DETECTORS.create("mntd", cache_dir=cache, **SMALL).fit(defender)
    assert sorted(trained) == sorted(f.name.rsplit("-", 1)[0] for f in files[:2])


def test_jumbo_triggers_follow_the_distribution():
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 1, 28, 28)
    for family in shadows.JUMBO_FAMILIES:
        for _ in range(20):
            spec = shadows.jumbo_trigger(family, 10, 28, g)
            assert 0.05 <= spec["poison_rate"] <= 0.5 and 0 <= spec["target"] < 10
            if family == "blend":
                assert spec["size"] == 28 and 0.05 <= spec["alpha"] <= 0.2
            else:
                assert spec["alpha"] == 1.0 or 0.2 <= spec["alpha"] < 0.5
            out = shadows.apply_jumbo(x, spec)
            changed = (out != x).any(1).any(0)
            rows, cols = torch.nonzero(changed, as_tuple=True)
            assert len(rows) > 0 and out.max() <= 1
            assert rows.min() >= spec["top"] and rows.max() < spec["top"] + spec["size"]
            assert cols.min() >= spec["left"] and cols.max() < spec["left"] + spec["size"]


def test_mntd_bad_input_is_one_line(mnist, suspects):
    defender, _attacker, _test = mnist
    model = suspects[0][0]
    detector = MODEL_DETECTORS.create("mntd", **MODEL_DETECTORS.get("mntd").example_params)
    info = DatasetInfo("other", 3, (1, 28, 28), ("a", "b", "c"), (0.5,), (0.5,))
    wrong = Dataset(info, torch.zeros(60, 1, 28, 28, dtype=torch.uint8), torch.arange(60) % 3)
    rgb = Dataset(DatasetInfo("rgb", 10, (3, 28, 28), tuple("abcdefghij"), (0.5,) * 3, (0.5,) * 3),
                  torch.zeros(200, 3, 28, 28, dtype=torch.uint8), torch.arange(200) % 10)
    for clean, words in ((wrong, "classes"), (rgb, "shape"), (defender.subset(torch.arange(50)), "at least")):
        with pytest.raises(ArenaError) as err:
            detector.inspect(model, clean)
        assert "\n" not in str(err.value) and words in str(err.value)
    for bad in ({"n_clean": 1}, {"families": ("laser",)}, {"nu": 0}, {"meta_lr": -1}):
        with pytest.raises(ConfigError, match="mntd: "):
            MODEL_DETECTORS.create("mntd", **bad)


# ------------------------------------------------------------------------------------------------- RAB
def test_radius_against_hand_computed_values():
    phi_inv = NormalDist().inv_cdf
    # sigma / 2 * (Phi^-1(0.9) - Phi^-1(0.1)) = sigma * Phi^-1(0.9) = 1.2816 sigma
    assert float(certified_radius(0.9, 0.1, 1.0)) == pytest.approx(1.2815516, abs=1e-6)
    assert float(certified_radius(0.8, 0.15, 0.5)) == pytest.approx(0.25 * (phi_inv(0.8) - phi_inv(0.15)), abs=1e-9)
    assert float(certified_radius(0.4, 0.4, 1.0)) == 0.0 and float(certified_radius(0.3, 0.5, 1.0)) == 0.0
    assert math.isinf(float(certified_radius(1.0, 0.0, 1.0)))
    # Hoeffding: margin sqrt(ln(1/alpha) / 2N) = sqrt(ln(1000) / 2000) = 0.058770 for N = 1000
    pa, pb = hoeffding_bounds(torch.tensor(0.9), torch.tensor(0.05), 1000, 0.001)
    assert float(pa) == pytest.approx(0.9 - 0.0587697, abs=1e-6) and float(pb) == pytest.approx(0.05 + 0.0587697, abs=1e-6)
    # Clopper-Pearson with every vote for A: the one-sided bound is alpha^(1/N)
    pa, pb = clopper_pearson_bounds(torch.tensor([20]), 20, 0.01)
    assert float(pa[0]) == pytest.approx(0.01 ** (1 / 20), abs=1e-9) and float(pb[0]) == pytest.approx(1 - 0.01 ** (1 / 20))
    assert radius_cap(1.0, 20, 0.01, "clopper-pearson") == pytest.approx(phi_inv(0.01 ** (1 / 20)), abs=1e-6)


def test_radius_is_monotone_in_the_probability_gap():
    pa = torch.linspace(0.3, 0.999, 200)
    r = certified_radius(pa, 1 - pa, 1.0)
    assert torch.all(r[1:] >= r[:-1]) and r[0] == 0 and r[-1] > 2
    pb = torch.linspace(0.0, 0.5, 100)
    r = certified_radius(torch.full_like(pb, 0.7), pb, 0.5)
    assert torch.all(r[1:] <= r[:-1])
    assert torch.all(certified_radius(0.9, 0.1, 2.0) == 2 * certified_radius(0.9, 0.1, 1.0))


@pytest.fixture(scope="module")
def ensemble(mnist):
    defender, _attacker, _test = mnist
    return RAB("badnet-mnist", n_models=8, sigma=0.5, alpha=0.01, bound="clopper-pearson", epochs=1).fit(defender)


def test_rab_certifies_mnist_and_the_curve_does_not_increase(ensemble, mnist):
    _defender, _attacker, test = mnist
    cert = ensemble.certify(test)
    assert float((cert.prediction == test.labels).double().mean()) > 0.7
    assert (cert.radius > 0).double().mean() > 0.3  # 8 models certify a good share at alpha 0.01
    assert float(cert.radius.max()) <= ensemble.epsilon + 1e-9 and ensemble.delta == 0.01
    radii = [0.0, 0.1, 0.2, 0.3, 0.5, 1.0]
    curve = [p["certified_accuracy"] for p in ensemble.certified_accuracy(test, radii)]
    assert all(a >= b for a, b in zip(curve, curve[1:], strict=False)) and curve[0] > 0.3 and curve[-1] == 0.0
    # the pure function on hand-made radii
    acc = certified_accuracy(torch.tensor([0.0, 0.3, 0.6, 0.9]), torch.tensor([True, True, False, True]), [0, 0.5, 1])
    assert acc.tolist() == [0.5, 0.25, 0.0]


def test_rab_is_a_robust_trainer_that_does_not_touch_its_input(mnist):
    defender, _attacker, _test = mnist
    data = defender.subset(torch.arange(300))
    images = data.images.clone()
    a = ROBUST_TRAINERS.create("rab", n_models=2, epochs=1, alpha=0.1).fit(data)
    b = ROBUST_TRAINERS.create("rab", n_models=2, epochs=1, alpha=0.1).fit(data)
    assert torch.equal(data.images, images)
    sa, sb = state_of(a.model), state_of(b.model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not a.model.training and a.model.test_noise.shape == (2, 1, 28, 28)


def test_rab_bad_input_is_one_line(ensemble):
    with pytest.raises(ArenaError) as err:
        ensemble.certify(torch.zeros(4, 3, 28, 28))
    assert "\n" not in str(err.value) and "shape" in str(err.value)
    for bad, word in (({"sigma": -1}, "sigma"), ({"alpha": 0}, "alpha"), ({"bound": "x"}, "bound"),
                      ({"n_models": 1.5}, "n_models")):
        with pytest.raises(ConfigError, match=word):
            RAB(**bad)
    info = DatasetInfo("tiny", 4, (1, 12, 12), ("a", "b", "c", "d"), (0.5,), (0.5,))
    tiny = Dataset(info, torch.zeros(20, 1, 12, 12, dtype=torch.uint8), torch.arange(20) % 4)
    with pytest.raises(ArenaError) as err:
        RAB("badnet-mnist", n_models=1).fit(tiny)  # 12x12 images are too small for badnet-mnist
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="at least 2"):
        RAB(n_models=1).fit(tiny.subset(torch.arange(1)))
