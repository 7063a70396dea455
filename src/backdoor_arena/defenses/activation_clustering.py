"""Activation Clustering (Chen et al., 2018, arXiv:1811.03728): poisoned samples of a class reach the
class through the trigger, not through the class's own features, so the last hidden layer's activations
of the class split in two clusters, one of them small.

Per class (the samples' labels, as the paper, or the model's predictions): activations of the last hidden
layer (the input of the last Linear layer), reduced to 10 independent components (ICA, the paper; PCA as
an option), clustered by 2-means (on the whitened projections that the independent components only
rotate: the same clusters and scores, see `_clustering_space`). Two of the paper's analyses give the
class's evidence: the relative size r of the smaller cluster (poison makes it about the poisoned
fraction, clean classes split about evenly) and the silhouette score s of the 2-clustering (two
clusters fit poisoned classes well: the paper finds s >= .15 on poisoned classes, <= .11 on clean ones).
Exclusionary reclassification (retraining without each cluster) is not done here.

Per-sample suspicion, continuous so that AUROC is computed on it:
  evidence(class) = max(s, 0) * (1 - 2 r)                    in [0, 1): well separated and lopsided
  membership(i)   = d_big / (d_small + d_big)                in [0, 1]: > 1/2 in the smaller cluster
  score(i)        = evidence(class of i) * membership(i)
flag(): the smaller cluster of every class with r <= max_size and s >= silhouette_threshold (the rule of
ART's silhouette analysis). The paper suggests a silhouette threshold of .10 to .15 and saw >= .15 on its
poisoned classes; the default is .15 because briefly trained MNIST models give clean classes up to ~.13.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..metrics import predict
from ..nn_tools import model_copy, penultimate_features
from . import DATA_FILTERS
from .base import check_clean_set

REDUCTIONS = ("ica", "pca")
SEGMENTS = ("label", "prediction")


# --------------------------------------------------------------------------- pure functions
def principal_axes_exact(centred: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k right singular vectors [D, k] of centred data [n, D] and their singular values [k], from the
    full eigendecomposition of the smaller Gram matrix (D x D or n x n): about 3x faster than a full SVD."""
    n, d = centred.shape
    if d <= n:
        evals, evecs = torch.linalg.eigh(centred.T @ centred)
        evals, axes = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    else:
        evals, evecs = torch.linalg.eigh(centred @ centred.T)
        evals, u = evals.flip(0)[:k], evecs.flip(1)[:, :k]
        axes = centred.T @ u / evals.clamp_min(1e-300).sqrt()
    return axes, evals.clamp_min(0).sqrt()


def top_eigenpairs(sym: torch.Tensor, k: int, tol: float = 1e-9, max_iter: int = 90) -> tuple[torch.Tensor,
                                                                                           torch.Tensor]:
    """The k largest eigenvalues [k] (descending) and their eigenvectors [m, k] of a symmetric positive
    semi-definite matrix [m, m] (each vector's sign is arbitrary). Where k is small against m: subspace
    iteration on k + 8 vectors with Rayleigh-Ritz (Saad 2011, ch. 5), stopped when every residual
    |S v - l v| is below tol x l_1, so that the vectors equal the full eigendecomposition's to about
    tol / (relative eigengap): 2-4x faster than it at m = 512, k = 1 to 10. The full eigendecomposition
    where that is as cheap or the iteration has not converged in max_iter steps (a near-degenerate k-th
    value). The start is seeded: deterministic."""
    m = len(sym)
    q = min(m, k + 8)
    if 3 * q < m:
        g = torch.Generator().manual_seed(0)
        basis = torch.linalg.qr(sym @ torch.randn(m, q, generator=g, dtype=sym.dtype)).Q
        for step in range(max_iter):
            image = sym @ basis  # [m, q]
            if step % 3 != 2:  # the Rayleigh-Ritz check costs as much as a step: every third step
                basis = torch.linalg.qr(image).Q
                continue
            evals, evecs = torch.linalg.eigh(basis.T @ image)  # Rayleigh-Ritz on the subspace
            evals, evecs = evals.flip(0), evecs.flip(1)
            ritz, image = basis @ evecs, image @ evecs
            residual = (image[:, :k] - ritz[:, :k] * evals[:k]).norm(dim=0)
            if float(residual.max()) <= tol * max(float(evals[0]), 1e-300):
                return evals[:k], ritz[:, :k]
            basis = torch.linalg.qr(image).Q
    evals, evecs = torch.linalg.eigh(sym)
    return evals.flip(0)[:k], evecs.flip(1)[:, :k]


