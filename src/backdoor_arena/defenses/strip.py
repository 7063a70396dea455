"""STRIP (Gao et al., ACSAC 2019): superimpose an input with N clean images; a trojaned input keeps
predicting the target whatever it is mixed with, so the mean entropy of its predictions is low.

All N overlays of a chunk of inputs go through the model in one batched forward pass. How many inputs
a chunk holds is measured, not fixed ("auto"): a pass of a few hundred images often runs twice as fast
per image as a pass of thousands on a CPU (cache size), and where the best size lies depends on the
machine, the model and the thread count. `PassSizes` times a few pass sizes on the actual model and keeps
the fastest per (architecture, image shape, device, threads); the detector holds one (or the caller
passes one to share between detectors). Inputs do not interact in eval mode, so the scores do not depend
on the chunking (to float rounding). Superimposition
follows the authors' script (cv2.addWeighted(x, 1, overlay, 1, 0): a saturating pixel sum) by default,
or a linear blend with weight `alpha`. The threshold is set on clean inputs (disjoint from the overlay
pool) at the chosen false-rejection rate: empirically (the clean quantile) or, as in the paper, from a
normal distribution fitted to the clean entropies.

Scores are suspicion = -entropy (higher = more suspicious), so AUROC is computed on them directly.
"""

from __future__ import annotations

import time
from statistics import NormalDist
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..detection_metrics import threshold_at_frr
from ..errors import ConfigError
from ..nn_tools import model_copy
from . import INPUT_DETECTORS
from .base import check_clean_set

MODES = ("add", "blend")
THRESHOLDS = ("empirical", "normal")
AUTO = "auto"


def superimpose(x: torch.Tensor, overlays: torch.Tensor, mode: str = "add", alpha: float = 0.5) -> torch.Tensor:
    """Every input [B, C, H, W] with every overlay [N, C, H, W]: [B * N, C, H, W], input-major."""
    a, o = x[:, None], overlays[None]
    out = (a + o).clamp(0, 1) if mode == "add" else (1 - alpha) * a + alpha * o
    return out.reshape(-1, *x.shape[1:])


