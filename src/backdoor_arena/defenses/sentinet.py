"""SentiNet (Chou, Tramèr and Pellegrino, 2020): a localised trigger is the most salient region of the
input, and that region alone hijacks the prediction of any image it is pasted onto.

For each input: Grad-CAM (Selvaraju et al.) on the last convolution for the predicted class gives a
heat map; the salient region is its top `region_fraction` of pixels. The region is transplanted onto
`n_clean` clean images: the *fooled rate* is the fraction then predicted as the input's class. An inert
pattern (uniform noise) in the same region gives the *average confidence* the model keeps in its
predictions on those images. Clean inputs land low in the (confidence, fooled) plane; the decision
boundary is learned from clean inputs: per confidence bin, the (1 - frr) quantile of the clean fooled
rates (made non-decreasing and interpolated). score = fooled - boundary(confidence), flagged when > 0.

Simplification (documented in docs/detection.md): the paper's class proposals and its fitted curve are
replaced by the predicted class only and the binned quantile boundary above.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..nn_tools import capture_activations, last_conv, model_copy
from . import INPUT_DETECTORS
from .base import check_clean_set


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM heat maps [B, H, W] in [0, 1] on the last convolution, for `classes` (default: predicted)."""
    _name, conv = last_conv(model)
    with capture_activations(model, conv) as acts, torch.enable_grad():
        logits = model(x)
        if classes is None:
            classes = logits.argmax(1)
        a = acts[-1]
        grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), a)[0]
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)
    return cam / peak[:, None, None]


def top_region(heat: torch.Tensor, fraction: float) -> torch.Tensor:
    """Binary masks [B, 1, H, W] of the top `fraction` of pixels of each heat map (ties broken by index)."""
    b, h, w = heat.shape
    k = max(1, round(fraction * h * w))
    idx = heat.flatten(1).topk(k, dim=1).indices
    mask = torch.zeros(b, h * w)
    mask.scatter_(1, idx, 1.0)
    return mask.view(b, 1, h, w)


@INPUT_DETECTORS.register("sentinet")
class SentiNet:
    """Input detector: fit(model, clean) learns the boundary; score(x) -> distance beyond it."""

    example_params: ClassVar[dict[str, Any]] = {"n_clean": 8, "n_fit": 30, "chunk": 7}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"region_fraction": 0.0}, "region_fraction"), ({"frr": 1.0}, "frr"), ({"bins": 0}, "bins"),
        ({"n_clean": -1}, "n_clean"))
    param_help: ClassVar[dict[str, str]] = {
        "region_fraction": "Fraction of the pixels (the most salient by Grad-CAM) taken as the input's region.",
        "n_clean": "Clean images the region is pasted onto.",
        "frr": "False-rejection rate on clean inputs at which the boundary is set, in (0, 1).",
        "bins": "Confidence bins of the decision boundary.",
        "n_fit": "Clean inputs used to learn the boundary.",
        "chunk": "Inputs per batch.",
        "seed": "Seed of the carrier images and the inert noise pattern.",
    }

    def __init__(self, region_fraction: float = 0.06, n_clean: int = 50, frr: float = 0.01, bins: int = 10,
                 n_fit: int = 500, chunk: int = 50, seed: int = 0) -> None:
        problems = []
        for name, v in (("n_clean", n_clean), ("bins", bins), ("n_fit", n_fit), ("chunk", chunk)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(region_fraction, (int, float)) or not 0 < region_fraction < 1:
            problems.append(f"region_fraction must be in (0, 1), got {region_fraction!r}")
        if not isinstance(frr, (int, float)) or not 0 < frr < 1:
            problems.append(f"frr must be in (0, 1), got {frr!r}")
        if problems:
            raise ConfigError("sentinet: " + "; ".join(problems))
        self.region_fraction, self.n_clean, self.frr, self.bins = float(region_fraction), n_clean, float(frr), bins
        self.n_fit, self.chunk, self.seed = n_fit, chunk, int(seed)
        self.model: nn.Module | None = None
        self.carriers: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None
        self.boundary: torch.Tensor | None = None
        self.threshold = 0.0
        self.clean_points: torch.Tensor | None = None

    def fit(self, model: nn.Module, clean: Dataset) -> SentiNet:
        net = model_copy(model)
        x = check_clean_set(net, clean, "sentinet")
        if len(x) < self.n_clean + 10:
            raise ConfigError(f"sentinet: the clean set has {len(x)} images; it needs at least n_clean + 10 = "
                              f"{self.n_clean + 10}")
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(x), generator=g)
        self.model, self.carriers = net, x[order[: self.n_clean]]
        self.noise = torch.rand(self.n_clean, *x.shape[1:], generator=g)
        pts = self.points(x[order[self.n_clean :][: self.n_fit]])
        self.clean_points = pts
        edges = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)
        q = torch.zeros(self.bins, dtype=torch.float64)
        for b in range(self.bins):
            sel = (pts[:, 0] >= edges[b]) & ((pts[:, 0] < edges[b + 1]) | (b == self.bins - 1))
            q[b] = torch.quantile(pts[sel, 1], 1 - self.frr) if sel.any() else float("nan")
        # empty bins borrow from their neighbours; the boundary may not fall as confidence rises
        filled = torch.where(torch.isnan(q), torch.tensor(float("-inf"), dtype=torch.float64), q)
        self.boundary = torch.cummax(filled, 0).values.clamp_min(float(pts[:, 1].min()))
        return self

    def points(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 2]: (average confidence on the inert pattern, fooled rate) of each input."""
        if self.model is None or self.carriers is None or self.noise is None:
            raise ConfigError("sentinet: call fit(model, clean) before scoring inputs")
        x = check_clean_set(self.model, x, "sentinet")
        out = []
        n = self.n_clean
        for i in range(0, len(x), self.chunk):
            batch = x[i : i + self.chunk]
            with torch.no_grad():
                pred = self.model(batch).argmax(1)
            mask = top_region(grad_cam(self.model, batch, pred), self.region_fraction)  # [b, 1, H, W]
            m = mask[:, None]  # [b, 1, 1, H, W]
            pasted = (1 - m) * self.carriers[None] + m * batch[:, None]
            inert = (1 - m) * self.carriers[None] + m * self.noise[None]
            with torch.no_grad():
                p_pasted = self.model(pasted.flatten(0, 1)).argmax(1).view(len(batch), n)
                conf = torch.softmax(self.model(inert.flatten(0, 1)), 1).max(1).values.view(len(batch), n)
            fooled = (p_pasted == pred[:, None]).double().mean(1)
            out.append(torch.stack([conf.double().mean(1), fooled], 1))
        return torch.cat(out)

    def boundary_at(self, confidence: torch.Tensor) -> torch.Tensor:
        if self.boundary is None:
            raise ConfigError("sentinet: call fit(model, clean) before scoring inputs")
        centres = (torch.arange(self.bins, dtype=torch.float64) + 0.5) / self.bins
        pos = (confidence.double() - centres[0]) * self.bins
        lo = pos.floor().clamp(0, self.bins - 1).long()
        hi = (lo + 1).clamp(max=self.bins - 1)
        t = (pos - lo.double()).clamp(0, 1)
        return self.boundary[lo] * (1 - t) + self.boundary[hi] * t

    def score(self, x: torch.Tensor) -> torch.Tensor:
        pts = self.points(x)
        return pts[:, 1] - self.boundary_at(pts[:, 0])

    def flag(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(x) > self.threshold

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("region_fraction", "n_clean", "frr", "bins", "n_fit", "chunk", "seed")}