def principal_axes(centred: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top k right singular vectors [D, k] of centred data [n, D] and their singular values [k], from the
    top eigenpairs of the smaller Gram matrix (D x D or n x n): several times faster than a full SVD.
    Each vector's sign is arbitrary (as an SVD's)."""
    n, d = centred.shape
    if d <= n:
        evals, axes = top_eigenpairs(centred.T @ centred, k)
    else:
        evals, u = top_eigenpairs(centred @ centred.T, k)
        axes = centred.T @ u / evals.clamp_min(1e-300).sqrt()
    return axes, evals.clamp_min(0).sqrt()


def pca(x: torch.Tensor, k: int) -> torch.Tensor:
    """Projections [n, k] of the rows of x on its top k principal directions."""
    centred = x - x.mean(0, keepdim=True)
    return centred @ principal_axes(centred, k)[0]


def _sym_decorrelate(w: torch.Tensor) -> torch.Tensor:
    """(W W^T)^(-1/2) W: the rows of W made orthonormal, symmetrically (none favoured)."""
    evals, evecs = torch.linalg.eigh(w @ w.T)
    return (evecs * evals.clamp_min(1e-12).rsqrt()) @ (evecs.T @ w)


def whiten(x: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of x [n, D] projected on their top k principal directions and scaled to unit variance
    ([n, k'], k' <= k: a rank-deficient x has fewer directions): PCA whitening, FastICA's first step."""
    n = len(x)
    centred = x - x.mean(0, keepdim=True)
    axes, s = principal_axes(centred, k)
    k = min(k, int((s > s[0] * 1e-6).sum()))
    return centred @ (axes[:, :k] / s[:k]) * n**0.5  # identity covariance


def fast_ica(x: torch.Tensor, k: int, seed: int = 0, max_iter: int = 1000, tol: float = 0.005) -> torch.Tensor:
    """Independent components [n, k] of the rows of x: FastICA (Hyvarinen 1999), the parallel algorithm with
    the logcosh contrast on PCA-whitened data (unit-variance sources), as scikit-learn's FastICA defaults
    (ART's tolerance and iteration cap); in torch, so that one small problem per class costs milliseconds.
    The unmixing W it finds is orthogonal: the components are the whitened data rotated (an isometry)."""
    n = len(x)
    white = whiten(x, k)  # [n, k]
    k = white.shape[1]
    white_t = white.T.contiguous()
    g = torch.Generator().manual_seed(seed)
    w = _sym_decorrelate(torch.randn(k, k, generator=g, dtype=x.dtype))
    for _ in range(max_iter):
        gwx = torch.tanh(w @ white_t)  # [k, n]
        w_new = _sym_decorrelate(gwx @ white / n - (1 - gwx * gwx).mean(1, keepdim=True) * w)
        converged = float(((w_new * w).sum(1).abs() - 1).abs().max()) < tol
        w = w_new
        if converged:
            break
    return white @ w.T


def reduce_dims(acts: torch.Tensor, n_dims: int, method: str = "ica", seed: int = 0) -> torch.Tensor:
    """Activations [n, D] reduced to at most min(n_dims, D, n - 1) components (FastICA or PCA)."""
    k = min(n_dims, acts.shape[1], len(acts) - 1)
    x = acts.double()
    return pca(x, k) if method == "pca" else fast_ica(x, k, seed)


