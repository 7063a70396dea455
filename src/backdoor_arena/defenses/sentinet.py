"""SentiNet (Chou, Tramèr and Pellegrino, 2020): a localised trigger is the most salient region of the
input, and that region alone hijacks the prediction of any image it is pasted onto.

The salient region comes from the model and the input alone, never from the attack. For each input:
Grad-CAM (Selvaraju et al.) on the last convolution for the predicted class gives a heat map; the region
is every pixel whose upsampled map reaches `mask_threshold` times the map's own maximum (SentiNet's mask:
the Grad-CAM map thresholded relative to its peak, so its size follows the model's attention, not a pixel
count). The default 0.15 is Grad-CAM's own localisation threshold (15% of the maximum intensity). With
`proposals` > 0, the regions that also explain that many runner-up classes are removed from it, as in the
paper's mask generation with class proposals (mask_y minus mask_yp); when nothing is left, the predicted
class's region is kept. Off by default: on the tuning model (4x4 white square) the runner-up's map covers
the trigger too and the subtraction cut it away (docs/sentinet-sweep.md).

The region is transplanted onto `n_clean` clean images: the *fooled rate* is the fraction then predicted as
the input's class. An inert pattern (uniform noise) in the same region gives the *average confidence* the
model keeps in its predictions on those images. Clean inputs land low in the (confidence, fooled) plane;
the decision boundary is learned from clean inputs: per confidence bin, the (1 - frr) quantile of the clean
fooled rates (made non-decreasing and interpolated). score = fooled - boundary(confidence); the threshold
is the larger of 0 and the score that rejects at most `frr` of those clean inputs.

Simplifications (documented in docs/detection.md): class proposals are the model's runner-up classes on
the whole input (the paper proposes classes with selective-search segments), and the paper's fitted curve is
replaced by the binned quantile boundary above. SentiNet is designed for localised triggers; a trigger
spread over the whole image (a blend) has no small salient region to transplant.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..detection_metrics import threshold_at_frr
from ..errors import ConfigError
from ..nn_tools import capture_activations, last_conv, model_copy
from . import INPUT_DETECTORS
from .base import check_clean_set


def grad_cams(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM heat maps [B, K, H, W] on the last convolution for each input's K `classes` [B, K] (default:
    the predicted class, K = 1), each map upsampled to the input's size and divided by its own maximum (a map
    with no positive evidence is 0). The model runs in eval mode; its mode is restored."""
    _name, conv = last_conv(model)
    maps = []
    with capture_activations(model, conv) as acts, torch.enable_grad():
        logits = model(x)
        if classes is None:
            classes = logits.argmax(1, keepdim=True)
        a = acts[-1]
        for k in range(classes.shape[1]):
            score = logits.gather(1, classes[:, k : k + 1]).sum()
            grads = torch.autograd.grad(score, a, retain_graph=k + 1 < classes.shape[1])[0]
            weights = grads.mean(dim=(2, 3), keepdim=True)
            maps.append(torch.relu((weights * a).sum(1, keepdim=True)).detach())
    cam = nn.functional.interpolate(torch.cat(maps, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(2).max(2).values.clamp_min(1e-12)
    return cam / peak[:, :, None, None]


def grad_cam(model: nn.Module, x: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
    """Grad-CAM heat maps [B, H, W] in [0, 1] on the last convolution, for `classes` (default: predicted)."""
    return grad_cams(model, x, None if classes is None else classes[:, None])[:, 0]


def threshold_region(heat: torch.Tensor, threshold: float) -> torch.Tensor:
    """Binary masks [B, 1, H, W]: the pixels of each max-normalised heat map [B, H, W] at or above `threshold`
    (relative to the map's maximum); an all-zero map gives an empty mask."""
    peak = heat.flatten(1).max(1).values[:, None, None]
    return ((heat >= threshold * peak) & (peak > 0)).to(heat.dtype)[:, None]


def top_region(heat: torch.Tensor, fraction: float) -> torch.Tensor:
    """Binary masks [B, 1, H, W] of the top `fraction` of pixels of each heat map (ties broken by index).
    Kept for comparison: a fixed pixel count is a size chosen in advance, which SentiNet no longer uses."""
    b, h, w = heat.shape
    k = max(1, round(fraction * h * w))
    idx = heat.flatten(1).topk(k, dim=1).indices
    mask = torch.zeros(b, h * w)
    mask.scatter_(1, idx, 1.0)
    return mask.view(b, 1, h, w)


def _is_count(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


@INPUT_DETECTORS.register("sentinet")
class SentiNet:
    """Input detector: fit(model, clean) learns the boundary; score(x) -> distance beyond it."""

    example_params: ClassVar[dict[str, Any]] = {"n_clean": 8, "n_fit": 30, "chunk": 7}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"mask_threshold": 0.0}, "mask_threshold"), ({"mask_threshold": 1.5}, "mask_threshold"),
        ({"proposals": -1}, "proposals"), ({"frr": 1.0}, "frr"), ({"bins": 0}, "bins"), ({"n_clean": -1}, "n_clean"))
    param_help: ClassVar[dict[str, str]] = {
        "mask_threshold": "The salient region: pixels whose Grad-CAM value is at least this fraction of the map's "
                          "maximum, in (0, 1].",
        "proposals": "Runner-up classes whose own salient regions are removed from the region (paper's class "
                     "proposals); 0 keeps the predicted class's region whole.",
        "n_clean": "Clean images the region is pasted onto.",
        "frr": "False-rejection rate on clean inputs at which the boundary is set, in (0, 1).",
        "bins": "Confidence bins of the decision boundary.",
        "n_fit": "Clean inputs used to learn the boundary.",
        "chunk": "Inputs per batch.",
        "seed": "Seed of the carrier images and the inert noise pattern.",
    }

    def __init__(self, mask_threshold: float = 0.15, proposals: int = 0, n_clean: int = 50, frr: float = 0.01,
                 bins: int = 10, n_fit: int = 500, chunk: int = 50, seed: int = 0) -> None:
        problems = []
        for name, v in (("n_clean", n_clean), ("bins", bins), ("n_fit", n_fit), ("chunk", chunk)):
            if not _is_count(v, 1):
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not _is_count(proposals, 0):
            problems.append(f"proposals must be a non-negative integer (runner-up classes), got {proposals!r}")
        if (not isinstance(mask_threshold, (int, float)) or isinstance(mask_threshold, bool)
                or not 0 < mask_threshold <= 1):
            problems.append(f"mask_threshold must be in (0, 1] (a fraction of the Grad-CAM maximum), got "
                            f"{mask_threshold!r}")
        if not isinstance(frr, (int, float)) or not 0 < frr < 1:
            problems.append(f"frr must be in (0, 1), got {frr!r}")
        if problems:
            raise ConfigError("sentinet: " + "; ".join(problems))
        self.mask_threshold, self.proposals = float(mask_threshold), proposals
        self.n_clean, self.frr, self.bins = n_clean, float(frr), bins
        self.n_fit, self.chunk, self.seed = n_fit, chunk, int(seed)
        self.model: nn.Module | None = None
        self.carriers: torch.Tensor | None = None
        self.noise: torch.Tensor | None = None
        self.boundary: torch.Tensor | None = None
        self.threshold = 0.0
        self.clean_points: torch.Tensor | None = None
        self.clean_scores: torch.Tensor | None = None

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
        # interpolating between bins may reject more than frr of the clean inputs: never more
        self.clean_scores = pts[:, 1] - self.boundary_at(pts[:, 0])
        self.threshold = max(0.0, threshold_at_frr(self.clean_scores, self.frr))
        return self

    def regions(self, x: torch.Tensor) -> torch.Tensor:
        """The salient region [B, 1, H, W] of each input, from the model alone: the predicted class's Grad-CAM
        thresholded at `mask_threshold` of its maximum, less the regions of the `proposals` runner-up classes."""
        if self.model is None:
            raise ConfigError("sentinet: call fit(model, clean) before scoring inputs")
        x = check_clean_set(self.model, x, "sentinet")
        with torch.no_grad():
            logits = self.model(x)
        return self._regions(x, logits)

    def _regions(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        k = min(self.proposals, logits.shape[1] - 1)
        pred = logits.argmax(1, keepdim=True)
        runners_up = logits.scatter(1, pred, float("-inf")).topk(k, dim=1).indices
        ranked = torch.cat([pred, runners_up], 1)  # the predicted class first
        heat = grad_cams(self.model, x, ranked)  # [B, 1 + k, H, W]
        own = threshold_region(heat[:, 0], self.mask_threshold)
        if k == 0:
            return own
        others = torch.stack([threshold_region(heat[:, j], self.mask_threshold) for j in range(1, k + 1)]).amax(0)
        unique = own * (1 - others)
        empty = unique.flatten(1).sum(1) == 0
        return torch.where(empty[:, None, None, None], own, unique)

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
                logits = self.model(batch)
            pred = logits.argmax(1)
            m = self._regions(batch, logits)[:, None]  # [b, 1, 1, H, W]
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
        return {k: getattr(self, k) for k in ("mask_threshold", "proposals", "n_clean", "frr", "bins", "n_fit",
                                              "chunk", "seed")}
