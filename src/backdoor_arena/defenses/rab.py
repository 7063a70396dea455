"""RAB (Weber, Xu, Karlaš, Zhang, Li; IEEE S&P 2023): certified robustness to training-set perturbation.

Smoothing over the training set: N models are trained, each on its own copy of the (possibly poisoned)
training set with Gaussian noise N(0, sigma^2 I) drawn once per example and model; at test time every
model adds its own fixed noise vector to the input, and the ensemble averages the models' softmax
probabilities (as the authors' code does). The smoothed classifier is thus a function of the training set
and the test input jointly smoothed with Gaussian noise, and the Gaussian smoothing bound (the paper's
theorem, of the same form as Cohen et al.'s) certifies its prediction c_A:

    R = sigma / 2 * (Phi^-1(p_A) - Phi^-1(p_B))

where p_A is a lower confidence bound of the top class's probability and p_B an upper bound of the
runner-up's. No backdoor whose perturbation has l2 norm below R (the triggers added to the training
examples and to the test input, concatenated into one vector) can change the prediction. The bounds hold
with probability 1 - alpha over the ensemble's noise draws:

- `hoeffding` (the authors' code): p_A = p^_A - sqrt(ln(1/alpha) / 2N), p_B = p^_B + the same, on the
  averaged soft probabilities;
- `clopper-pearson` (Cohen et al.'s estimator): the exact one-sided lower bound of the top class's share of
  the N hard votes, and p_B = 1 - p_A.

The math is pure functions over tensors (`hoeffding_bounds`, `clopper_pearson_bounds`, `certified_radius`,
`certified_accuracy`); `RAB` is the registered robust trainer: `RAB(...).fit(dataset) -> SmoothedModels`,
whose `certify(x)` gives every input's prediction and radius. Its conformance certificate (`epsilon`,
`delta`) is the largest radius any input can be certified for with this ensemble and bound (unanimous
votes), at failure probability alpha: a small ensemble certifies little, whatever the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..detection_metrics import clopper_pearson_interval
from ..errors import ConfigError
from ..train import OPTIMIZERS, TrainConfig, create_model, fit
from . import ROBUST_TRAINERS
from .base import check_clean_set

BOUNDS = ("hoeffding", "clopper-pearson")


# -- the math --------------------------------------------------------------------------------------------

def certified_radius(p_a: torch.Tensor | float, p_b: torch.Tensor | float, sigma: float) -> torch.Tensor:
    """sigma / 2 * (Phi^-1(p_A) - Phi^-1(p_B)) per element, and 0 where p_A <= p_B (nothing certified).
    Probabilities are clamped to [0, 1] first (a Hoeffding bound can leave it): p_A = 1 gives an infinite
    radius, p_B = 0 likewise."""
    pa = torch.as_tensor(p_a, dtype=torch.float64).clamp(0, 1)
    pb = torch.as_tensor(p_b, dtype=torch.float64).clamp(0, 1)
    gap = torch.special.ndtri(pa) - torch.special.ndtri(pb)
    radius = sigma / 2 * gap
    return torch.where(pa > pb, radius, torch.zeros_like(radius))


def hoeffding_bounds(pa_hat: torch.Tensor, pb_hat: torch.Tensor, n: int, alpha: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower bound of p_A, upper bound of p_B) from the averaged probabilities of n models: Hoeffding's
    margin sqrt(ln(1/alpha) / 2n) below and above (the authors' code)."""
    margin = math.sqrt(math.log(1 / alpha) / (2 * n))
    pa = torch.as_tensor(pa_hat, dtype=torch.float64)
    pb = torch.as_tensor(pb_hat, dtype=torch.float64)
    return (pa - margin).clamp(0, 1), (pb + margin).clamp(0, 1)


