"""Activation Clustering, Spectral Signatures' uncentred projection and STRIP's measured pass sizes, on a
BadNets model trained here (6,000 MNIST training images, 5% poisoned with a 4x4 square to label 7, one
epoch: a few seconds on one core), and their pure functions on data made in the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backdoor_arena.attacks import make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.defenses.activation_clustering import ActivationClustering, fast_ica, silhouette, two_means
from backdoor_arena.defenses.spectral import SpectralSignatures, spectral_scores
from backdoor_arena.defenses.strip import PassSizes, Strip
from backdoor_arena.detection_metrics import auroc, precision_recall
from backdoor_arena.errors import ArenaError, ConfigError, IncompatibleError
from backdoor_arena.metrics import predict
from backdoor_arena.train import TrainConfig, create_model, fit

TARGET = 7


@pytest.fixture(scope="module")
def poisoned(data_root):
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(6000))
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="square",
                      trigger_options={"size": 4}, target=TARGET, poison_rate=0.05, seed=0)
    p = atk.poison(train, torch.Generator().manual_seed(0))
    model, _ = create_model("badnet-mnist", train.info, seed=0)
    fit(model, p.dataset, TrainConfig(epochs=1, progress=False))
    return model.eval(), p.dataset, p.poisoned_mask, atk


# --------------------------------------------------------------------------- Activation Clustering
def test_activation_clustering_ranks_and_flags_the_poisons(poisoned):
    model, data, truth, _ = poisoned
    flt = ActivationClustering()
    scores = flt.score(model, data)
    flagged = flt.flag(model, data, scores)
    assert auroc(truth.long(), scores) > 0.95  # chance: 0.5
    precision, recall = precision_recall(flagged, truth)
    # 300 poisons in a class of 951; chance would give precision 0.05
    assert precision > 0.8 and recall > 0.5
    assert not flagged[data.labels != TARGET].any(), "clean classes split about evenly: none is flagged"
    # flag() without score()'s tensor clusters again, to the same verdict
    assert torch.equal(ActivationClustering().flag(model, data), flagged)


def test_activation_clustering_with_pca_and_per_predicted_class(poisoned):
    model, data, truth, _ = poisoned
    assert auroc(truth.long(), ActivationClustering(reduce="pca").score(model, data)) > 0.9
    # one epoch leaves the trigger mostly unlearnt (the poisons are predicted as their true digits), so
    # per predicted class they are spread over ten classes: the grouping must be the model's predictions
    by_prediction = ActivationClustering(segment="prediction").analyse(model, data)
    assert torch.equal(by_prediction.groups, predict(model, data.images))
    assert not torch.equal(by_prediction.groups, data.labels)


def test_fast_ica_recovers_independent_sources():
    g = torch.Generator().manual_seed(0)
    sources = torch.cat([torch.rand(2000, 3, generator=g) * 2 - 1, torch.randn(2000, 3, generator=g) ** 3], 1)
    mixed = sources.double() @ torch.randn(6, 40, generator=g).double()
    z = fast_ica(mixed, 6, seed=0)
    corr = np.abs(np.corrcoef(np.concatenate([z.numpy(), sources.double().numpy()], 1).T)[:6, 6:])
    assert (corr.max(1) > 0.99).all() and sorted(corr.argmax(1).tolist()) == list(range(6))
    assert torch.allclose(z.std(0), torch.ones(6, dtype=torch.float64), atol=0.01)  # unit-variance sources


def test_silhouette_matches_scikit_learn():
    from sklearn.metrics import silhouette_score

    g = torch.Generator().manual_seed(1)
    z = torch.cat([torch.randn(300, 4, generator=g), torch.randn(40, 4, generator=g) + 3]).double()
    assign, _ = two_means(z)
    assert sorted(torch.bincount(assign).tolist()) == [40, 300]
    ours = silhouette(z, assign, block=64)  # several blocks
    assert ours == pytest.approx(silhouette_score(z.numpy(), assign.numpy()), abs=1e-9)


def test_activation_clustering_tiny_class_scores_zero_not_an_error(poisoned):
    model, data, _, _ = poisoned
    keep = torch.cat([torch.nonzero(data.labels != 3).flatten()[:200], torch.nonzero(data.labels == 3).flatten()[:3]])
    sub = data.subset(keep)
    scores = ActivationClustering().score(model, sub)
    assert (scores[sub.labels == 3] == 0).all() and torch.isfinite(scores).all()


# --------------------------------------------------------------------------- Spectral Signatures
def test_uncentred_spectral_is_the_released_code_formula_and_differs_from_centred(poisoned):
    model, data, truth, _ = poisoned
    g = torch.Generator().manual_seed(0)
    reps = torch.randn(200, 16, generator=g).double() + 2.0
    r = reps.numpy()
    _, _, vh = np.linalg.svd(r - r.mean(0), full_matrices=False)
    # ART's spectral_signature_scores / the authors' code: centred SVD direction, uncentred projection
    assert np.allclose(spectral_scores(reps, centred=False).numpy(), (r @ vh[0]) ** 2)
    assert np.allclose(spectral_scores(reps).numpy(), ((r - r.mean(0)) @ vh[0]) ** 2)
    centred = SpectralSignatures().score(model, data)
    uncentred = SpectralSignatures(projection="uncentred").score(model, data)
    assert uncentred.shape == centred.shape and torch.isfinite(uncentred).all()
    assert not torch.allclose(centred, uncentred)
    assert (SpectralSignatures(projection="uncentred").flag(model, data, uncentred)
            != SpectralSignatures().flag(model, data, centred)).any()


# --------------------------------------------------------------------------- STRIP pass sizes
def test_strip_auto_pass_sizes_give_the_fixed_pass_scores(poisoned):
    model, data, _, atk = poisoned
    clean = data.subset(torch.arange(400))
    x = torch.cat([atk.apply_trigger(data.float_images()[400:440]), data.float_images()[440:480]])
    sizes = PassSizes()
    auto = Strip(n_overlays=50, n_fit=100)
    auto.pass_sizes = sizes
    auto.fit(model, clean)
    for chunk in (1, 20):
        fixed = Strip(n_overlays=50, n_fit=100, chunk=chunk).fit(model, clean)
        assert torch.allclose(auto.score(x), fixed.score(x), rtol=0, atol=1e-9)
        assert fixed.threshold == pytest.approx(auto.threshold, abs=1e-9)
    (rates,) = sizes.rates.values()
    assert {50, 100} <= set(rates) and all(v >= 0 for v in rates.values())


class Counting(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_pass_sizes_pick_the_fastest_measured_and_time_a_model_once(poisoned):
    model, data, _, _ = poisoned
    overlays = data.float_images()[:30]
    sizes = PassSizes(repeats=1)
    net = Counting(model)
    key = sizes.key(net, (1, 28, 28))
    sizes.rates[key] = {30: 100.0, 60: 900.0, 120: 500.0, 240: 50.0}  # as if measured
    assert sizes.chunk_for(net, overlays, 1000) == 2 and net.calls == 0  # nothing left to time
    assert sizes.chunk_for(net, overlays, 1) == 1  # one input: one pass, nothing to choose
    fresh = PassSizes(repeats=1)
    fresh.chunk_for(net, overlays, 8)
    timed = net.calls
    assert timed >= 2  # a warm-up and a timed pass at least
    fresh.chunk_for(net, overlays, 8)
    assert net.calls == timed, "a second call on the same model reuses the measurements"
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(old + 1)
        assert fresh.key(net, (1, 28, 28)) != key  # another thread count is another machine
    finally:
        torch.set_num_threads(old)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, message", [
    (lambda: Strip(chunk="fast"), "chunk must be a positive integer or auto"),
    (lambda: Strip(chunk=0), "chunk"),
    (lambda: SpectralSignatures(projection="raw"), "projection must be one of centred, uncentred"),
    (lambda: ActivationClustering(reduce="tsne"), "reduce must be one of ica, pca"),
    (lambda: ActivationClustering(max_size=0.8), "max_size"),
    (lambda: ActivationClustering(segment="cluster"), "segment must be one of label, prediction"),
    (lambda: PassSizes(max_images=0), "PassSizes"),
])
def test_bad_parameters_are_one_line_config_errors(make, message):
    with pytest.raises(ConfigError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_filters_on_a_model_of_another_dataset_are_one_line_errors(poisoned):
    model, _, _, _ = poisoned
    info = DatasetInfo("rgb", 10, (3, 32, 32), tuple("abcdefghij"), (0.5,) * 3, (0.5,) * 3)
    wrong = Dataset(info, torch.zeros(40, 3, 32, 32, dtype=torch.uint8), torch.arange(40) % 10)
    for flt in (ActivationClustering(), SpectralSignatures(projection="uncentred")):
        with pytest.raises(IncompatibleError) as err:
            flt.score(model, wrong)
        assert "\n" not in str(err.value) and "shape" in str(err.value)
    with pytest.raises(ArenaError) as err:
        Strip(n_overlays=5, n_fit=10).fit(model, wrong)
    assert "\n" not in str(err.value)
