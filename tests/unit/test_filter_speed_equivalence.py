"""The fast paths of Activation Clustering and Spectral Signatures (the traced feature pass, subspace
iteration for the top principal axes, batched 2-means restarts, clustering the whitened projections that
FastICA rotates) pinned against slow straightforward references: full eigendecompositions, one restart at
a time, the eager model, clustering FastICA's own components. On a BadNets model trained here (2,000 MNIST
training images, 10% poisoned, one epoch: about 2 s on one core) and on data made in the test."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from backdoor_arena.attacks import make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.defenses import activation_clustering as ac
from backdoor_arena.defenses import spectral as sp
from backdoor_arena.nn_tools import penultimate_features
from backdoor_arena.train import TrainConfig, create_model, fit


@pytest.fixture(scope="module")
def poisoned(data_root):
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(2000))
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="square",
                      trigger_options={"size": 4}, target=7, poison_rate=0.1, seed=0)
    p = atk.poison(train, torch.Generator().manual_seed(0))
    model, _ = create_model("badnet-mnist", train.info, seed=0)
    fit(model, p.dataset, TrainConfig(epochs=1, progress=False, seed=0))
    return model.eval(), p.dataset


# --------------------------------------------------------------------------- the slow references
def reference_two_means(z: torch.Tensor, seed: int = 0, n_init: int = 10, max_iter: int = 300):
    """The former implementation: one restart at a time, cdist and boolean-mask means."""
    g = torch.Generator().manual_seed(seed)
    best = None
    for _ in range(n_init):
        first = z[torch.randint(len(z), (1,), generator=g)]
        d2 = ((z - first) ** 2).sum(1)
        second = z[torch.multinomial(d2, 1, generator=g)] if float(d2.sum()) > 0 else first
        centroids = torch.cat([first, second])
        for _ in range(max_iter):
            assign = torch.cdist(z, centroids).argmin(1)
            moved = torch.stack([z[assign == k].mean(0) if (assign == k).any() else centroids[k] for k in (0, 1)])
            done = torch.equal(moved, centroids)
            centroids = moved
            if done:
                break
        assign = torch.cdist(z, centroids).argmin(1)
        inertia = float(((z - centroids[assign]) ** 2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign, centroids)
    return best[1], best[2]


def reference_cluster_class(acts: torch.Tensor, n_dims: int, method: str, seed: int):
    """The former per-class analysis: FastICA's components (full eigendecomposition for the whitening)
    clustered by the one-restart-at-a-time 2-means."""
    n = len(acts)
    k = min(n_dims, acts.shape[1], n - 1)
    x = acts.double()
    z = ac.pca(x, k) if method == "pca" else ac.fast_ica(x, k, seed)
    assign, centroids = reference_two_means(z, seed)
    sizes = torch.bincount(assign, minlength=2)
    small = int(sizes.argmin())
    r = float(sizes[small]) / n
    s = ac.silhouette(z, assign)
    d = torch.cdist(z, centroids)
    membership = d[:, 1 - small] / (d[:, small] + d[:, 1 - small]).clamp_min(1e-12)
    return max(s, 0.0) * (1 - 2 * r) * membership, assign == small, r, s


def reference_spectral(reps: torch.Tensor, centred: bool = True) -> torch.Tensor:
    r = reps.double()
    c = r - r.mean(0)
    v = torch.linalg.svd(c, full_matrices=False).Vh[0]
    return ((c if centred else r) @ v) ** 2


# --------------------------------------------------------------------------- pure functions
@pytest.mark.parametrize("shape,k", [((600, 120), 1), ((600, 120), 10), ((40, 200), 3), ((300, 12), 10)])
def test_principal_axes_equal_the_svd(shape, k):
    g = torch.Generator().manual_seed(0)
    # a decaying spectrum, as penultimate features have
    x = torch.randn(*shape, generator=g, dtype=torch.float64) * torch.logspace(0, -2, shape[1], dtype=torch.float64)
    c = x - x.mean(0)
    axes, s = ac.principal_axes(c, k)
    _, s_ref, vh = torch.linalg.svd(c, full_matrices=False)
    assert torch.allclose(s, s_ref[:k], rtol=1e-9)
    # the same directions, each up to its sign
    assert torch.allclose((axes * vh[:k].T).sum(0).abs(), torch.ones(k, dtype=torch.float64), atol=1e-8)


def test_top_eigenpairs_fall_back_to_the_full_decomposition_when_the_iteration_is_slow():
    g = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(100, 100, generator=g, dtype=torch.float64))
    evals = torch.linspace(1.0, 0.99, 100, dtype=torch.float64)  # l_2 / l_1 = 0.9999: six steps get nowhere
    sym = q @ torch.diag(evals) @ q.T
    got, vec = ac.top_eigenpairs(sym, 1, max_iter=6)
    assert torch.allclose(got, evals[:1], rtol=1e-12)
    assert float((vec[:, 0] @ q[:, 0]).abs()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_two_means_ends_where_each_restart_would_alone(seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.randn(400, 5, generator=g), torch.randn(60, 5, generator=g) * 0.7 + 1.5]).double()
    assign, centroids = ac.two_means(z, seed=seed)
    ref_assign, ref_centroids = reference_two_means(z, seed=seed)
    assert torch.equal(assign, ref_assign)
    assert torch.allclose(centroids, ref_centroids, rtol=1e-12, atol=1e-12)


def test_two_means_keeps_an_emptied_cluster_and_handles_identical_points():
    z = torch.zeros(10, 3, dtype=torch.float64)
    assign, centroids = ac.two_means(z)
    assert torch.equal(assign, torch.zeros(10, dtype=torch.long)) and torch.isfinite(centroids).all()


def test_clustering_the_whitened_projections_is_clustering_fastica_components(poisoned):
    model, data = poisoned
    acts = penultimate_features(model, data.images, 500)
    for c in (7, 3):  # the poisoned class and a clean one
        sel = data.labels == c
        got = ac.cluster_class(acts[sel], 10, "ica", 0)
        want = reference_cluster_class(acts[sel], 10, "ica", 0)
        assert torch.equal(got[1], want[1])
        assert got[2] == want[2] and got[3] == pytest.approx(want[3], abs=1e-9)
        assert torch.allclose(got[0], want[0], rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------- the filters end to end
def test_traced_features_equal_the_eager_model_and_leave_it_as_it_was(poisoned):
    model, data = poisoned
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = penultimate_features(model, data.images[:300], 128, optimise=True)
    eager = penultimate_features(model, data.images[:300], 128)
    assert torch.allclose(fast, eager, rtol=1e-5, atol=1e-5)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    model.eval()


class _Branchy(nn.Module):
    """A model whose computation depends on the data: a trace records one branch only."""

    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x.flatten(1))
        h = h * 2 if float(x.mean()) > 0.5 else -h
        return self.head(h)


def test_traced_features_fall_back_to_the_eager_model_where_the_trace_would_be_wrong():
    x = torch.cat([torch.zeros(20, 1, 2, 2), torch.ones(20, 1, 2, 2)])  # traced on the dark, checked on the bright
    model = _Branchy().eval()
    assert torch.equal(penultimate_features(model, x, 8, optimise=True), penultimate_features(model, x, 8))


def test_activation_clustering_equals_the_slow_reference(poisoned, monkeypatch):
    model, data = poisoned
    flt = ac.ActivationClustering()
    fast = flt.analyse(model, data)
    fast_flags = flt.flag(model, data, flt.score(model, data))
    monkeypatch.setattr(ac, "cluster_class", reference_cluster_class)
    monkeypatch.setattr(ac, "penultimate_features", lambda net, x, bs, optimise: penultimate_features(net, x, bs))
    slow = flt.analyse(model, data)
    slow_flags = ac.ActivationClustering().flag(model, data)
    assert torch.equal(fast_flags, slow_flags) and fast_flags.any()
    assert torch.equal(fast.in_smaller, slow.in_smaller)
    assert fast.relative_size == slow.relative_size
    assert all(fast.silhouette[c] == pytest.approx(slow.silhouette[c], abs=1e-6) for c in slow.silhouette)
    assert torch.allclose(fast.scores, slow.scores, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("projection", ["centred", "uncentred"])
def test_spectral_equals_the_slow_reference(poisoned, monkeypatch, projection):
    model, data = poisoned
    flt = sp.SpectralSignatures(projection=projection)
    fast = flt.score(model, data)
    monkeypatch.setattr(sp, "spectral_scores", reference_spectral)
    monkeypatch.setattr(sp, "penultimate_features", lambda net, x, bs, optimise: penultimate_features(net, x, bs))
    slow = flt.score(model, data)
    assert torch.allclose(fast, slow, rtol=1e-4, atol=1e-6)
    assert torch.equal(flt.flag(model, data, fast), flt.flag(model, data, slow))
