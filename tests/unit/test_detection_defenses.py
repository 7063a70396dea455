"""Neural Cleanse, STRIP, Spectral Signatures and SentiNet: their pure functions, and the batched Neural
Cleanse against the per-label loop of the same optimisation (the oracle)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses import MITIGATIONS
from backdoor_arena.defenses.neural_cleanse import NeuralCleanse, anomaly_index, anomaly_indices, apply_masks
from backdoor_arena.defenses.sentinet import grad_cam, top_region
from backdoor_arena.defenses.spectral import SpectralSignatures, spectral_scores
from backdoor_arena.defenses.strip import Strip, prediction_entropy, superimpose
from backdoor_arena.errors import ConfigError
from backdoor_arena.nn_tools import penultimate_features
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import TINY_INFO, tiny_dataset


def test_anomaly_index_by_hand():
    norms = torch.tensor([10, 11, 9, 10.5, 9.5, 10, 11, 9, 10, 1])
    # median 10; deviations' median 0.75; 9 / (1.4826 * 0.75)
    score, label = anomaly_index(norms)
    assert label == 9 and score == pytest.approx(9 / (1.4826 * 0.75))
    assert anomaly_indices(norms)[0] == 0
    # the smallest norm not below the median: nothing anomalous on the small side
    assert anomaly_index(torch.tensor([5.0, 5.0, 5.0, 9.0])) == (0.0, 0)


def test_apply_masks_is_label_major():
    x = torch.rand(3, 1, 4, 4)
    masks = torch.stack([torch.zeros(1, 4, 4), torch.ones(1, 4, 4)])
    patterns = torch.full((2, 1, 4, 4), 0.25)
    out = apply_masks(x, masks, patterns)
    assert out.shape == (6, 1, 4, 4)
    assert torch.equal(out[:3], x) and torch.all(out[3:] == 0.25)


@pytest.fixture(scope="module")
def tiny_model():
    ds = tiny_dataset(96)
    model, _ = create_model("emnist-cnn", TINY_INFO, seed=0)
    fit(model, ds, TrainConfig(epochs=2, batch_size=16, lr=0.05, progress=False))
    return model.eval(), ds


def test_batched_neural_cleanse_equals_the_per_label_loop(tiny_model):
    model, ds = tiny_model
    params = {"steps": 16, "batch_size": 8, "n_samples": 48, "check_every": 4, "patience": 1, "seed": 3}
    a = NeuralCleanse(batched=True, **params).reverse(model, ds)
    b = NeuralCleanse(batched=False, **params).reverse(model, ds)
    assert a.masks.shape == (4, 1, 12, 12) and a.patterns.shape == (4, 1, 12, 12)
    assert torch.allclose(a.masks, b.masks, atol=1e-4) and torch.allclose(a.patterns, b.patterns, atol=1e-4)
    assert torch.allclose(a.norms, b.norms, atol=1e-2) and torch.equal(a.reached, b.reached)
    assert a.masks.min() >= 0 and a.masks.max() <= 1  # pixel space, valid masks


def test_reversed_triggers_are_shared_through_the_cache(tiny_model, tmp_path, monkeypatch):
    """Detection and the nc- mitigations of one model reverse-engineer once; a changed parameter, model or
    clean set, or an unreadable cache file, reverse-engineers again."""
    model, ds = tiny_model
    params = {"steps": 8, "batch_size": 8, "n_samples": 48, "check_every": 4, "patience": 1}
    runs = []
    real = NeuralCleanse._reverse
    monkeypatch.setattr(NeuralCleanse, "_reverse", lambda self, m, c: runs.append(1) or real(self, m, c))
    fresh = NeuralCleanse(**params).reverse(model, ds)
    verdict = NeuralCleanse(cache_dir=tmp_path, **params).inspect(model, ds)
    (cached,) = tmp_path.glob("triggers-*.safetensors")
    assert len(runs) == 2 and verdict.details["norms"] == pytest.approx(fresh.norms.tolist())
    repaired = MITIGATIONS.create("nc-pruning", detector={"cache_dir": str(tmp_path), **params}).repair(model, ds)
    assert len(runs) == 2 and repaired.info["label"] == int(fresh.norms.argmin())  # the cached triggers were used
    again = NeuralCleanse(cache_dir=tmp_path, **params).reverse(model, ds)
    assert len(runs) == 2 and all(torch.equal(getattr(again, f), getattr(fresh, f))
                                  for f in ("masks", "patterns", "norms", "success", "reached"))
    NeuralCleanse(cache_dir=tmp_path, **(params | {"steps": 9})).reverse(model, ds)
    NeuralCleanse(cache_dir=tmp_path, **params).reverse(model, ds.subset(torch.arange(90)))
    assert len(runs) == 4 and len(list(tmp_path.glob("triggers-*.safetensors"))) == 3
    cached.write_bytes(b"not safetensors")
    assert torch.equal(NeuralCleanse(cache_dir=tmp_path, **params).reverse(model, ds).masks, fresh.masks)
    assert len(runs) == 5


def test_neural_cleanse_parameters_are_validated():
    with pytest.raises(ConfigError, match="success_threshold"):
        NeuralCleanse(success_threshold=0)
    with pytest.raises(ConfigError, match="cost_multiplier"):
        NeuralCleanse(cost_multiplier=1.0)


def test_strip_superimpose_and_entropy():
    x, o = torch.full((2, 1, 3, 3), 0.7), torch.full((5, 1, 3, 3), 0.6)
    s = superimpose(x, o)
    assert s.shape == (10, 1, 3, 3) and torch.all(s == 1.0)  # saturating sum, like cv2.addWeighted(1, 1)
    assert torch.allclose(superimpose(x, o, "blend", 0.5), torch.full((10, 1, 3, 3), 0.65))
    assert prediction_entropy(torch.zeros(1, 8)).item() == pytest.approx(3.0)  # uniform over 8: 3 bits
    assert prediction_entropy(torch.tensor([[100.0, 0, 0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_strip_flags_an_input_that_dominates_every_blend():
    class Bright(nn.Module):  # predicts class 0 whenever the corner pixel is lit, else by overall brightness
        def forward(self, x):
            corner = x[:, 0, -1, -1]
            mean = x.mean(dim=(1, 2, 3))
            return torch.stack([20 * corner, 5 * mean, 5 * (1 - mean), 2.5 + 0 * mean], 1)

    ds = tiny_dataset(200)
    clean = Dataset(ds.info, ds.images.clone(), ds.labels)
    clean.images[:, :, -1, -1] = 0
    det = Strip(n_overlays=20, frr=0.05, n_fit=100).fit(Bright(), clean)
    x = clean.float_images()[:10]
    trig = x.clone()
    trig[:, :, -1, -1] = 1.0
    assert det.flag(trig).all() and det.score(trig).min() > det.score(x).max()
    assert float(det.flag(clean.float_images()[120:]).double().mean()) <= 0.2


def test_spectral_scores_find_a_planted_direction():
    g = torch.Generator().manual_seed(0)
    reps = torch.randn(200, 16, generator=g)
    reps[:20] += 6 * torch.nn.functional.normalize(torch.ones(16), dim=0)  # 10% shifted along one direction
    top = spectral_scores(reps).argsort(descending=True)[:30]
    assert set(range(20)) <= set(top.tolist())


def test_spectral_filter_removes_one_and_a_half_epsilon_per_class():
    info = DatasetInfo("vec", 2, (1, 4, 4), ("a", "b"), (0.5,), (0.5,))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(200, 1, 4, 4, generator=g) * 0.5
    labels = torch.arange(200) % 2
    poison = torch.zeros(200, dtype=torch.bool)
    poison[torch.nonzero(labels == 0).flatten()[:10]] = True
    images[poison, :, -2:, -2:] = 1.0  # a corner patch: a strong shared direction in class 0
    ds = Dataset(info, images, labels)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))  # representations = the pixels
    flt = SpectralSignatures(epsilon=0.1)
    flagged = flt.flag(model, ds)
    assert int(flagged[labels == 0].sum()) == 15 and int(flagged[labels == 1].sum()) == 15
    assert bool(flagged[poison].all())
    assert penultimate_features(model, ds.images).shape == (200, 16)


def test_sentinet_region_and_grad_cam(tiny_model):
    model, ds = tiny_model
    heat = grad_cam(model, ds.float_images()[:5])
    assert heat.shape == (5, 12, 12) and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    mask = top_region(heat, 0.1)
    assert mask.shape == (5, 1, 12, 12) and torch.all(mask.sum(dim=(1, 2, 3)) == round(0.1 * 144))
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_penultimate_features_are_the_last_linear_inputs_and_leave_the_model_as_it_was():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    x = torch.rand(7, 1, 4, 4)
    feats = penultimate_features(model, x, batch_size=3)
    with torch.no_grad():
        expected = torch.relu(model[1](x.flatten(1)))  # eval mode: dropout is off
    assert torch.allclose(feats, expected, atol=1e-6)
    assert model.training and all(not m._forward_pre_hooks for m in model.modules())


def test_reversed_triggers_are_drawn_by_the_reporting_layer(tmp_path):
    from backdoor_arena import report
    from backdoor_arena.defenses import neural_cleanse

    assert not hasattr(neural_cleanse, "plot_reversed")
    masks, patterns = torch.rand(3, 1, 6, 6), torch.rand(3, 3, 6, 6)
    path = report.plot_reversed_triggers(tmp_path / "f" / "rev.png", masks, patterns, masks.sum(dim=(1, 2, 3)),
                                         ["a", "b", "c"], flagged_label=1)
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