def _nearer_second(z_t: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """[R, n] bool: point i (column i of z_t [d, n]) is strictly nearer centroid 1 than centroid 0 of restart
    r ([R, 2, d]): z . (c1 - c0) > (c1 + c0) . (c1 - c0) / 2. Ties go to centroid 0 (argmin's first)."""
    c0, c1 = centroids.unbind(1)
    direction = c1 - c0
    return direction @ z_t > ((c1 + c0) * direction).sum(1, keepdim=True) * 0.5


def two_means(z: torch.Tensor, seed: int = 0, n_init: int = 10, max_iter: int = 300) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """2-means: cluster of each row [n] and centroids [2, d]. Lloyd's iterations from k-means++ starts
    (Arthur and Vassilvitskii 2007), `n_init` seeded restarts, the lowest inertia kept (as scikit-learn's
    KMeans, without its per-call overhead, which dominates at this size). The restarts' starts are drawn
    one after another from the seeded generator, then all restarts iterate together as one batch: a
    restart that has converged is a fixed point of the step, so each ends where it would alone."""
    g = torch.Generator().manual_seed(seed)
    starts = []
    for _ in range(n_init):
        first = z[torch.randint(len(z), (1,), generator=g)]
        d2 = ((z - first) ** 2).sum(1)
        second = z[torch.multinomial(d2, 1, generator=g)] if float(d2.sum()) > 0 else first
        starts.append(torch.cat([first, second]))
    centroids = torch.stack(starts)  # [restarts, 2, d]
    n, total, z_t = len(z), z.sum(0), z.T
    for _ in range(max_iter):
        in_second = _nearer_second(z_t, centroids).to(z.dtype)  # [R, n]
        count = in_second.sum(1, keepdim=True)  # [R, 1]
        sum_second = in_second @ z  # [R, d]
        moved = torch.stack(((total - sum_second) / (n - count), sum_second / count), 1)
        moved = torch.where(moved.isfinite(), moved, centroids)  # an emptied cluster (0 / 0) keeps its centroid
        done = torch.equal(moved, centroids)
        centroids = moved
        if done:
            break
    assign = _nearer_second(z_t, centroids).long()  # [R, n]
    inertia = ((z - centroids.gather(1, assign[..., None].expand(-1, -1, z.shape[1]))) ** 2).sum((1, 2))
    best = int(inertia.argmin())  # the first of equal inertias, as a sequential strict-less scan
    return assign[best], centroids[best]


def silhouette(z: torch.Tensor, assign: torch.Tensor, block: int = 1024) -> float:
    """Mean silhouette of a 2-clustering (Euclidean; the definition of sklearn.metrics.silhouette_score),
    computed exactly in blocks of rows so that memory stays [block, n]."""
    sizes = torch.bincount(assign, minlength=2).double()
    if (sizes < 1).any():
        return 0.0
    onehot = torch.nn.functional.one_hot(assign, 2).double()
    values = []
    for i in range(0, len(z), block):
        sums = torch.cdist(z[i : i + block], z) @ onehot  # [b, 2]: summed distance to each cluster
        own = assign[i : i + block]
        own_size = sizes[own]
        a = sums.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp_min(1)
        b = sums.gather(1, (1 - own)[:, None]).squeeze(1) / sizes[1 - own]
        s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
        values.append(torch.where(own_size > 1, s, torch.zeros_like(s)))
    return float(torch.cat(values).mean())


@dataclass(frozen=True)
class Clusters:
    """The analysis of one data set: per sample, per class (indexed by class id)."""

    scores: torch.Tensor  # [N] float64 suspicion
    groups: torch.Tensor  # [N] the class each sample was clustered in (label or prediction)
    in_smaller: torch.Tensor  # [N] bool: in its class's smaller cluster
    relative_size: dict[int, float]  # smaller cluster's share of the class
    silhouette: dict[int, float]


def _clustering_space(acts: torch.Tensor, n_dims: int, method: str) -> torch.Tensor:
    """The coordinates 2-means works in: for "ica", the whitened projections that FastICA rotates into its
    components. FastICA's unmixing is orthogonal, so the components are an isometry of these; 2-means,
    silhouettes and centroid distances depend only on distances between points, so clustering either gives
    the same clusters and scores (to rounding; test_filter_speed_equivalence pins it), and the unmixing
    iteration, a third of the analysis's time, is skipped. "pca": the unwhitened principal components."""
    k = min(n_dims, acts.shape[1], len(acts) - 1)
    x = varying_columns(acts).double()
    return pca(x, k) if method == "pca" else whiten(x, k)


def varying_columns(x: torch.Tensor) -> torch.Tensor:
    """x [n, D] without its constant columns (ReLU units that never fire on these samples): they centre to
    zero, so no principal direction or projection involves them, and the Gram matrices shrink (~20%
    fewer columns on the MNIST models here)."""
    varying = x.amax(0) > x.amin(0)
    return x if bool(varying.all()) or not bool(varying.any()) else x[:, varying]


def cluster_class(acts: torch.Tensor, n_dims: int, method: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, float,
                                                                                      float]:
    """One class: (suspicion [n], in the smaller cluster [n], relative size, silhouette)."""
    n = len(acts)
    if n < 4 or min(n_dims, acts.shape[1]) < 1:  # too few samples to split in two and reduce
        return torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool), 0.5, 0.0
    z = _clustering_space(acts, n_dims, method)
    assign, centroids = two_means(z, seed)
    sizes = torch.bincount(assign, minlength=2)
    small = int(sizes.argmin())
    r = float(sizes[small]) / n
    s = silhouette(z, assign)
    d = torch.cdist(z, centroids)  # [n, 2]
    membership = d[:, 1 - small] / (d[:, small] + d[:, 1 - small]).clamp_min(1e-12)
    evidence = max(s, 0.0) * (1 - 2 * r)
    return evidence * membership, assign == small, r, s