def clopper_pearson_bounds(votes_a: torch.Tensor, n: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower bound of p_A, p_B = 1 - p_A) from the top class's count of n hard votes: the exact one-sided
    Clopper-Pearson bound at level 1 - alpha (Cohen et al. 2019)."""
    votes = torch.as_tensor(votes_a, dtype=torch.int64)
    table = torch.tensor([clopper_pearson_interval(k, n, 1 - 2 * alpha)[0] for k in range(n + 1)],
                         dtype=torch.float64)  # one bisection per possible count, not per input
    pa = table[votes]
    return pa, 1 - pa


def certified_accuracy(radii: torch.Tensor, correct: torch.Tensor, thresholds: list[float] | torch.Tensor
                       ) -> torch.Tensor:
    """For each threshold r: the fraction of inputs predicted correctly with a certified radius > r (at r = 0:
    correct and certified at all). Non-increasing in r by construction."""
    radii = torch.as_tensor(radii, dtype=torch.float64)
    correct = torch.as_tensor(correct, dtype=torch.bool)
    if radii.shape != correct.shape or radii.ndim != 1 or len(radii) == 0:
        raise ConfigError(f"certified_accuracy needs equal-length non-empty vectors, got {tuple(radii.shape)} "
                          f"radii and {tuple(correct.shape)} correctness flags")
    r = torch.as_tensor(thresholds, dtype=torch.float64).view(-1, 1)
    return ((radii.view(1, -1) > r) & correct.view(1, -1)).double().mean(1)


def radius_cap(sigma: float, n: int, alpha: float, bound: str) -> float:
    """The largest radius any input can be certified for: every model votes (or puts all its probability
    on) the same class."""
    if bound == "hoeffding":
        pa, pb = hoeffding_bounds(torch.tensor(1.0), torch.tensor(0.0), n, alpha)
    else:
        pa, pb = clopper_pearson_bounds(torch.tensor(n), n, alpha)
    return float(certified_radius(pa, pb, sigma))


# -- the smoothed ensemble -------------------------------------------------------------------------------

class NoisyEnsemble(nn.Module):
    """N models, each with its own fixed test-time noise (a persistent buffer, so that it travels with the
    weights); forward returns the log of the mean softmax, so argmax is the smoothed prediction."""

    def __init__(self, members: list[nn.Module], test_noise: torch.Tensor) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("test_noise", test_noise)

    def member_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """[N, B, K] softmax of every member on its own noisy copy of x."""
        return torch.stack([torch.softmax(m(x + self.test_noise[i]), 1) for i, m in enumerate(self.members)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member_probabilities(x).mean(0).clamp_min(1e-12).log()


@dataclass(frozen=True)
class Certification:
    """Per input: the smoothed prediction, the bounds and the certified radius (0: not certified)."""

    prediction: torch.Tensor  # int64 [B]
    p_a: torch.Tensor  # float64 [B], lower bound of the top class's probability
    p_b: torch.Tensor  # float64 [B], upper bound of the runner-up's
    radius: torch.Tensor  # float64 [B]


@dataclass(frozen=True, eq=False)
class SmoothedModels:
    """A robust trainer's output: the ensemble (an nn.Module in eval mode), its smoothing, and how it
    certifies. `epsilon`/`delta` are the conformance certificate: the radius cap and alpha."""

    model: NoisyEnsemble
    sigma: float
    alpha: float
    bound: str
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def n_models(self) -> int:
        return len(self.model.members)

    @property
    def epsilon(self) -> float:
        return radius_cap(self.sigma, self.n_models, self.alpha, self.bound)

    @property
    def delta(self) -> float:
        return self.alpha

    def certify(self, x: torch.Tensor | Dataset, batch_size: int = 500) -> Certification:
        images = check_clean_set(self.model, x, "rab")
        probs = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                probs.append(self.model.member_probabilities(images[i : i + batch_size]).double())
        member = torch.cat(probs, 1)  # [N, B, K]
        n = member.shape[0]
        if self.bound == "hoeffding":
            top2 = member.mean(0).topk(2, dim=1)
            prediction = top2.indices[:, 0]
            p_a, p_b = hoeffding_bounds(top2.values[:, 0], top2.values[:, 1], n, self.alpha)
        else:
            votes = torch.nn.functional.one_hot(member.argmax(2), member.shape[2]).sum(0)  # [B, K]
            prediction = votes.argmax(1)
            p_a, p_b = clopper_pearson_bounds(votes.max(1).values, n, self.alpha)
        return Certification(prediction, p_a, p_b, certified_radius(p_a, p_b, self.sigma))

    def certified_accuracy(self, data: Dataset, thresholds: list[float]) -> list[dict[str, float]]:
        """The curve: one {radius, certified_accuracy} per threshold, on a labelled set."""
        cert = self.certify(data)
        acc = certified_accuracy(cert.radius, cert.prediction == data.labels, thresholds)
        return [{"radius": float(r), "certified_accuracy": float(a)} for r, a in zip(thresholds, acc, strict=True)]


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@ROBUST_TRAINERS.register("rab")
class RAB:
    """Train N models on Gaussian-noised copies of a (possibly poisoned) dataset; certify training-set
    perturbation radii per input (see the module docstring)."""

    example_params: ClassVar[dict[str, Any]] = {"architecture": "emnist-cnn", "n_models": 4, "sigma": 0.5,
                                                "alpha": 0.2, "bound": "clopper-pearson", "batch_size": 32}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"sigma": 0}, "sigma"), ({"alpha": 1.5}, "alpha"), ({"n_models": 0}, "n_models"),
        ({"bound": "chernoff"}, "bound"), ({"epochs": 0}, "epochs"), ({"architecture": "resnet-9000"}, "unknown model"))
    param_help: ClassVar[dict[str, str]] = {
        "architecture": "The architecture of every model of the ensemble.",
        "n_models": "Models in the ensemble (N): more models, tighter bounds and larger radii.",
        "sigma": "Std of the Gaussian noise added to the training examples (once per example and model) and "
                 "to test inputs, in pixel units ([0, 1] images).",
        "alpha": "Failure probability of the certificate's confidence bounds, in (0, 1).",
        "bound": "hoeffding (on the averaged probabilities, as the authors' code) or clopper-pearson (on the "
                 "hard votes, as Cohen et al.).",
        "epochs": "Training epochs of every model.",
        "batch_size": "Batch size.",
        "optimizer": "sgd or adam.",
        "lr": "Learning rate (cosine schedule).",
        "seed": "Seed of the initialisations, batch orders and noise.",
        "progress": "Show a progress bar per model.",
    }

    def __init__(self, architecture: str = "badnet-mnist", *, n_models: int = 20, sigma: float = 1.0,
                 alpha: float = 0.001, bound: str = "hoeffding", epochs: int = 1, batch_size: int = 64,
                 optimizer: str = "adam", lr: float = 1e-3, seed: int = 0, progress: bool = False) -> None:
        from ..models import MODELS

        MODELS.get(architecture)
        problems = []
        if not _positive_int(n_models):
            problems.append(f"n_models must be a positive integer, got {n_models!r}")
        if not (isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma)
                and sigma > 0):
            problems.append(f"sigma must be a positive noise std (pixel units), got {sigma!r}")
        if not (isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and 0 < alpha < 1):
            problems.append(f"alpha must be a failure probability in (0, 1), got {alpha!r}")
        if bound not in BOUNDS:
            problems.append(f"bound must be one of {', '.join(BOUNDS)}, got {bound!r}")
        if optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if problems:
            raise ConfigError("rab: " + "; ".join(problems))
        self.architecture, self.n_models, self.sigma = architecture, n_models, float(sigma)
        self.alpha, self.bound = float(alpha), bound
        self.config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, seed=seed,
                                  progress=progress)

    def params(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "n_models": self.n_models, "sigma": self.sigma,
                "alpha": self.alpha, "bound": self.bound, **self.config.to_dict()}

    def fit(self, dataset: Dataset) -> SmoothedModels:
        if len(dataset) < 2:
            raise ConfigError(f"rab: the training set has {len(dataset)} examples; it needs at least 2")
        clean = to_float(dataset.images)
        members, test_noise, history = [], [], []
        for i in range(self.n_models):
            seed = self.config.seed * 100_003 + i
            g = torch.Generator().manual_seed(seed)
            # the noise is drawn once per example and model, and stays fixed through the epochs
            noisy = Dataset(dataset.info, clean + self.sigma * torch.randn(clean.shape, generator=g), dataset.labels)
            model, _ = create_model(self.architecture, dataset.info, seed)
            config = TrainConfig(**{**self.config.to_dict(), "seed": seed, "progress": self.config.progress})
            h = fit(model, noisy, config, description=f"rab model {i + 1}/{self.n_models}")
            model.eval()
            members.append(model)
            test_noise.append(self.sigma * torch.randn(clean.shape[1:], generator=g))
            history.append({"model": i, **h.epochs[-1]})
        ensemble = NoisyEnsemble(members, torch.stack(test_noise)).eval()
        return SmoothedModels(ensemble, self.sigma, self.alpha, self.bound, history)