def prediction_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of the softmax of each row."""
    logp = torch.log_softmax(logits.double(), dim=1)
    return -(logp.exp() * logp).sum(1) / torch.log(torch.tensor(2.0, dtype=torch.float64))


# --------------------------------------------------------------------------- pass sizing
class PassSizes:
    """Forward-pass throughput (images/s) measured on the actual model at a few pass sizes, kept per
    (architecture, image shape, device, threads), so that a model is timed once however many detectors
    and calls use it. `chunk_for` picks the inputs per pass (each input with all its overlays)."""

    past_peak = 0.8  # stop timing larger passes once one runs below this fraction of the best rate so far

    def __init__(self, max_images: int = 4096, repeats: int = 2) -> None:
        if not isinstance(max_images, int) or max_images < 1 or not isinstance(repeats, int) or repeats < 1:
            raise ConfigError(f"strip: PassSizes needs positive integers, got max_images={max_images!r}, "
                              f"repeats={repeats!r}")
        self.max_images, self.repeats = max_images, repeats
        self.rates: dict[tuple[Any, ...], dict[int, float]] = {}  # key -> {images per pass: images/s}

    @staticmethod
    def key(model: nn.Module, image_shape: tuple[int, ...]) -> tuple[Any, ...]:
        """What throughput depends on: the layers (not the weights), the image shape, the device, the threads."""
        params = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters())
        device = next((str(p.device) for p in model.parameters()), "cpu")
        return type(model).__qualname__, params, tuple(image_shape), device, torch.get_num_threads()

    def candidates(self, n_inputs: int, n_overlays: int) -> list[int]:
        """Chunks (inputs per pass) worth timing: powers of two up to the work and to max_images per pass."""
        out, c = [], 1
        while c <= n_inputs and (c == 1 or c * n_overlays <= self.max_images):
            out.append(c)
            c *= 2
        return out

    def chunk_for(self, model: nn.Module, images: torch.Tensor, n_inputs: int) -> int:
        """Inputs per pass for `n_inputs` inputs, each forwarded with the `images` [N, C, H, W] overlays."""
        n_overlays = len(images)
        chunks = self.candidates(n_inputs, n_overlays)
        if len(chunks) == 1:
            return chunks[0]
        rates = self.rates.setdefault(self.key(model, tuple(images.shape[1:])), {})
        for i, c in enumerate(chunks):
            if c * n_overlays not in rates:
                rates[c * n_overlays] = self._measure(model, images, c)
            if rates[c * n_overlays] < self.past_peak * max(rates[k * n_overlays] for k in chunks[: i + 1]):
                # throughput falls off past a cache-size peak: the larger passes are not worth timing
                rates.update({k * n_overlays: 0.0 for k in chunks[i + 1 :] if k * n_overlays not in rates})
                break
        return max(chunks, key=lambda c: rates[c * n_overlays])

    def _measure(self, model: nn.Module, images: torch.Tensor, copies: int) -> float:
        x = images.repeat(copies, *([1] * (images.ndim - 1)))
        best = float("inf")
        with torch.no_grad():
            model(x)  # warm-up: allocator and first-call costs
            for _ in range(self.repeats):
                started = time.perf_counter()
                model(x)
                best = min(best, time.perf_counter() - started)
        return len(x) / max(best, 1e-9)


@INPUT_DETECTORS.register("strip")
class Strip:
    """Input detector: fit(model, clean) then score(x) -> -mean entropy; flags score > threshold."""

    example_params: ClassVar[dict[str, Any]] = {"n_overlays": 8, "n_fit": 30, "chunk": 7}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"frr": 1.5}, "frr"), ({"n_overlays": 0}, "n_overlays"), ({"mode": "mix"}, "mode"),
        ({"alpha": 1.0}, "alpha"), ({"threshold_method": "otsu"}, "threshold_method"), ({"chunk": "fast"}, "chunk"))
    param_help: ClassVar[dict[str, str]] = {
        "n_overlays": "Clean images superimposed on each input.",
        "frr": "False-rejection rate on clean inputs at which the threshold is set, in (0, 1).",
        "mode": "Superimposition: add (saturating pixel sum, as the authors) or blend (weight alpha).",
        "alpha": "Weight of the overlay in blend mode, in (0, 1).",
        "threshold_method": "empirical (clean quantile) or normal (fitted to the clean entropies, as the paper).",
        "n_fit": "Clean inputs used to set the threshold.",
        "chunk": "Inputs per batched forward pass (each with all its overlays), or auto: the fastest, measured.",
        "seed": "Seed of the overlay draw.",
    }

    def __init__(self, n_overlays: int = 100, frr: float = 0.01, mode: str = "add", alpha: float = 0.5,
                 threshold_method: str = "empirical", n_fit: int = 1000, chunk: int | str = AUTO, seed: int = 0) -> None:
        problems = []
        for name, v in (("n_overlays", n_overlays), ("n_fit", n_fit), ("chunk", chunk)):
            if name == "chunk" and v == AUTO:
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer{' or auto' if name == 'chunk' else ''}, got {v!r}")
        if not isinstance(frr, (int, float)) or not 0 < frr < 1:
            problems.append(f"frr must be in (0, 1), got {frr!r}")
        if mode not in MODES:
            problems.append(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
            problems.append(f"alpha must be in (0, 1), got {alpha!r}")
        if threshold_method not in THRESHOLDS:
            problems.append(f"threshold_method must be one of {', '.join(THRESHOLDS)}, got {threshold_method!r}")
        if problems:
            raise ConfigError("strip: " + "; ".join(problems))
        self.n_overlays, self.frr, self.mode, self.alpha = n_overlays, float(frr), mode, float(alpha)
        self.threshold_method, self.n_fit, self.chunk, self.seed = threshold_method, n_fit, chunk, int(seed)
        self.model: nn.Module | None = None
        self.overlays: torch.Tensor | None = None
        self.threshold: float | None = None
        self.clean_scores: torch.Tensor | None = None
        # measured pass sizes; assign one shared PassSizes to time a model once for many detectors
        self.pass_sizes = PassSizes()

    def fit(self, model: nn.Module, clean: Dataset) -> Strip:
        net = model_copy(model)
        x = check_clean_set(net, clean, "strip")
        if len(x) < self.n_overlays + 10:
            raise ConfigError(f"strip: the clean set has {len(x)} images; it needs at least n_overlays + 10 = "
                              f"{self.n_overlays + 10} (overlays, plus clean inputs to set the threshold)")
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        self.model, self.overlays = net, x[order[: self.n_overlays]]
        fit_x = x[order[self.n_overlays :][: self.n_fit]]
        self.clean_scores = self.score(fit_x)
        if self.threshold_method == "normal":
            ent = -self.clean_scores
            dist = NormalDist(float(ent.mean()), max(float(ent.std()), 1e-12))
            self.threshold = -dist.inv_cdf(self.frr)  # entropy below the frr quantile of the fit -> flagged
        else:
            self.threshold = threshold_at_frr(self.clean_scores, self.frr)
        return self

    def entropy(self, x: torch.Tensor) -> torch.Tensor:
        """Mean entropy over the N superimposed copies of each input (the paper's H)."""
        if self.model is None or self.overlays is None:
            raise ConfigError("strip: call fit(model, clean) before scoring inputs")
        x = check_clean_set(self.model, x, "strip")
        chunk = self.pass_sizes.chunk_for(self.model, self.overlays, len(x)) if self.chunk == AUTO else self.chunk
        out = []
        with torch.no_grad():
            for i in range(0, len(x), chunk):
                batch = x[i : i + chunk]
                logits = self.model(superimpose(batch, self.overlays, self.mode, self.alpha))
                out.append(prediction_entropy(logits).view(len(batch), -1).mean(1))
        return torch.cat(out)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return -self.entropy(x)

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        if self.threshold is None:
            raise ConfigError("strip: call fit(model, clean) before flagging inputs")
        return self.score(x) > self.threshold

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("n_overlays", "frr", "mode", "alpha", "threshold_method", "n_fit",
                                              "chunk", "seed")}


def images_of(data: Dataset | torch.Tensor) -> torch.Tensor:
    return to_float(data.images if isinstance(data, Dataset) else data)