# --------------------------------------------------------------------------- the filter
@DATA_FILTERS.register("activation-clustering")
class ActivationClustering:
    """Data filter. score(model, dataset): per-sample suspicion (see the module docstring); flag(): the
    smaller cluster of each class that is both small (r <= max_size) and well separated (silhouette)."""

    example_params: ClassVar[dict[str, Any]] = {"reduce": "pca"}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"n_dims": 0}, "n_dims"), ({"reduce": "tsne"}, "reduce"), ({"max_size": 0.7}, "max_size"),
        ({"silhouette_threshold": 2}, "silhouette_threshold"), ({"segment": "cluster"}, "segment"),
        ({"batch_size": 0}, "batch_size"))
    param_help: ClassVar[dict[str, str]] = {
        "n_dims": "Components the activations are reduced to before clustering (the paper: 10).",
        "reduce": "Dimensionality reduction: ica (FastICA, the paper) or pca.",
        "max_size": "The smaller cluster is flagged only if it holds at most this share of its class, in (0, 0.5].",
        "silhouette_threshold": "...and only if the class's silhouette score is at least this, in [-1, 1).",
        "segment": "Cluster per class of label (the samples' labels, the paper) or of prediction (the model's).",
        "batch_size": "Images per forward pass when computing activations.",
        "seed": "Seed of the ICA and 2-means initialisations.",
    }

    def __init__(self, n_dims: int = 10, reduce: str = "ica", max_size: float = 0.35,
                 silhouette_threshold: float = 0.15, segment: str = "label", batch_size: int = 128,
                 seed: int = 0) -> None:
        problems = []
        for name, v in (("n_dims", n_dims), ("batch_size", batch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if reduce not in REDUCTIONS:
            problems.append(f"reduce must be one of {', '.join(REDUCTIONS)}, got {reduce!r}")
        if not isinstance(max_size, (int, float)) or not 0 < max_size <= 0.5:
            problems.append(f"max_size (largest share of a class a poisoned cluster may hold) must be in (0, 0.5], "
                            f"got {max_size!r}")
        if not isinstance(silhouette_threshold, (int, float)) or not -1 <= silhouette_threshold < 1:
            problems.append(f"silhouette_threshold must be in [-1, 1), got {silhouette_threshold!r}")
        if segment not in SEGMENTS:
            problems.append(f"segment must be one of {', '.join(SEGMENTS)}, got {segment!r}")
        if problems:
            raise ConfigError("activation-clustering: " + "; ".join(problems))
        self.n_dims, self.reduce, self.max_size = n_dims, reduce, float(max_size)
        self.silhouette_threshold, self.segment = float(silhouette_threshold), segment
        self.batch_size, self.seed = batch_size, int(seed)
        self._last: tuple[torch.Tensor, Clusters] | None = None  # flag() reuses score()'s clustering

    def analyse(self, model: nn.Module, dataset: Dataset) -> Clusters:
        net = model_copy(model)
        check_clean_set(net, dataset.images[:1], "activation-clustering")
        acts = penultimate_features(net, dataset.images, self.batch_size, optimise=True)
        groups = predict(net, dataset.images, self.batch_size) if self.segment == "prediction" else dataset.labels
        scores = torch.zeros(len(dataset), dtype=torch.float64)
        in_smaller = torch.zeros(len(dataset), dtype=torch.bool)
        sizes, sils = {}, {}
        # each class's samples in one contiguous block, in their original order (one gather, no mask per class)
        order = torch.argsort(groups, stable=True)
        classes, counts = torch.unique_consecutive(groups[order], return_counts=True)
        for c, idx in zip(classes.tolist(), torch.split(order, counts.tolist()), strict=True):
            scores[idx], in_smaller[idx], sizes[c], sils[c] = cluster_class(acts[idx], self.n_dims, self.reduce,
                                                                            self.seed)
        return Clusters(scores, groups, in_smaller, sizes, sils)

    def score(self, model: nn.Module, dataset: Dataset) -> torch.Tensor:
        result = self.analyse(model, dataset)
        self._last = (result.scores, result)
        return result.scores

    def flag(self, model: nn.Module, dataset: Dataset, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean [N]: the samples to remove."""
        if scores is not None and self._last is not None and scores is self._last[0]:
            result = self._last[1]
        else:
            result = self.analyse(model, dataset)
        flagged = torch.zeros(len(dataset), dtype=torch.bool)
        for c, r in result.relative_size.items():
            if r <= self.max_size and result.silhouette[c] >= self.silhouette_threshold:
                flagged |= (result.groups == c) & result.in_smaller
        return flagged

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_dims", "reduce", "max_size", "silhouette_threshold", "segment",
                                              "batch_size", "seed")}
