"""ABS, Artificial Brain Stimulation (Liu et al., CCS 2019): a backdoor lives in a few inner neurons that,
once elevated, drive one label whatever the input. Stimulate every neuron of one inner layer on clean
seed images, keep the neurons whose elevation pushes one label for nearly all images, reverse-engineer
for each a trigger that elevates it, and score the model by the best candidate's attack success on
held-out clean images (REASR).

Steps (defaults from the authors' PyTorch TrojAI port, scaled to our small models):
1. Layer: the activation after the last conv layer (the ReLU that follows it in module order, else the
   conv itself); `layer` names another module. A neuron is a channel: stimulating it overwrites the whole
   feature map of that channel with a value v in maxv * `stimulation`, where maxv is the largest activation
   of the layer on the seed images.
2. All neurons and values in ONE pass per chunk: a forward hook on the layer returns the seed images'
   activation repeated for every (neuron, value) with that channel overwritten, so the layers below the
   stimulated one run once and only the rest of the network sees the enlarged batch.
3. Elevation of a label under a neuron = max over values of its logit - its logit unstimulated; per image
   the top label and the margin top - second. A neuron is a candidate when one label is the top label for
   at least `consistency` of the seed images; its value is the smallest margin over the images of other
   true labels whose top label it is. The `top_neurons` best candidates are kept.
4. Trigger per candidate (all candidates in one batched problem, like Neural Cleanse's labels): a mask
   m = (tanh M + 1)/2 and pattern p, x' = (1 - m) x + m p; loss = -act(candidate) + 1e-4 act(others)
   - w logit[label] (w = 1, then 3 in the second half) + mask penalty (50 sum m above `max_mask_fraction`
   of the pixels, 100 sum m above 1.2 times that, else 0.01 sum m: the authors' schedule). The mask used
   for scoring keeps only its largest `max_mask_fraction` pixels, so the bound is enforced, not just urged.
   `trigger="filter"` is the feature-space variant (our reading; the paper's details are unverified): a
   3x3 convolution of the image (identity at start) whose mean absolute change of the pixels is penalised
   above `max_filter_change`.
5. REASR of a candidate: the fraction of held-out clean images (none of the seed images, none of the
   candidate's label) classified as its label once stamped. score = best REASR; flagged above `threshold`
   (the CIFAR release reports triggers with REASR > 0.8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError, IncompatibleError
from ..nn_tools import last_conv, model_copy
from . import MODEL_DETECTORS
from .base import ModelVerdict, check_clean_set
from .neural_cleanse import apply_masks

TRIGGERS = ("pixel", "filter")


# --------------------------------------------------------------------------- pure functions
def default_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The activation after the last conv: the first ReLU after it in module order, else the conv."""
    name, conv = last_conv(model)
    modules = list(model.named_modules())
    names = [n for n, _ in modules]
    for n, m in modules[names.index(name) + 1 :]:
        if isinstance(m, nn.ReLU):
            return n, m
    return name, conv


def find_layer(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    if name is None:
        return default_layer(model)
    modules = dict(model.named_modules())
    if name not in modules:
        convs = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.ReLU))]
        raise IncompatibleError(f"abs: the model has no module {name!r}; conv and ReLU modules: {', '.join(convs)}")
    return name, modules[name]


def stimulated(act: torch.Tensor, neurons: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Activations [N, C, ...] with channel n overwritten by value v, for every (n, v): [len(neurons) *
    len(values) * N, C, ...], neuron-major then value then image."""
    n, c = act.shape[:2]
    r = len(neurons) * len(values)
    out = act[None].expand(r, *act.shape).clone()
    chan = neurons.repeat_interleave(len(values))
    val = values.repeat(len(neurons)).to(act.dtype)
    out[torch.arange(r), :, chan] = val.view(r, 1, *([1] * (act.ndim - 2))).expand(r, n, *act.shape[2:])
    return out.reshape(r * n, c, *act.shape[2:])


def elevation_margins(stim_logits: torch.Tensor, base_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """stim_logits [neurons, values, N, K], base_logits [N, K] -> (top label [neurons, N], margin between
    the top and second label elevation [neurons, N]); elevation = max over values - unstimulated logit."""
    elev = stim_logits.max(dim=1).values - base_logits[None]
    top2 = elev.topk(2, dim=-1)
    return top2.indices[..., 0], top2.values[..., 0] - top2.values[..., 1]


def candidate_neurons(top: torch.Tensor, margin: torch.Tensor, labels: torch.Tensor,
                      consistency: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per neuron: its dominant label, the fraction of images with that top label, and its value (the
    smallest margin over images of another true label whose top label it is; -inf when not a candidate).
    Returns (label, fraction, value, is_candidate), each [neurons]."""
    label = torch.mode(top, dim=1).values
    hit = top == label[:, None]
    fraction = hit.double().mean(1)
    other = hit & (labels[None] != label[:, None])
    value = torch.where(other, margin.double(), torch.tensor(float("inf"), dtype=torch.float64)).min(1).values
    ok = (fraction >= consistency) & other.any(1)
    return label, fraction, torch.where(ok, value, torch.tensor(-float("inf"), dtype=torch.float64)), ok


def mask_penalty(mask: torch.Tensor, bound: float) -> torch.Tensor:
    """The authors' piecewise weight of sum(m), per mask [K, 1, H, W] -> [K]."""
    total = mask.sum(dim=(1, 2, 3))
    nnz = (mask > 0.01).sum(dim=(1, 2, 3))
    weight = torch.where(nnz > 1.2 * bound, 100.0, torch.where(nnz > bound, 50.0, 0.01))
    return weight.to(total.dtype) * total


def bounded(mask: torch.Tensor, bound: int) -> torch.Tensor:
    """Each mask [K, 1, H, W] with all but its `bound` largest pixels zeroed."""
    flat = mask.flatten(1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.topk(min(bound, flat.shape[1]), dim=1).indices, True)
    return (flat * keep).view_as(mask)


def apply_filters(x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Inputs [B, C, H, W] through every filter trigger (kernels [K, C, C, 3, 3], bias [K, C]), clamped to
    pixels: [K * B, C, H, W], filter-major (one grouped convolution)."""
    k, c = kernels.shape[:2]
    out = nn.functional.conv2d(x.repeat(1, k, 1, 1), kernels.reshape(k * c, c, 3, 3), bias.reshape(-1), padding=1,
                               groups=k)
    b, _, h, w = out.shape
    return out.view(b, k, c, h, w).transpose(0, 1).reshape(k * b, c, h, w).clamp(0, 1)


@dataclass(frozen=True, eq=False)
class Stimulation:
    label: torch.Tensor  # [C] dominant label per neuron
    fraction: torch.Tensor  # [C] share of seed images with that top label
    value: torch.Tensor  # [C] elevation-margin value (-inf: not a candidate)
    candidates: torch.Tensor  # [n] the kept neurons, best first
    max_activation: float


# --------------------------------------------------------------------------- the detector
@MODEL_DETECTORS.register("abs")
class ABS:
    """Model detector. score = best REASR of a reverse-engineered candidate trigger; flagged above `threshold`."""

    example_params: ClassVar[dict[str, Any]] = {"n_seed": 20, "n_holdout": 40, "steps": 6, "top_neurons": 2,
                                                "batch_size": 8}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"steps": 0}, "steps"), ({"n_seed": 1}, "n_seed"), ({"consistency": 1.5}, "consistency"),
        ({"stimulation": []}, "stimulation"), ({"trigger": "warp"}, "trigger"), ({"threshold": 2}, "threshold"),
        ({"max_mask_fraction": 0}, "max_mask_fraction"), ({"lr": -1}, "lr"))
    param_help: ClassVar[dict[str, str]] = {
        "layer": "Module name of the stimulated layer (default: the activation after the last conv layer).",
        "stimulation": "Stimulation values as multiples of the layer's largest seed activation.",
        "n_seed": "Clean images stimulated and used to reverse-engineer the triggers.",
        "n_holdout": "Held-out clean images on which REASR is measured (at most; fewer if the set is small).",
        "consistency": "Share of seed images whose top label a candidate neuron must drive, in (0, 1].",
        "top_neurons": "Candidate neurons kept (best elevation margin first) and reverse-engineered.",
        "trigger": "pixel (mask-bounded patch) or filter (feature-space: a 3x3 convolution of the image).",
        "max_mask_fraction": "Largest share of the image's pixels a pixel trigger may cover, in (0, 1].",
        "max_filter_change": "Mean absolute pixel change above which a filter trigger is penalised, in (0, 1].",
        "steps": "Optimisation steps of the trigger reverse engineering.",
        "batch_size": "Seed images per step and candidate.",
        "lr": "Adam learning rate of the trigger (the authors: 0.4 in tanh space).",
        "chunk_images": "Largest stimulated batch per forward pass (neurons are chunked to fit it).",
        "threshold": "REASR above which the model is flagged, in [0, 1].",
        "seed": "Seed of the seed / held-out split, the initial triggers and the mini-batches.",
    }

    def __init__(self, layer: str | None = None, stimulation: tuple[float, ...] | list[float] = (0.5, 1, 2, 4, 8),
                 n_seed: int = 50, n_holdout: int = 500, consistency: float = 0.9, top_neurons: int = 5,
                 trigger: str = "pixel", max_mask_fraction: float = 0.06, max_filter_change: float = 0.1,
                 steps: int = 150, batch_size: int = 25, lr: float = 0.4, chunk_images: int = 4096,
                 threshold: float = 0.8, seed: int = 0) -> None:
        problems = []
        for name, v, low in (("n_seed", n_seed, 2), ("n_holdout", n_holdout, 1), ("top_neurons", top_neurons, 1),
                             ("steps", steps, 1), ("batch_size", batch_size, 1), ("chunk_images", chunk_images, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                problems.append(f"{name} must be an integer >= {low}, got {v!r}")
        if layer is not None and not isinstance(layer, str):
            problems.append(f"layer must be a module name or None, got {layer!r}")
        if (not isinstance(stimulation, (list, tuple)) or not stimulation
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in stimulation)):
            problems.append(f"stimulation must be a non-empty list of non-negative multiples, got {stimulation!r}")
        for name, v in (("consistency", consistency), ("max_mask_fraction", max_mask_fraction),
                        ("max_filter_change", max_filter_change)):
            if not isinstance(v, (int, float)) or not 0 < v <= 1:
                problems.append(f"{name} must be in (0, 1], got {v!r}")
        if trigger not in TRIGGERS:
            problems.append(f"trigger must be one of {', '.join(TRIGGERS)}, got {trigger!r}")
        if not isinstance(lr, (int, float)) or not lr > 0:
            problems.append(f"lr must be a positive number, got {lr!r}")
        if not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            problems.append(f"threshold must be a REASR in [0, 1], got {threshold!r}")
        if problems:
            raise ConfigError("abs: " + "; ".join(problems))
        self.layer, self.stimulation = layer, tuple(float(v) for v in stimulation)
        self.n_seed, self.n_holdout, self.consistency, self.top_neurons = n_seed, n_holdout, float(consistency), top_neurons
        self.trigger, self.max_mask_fraction = trigger, float(max_mask_fraction)
        self.max_filter_change, self.steps, self.batch_size = float(max_filter_change), steps, batch_size
        self.lr, self.chunk_images, self.threshold, self.seed = float(lr), chunk_images, float(threshold), int(seed)

    def params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.param_help}

    # -- step 1-3: stimulation ----------------------------------------------------------------
    def stimulate(self, net: nn.Module, layer: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Stimulation:
        """Stimulation analysis of every neuron (channel) of `layer` on the seed images x (labels y)."""
        with torch.no_grad():
            acts: list[torch.Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
            try:
                base = net(x)
            finally:
                handle.remove()
            if not acts or acts[0].ndim < 2:
                raise IncompatibleError("abs: the stimulated layer produced no [N, C, ...] activation")
            act = acts[0]
            channels = act.shape[1]
            maxv = float(act.max().clamp_min(1e-6))
            values = torch.tensor(self.stimulation) * maxv
            per_chunk = max(1, self.chunk_images // (len(values) * len(x)))
            logits = []
            for start in range(0, channels, per_chunk):
                neurons = torch.arange(start, min(channels, start + per_chunk))
                big = stimulated(act, neurons, values)
                # the hook replaces the layer's output: layers below run once, the rest on the big batch
                handle = layer.register_forward_hook(lambda _m, _i, _out, big=big: big)
                try:
                    out = net(x)
                finally:
                    handle.remove()
                logits.append(out.view(len(neurons), len(values), len(x), -1))
        top, margin = elevation_margins(torch.cat(logits), base)
        label, fraction, value, ok = candidate_neurons(top, margin, y, self.consistency)
        order = torch.argsort(value, descending=True)
        keep = order[ok[order]][: self.top_neurons]
        return Stimulation(label, fraction, value, keep, maxv)

    # -- step 4: trigger reverse engineering ----------------------------------------------------
    def _reverse(self, net: nn.Module, layer: nn.Module, x: torch.Tensor, neurons: torch.Tensor,
                 targets: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
        k = len(neurons)
        c, h, w = x.shape[1:]
        bound = max(1, round(self.max_mask_fraction * h * w))
        if self.trigger == "pixel":
            # start nearly empty (every pixel below the 0.01 that counts as covered): a random full mask
            # starts far above the bound, and the 100 sum(m) penalty then saturates it at zero for good
            start = torch.rand(k, 1, h, w, generator=g) * 0.01
            mask_p = torch.atanh(start * 2 - 1).requires_grad_(True)
            pattern_p = torch.atanh((torch.rand(k, c, h, w, generator=g) * 2 - 1) * 0.999).requires_grad_(True)
            params = [mask_p, pattern_p]
        else:
            ident = torch.zeros(c, c, 3, 3)
            ident[torch.arange(c), torch.arange(c), 1, 1] = 1
            kernels = (ident[None].repeat(k, 1, 1, 1, 1) + 0.01 * torch.randn(k, c, c, 3, 3, generator=g))
            kernels.requires_grad_(True)
            bias = torch.zeros(k, c, requires_grad=True)
            params = [kernels, bias]
        opt = torch.optim.Adam(params, lr=self.lr if self.trigger == "pixel" else self.lr * 0.025)
        batches = torch.randint(len(x), (self.steps, self.batch_size), generator=g)
        target = targets.repeat_interleave(self.batch_size)
        chan = neurons.repeat_interleave(self.batch_size)
        rows = torch.arange(len(chan))
        acts: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
        try:
            for step in range(self.steps):
                xb = x[batches[step]]
                if self.trigger == "pixel":
                    mask = (torch.tanh(mask_p) + 1) / 2
                    stamped = apply_masks(xb, mask, (torch.tanh(pattern_p) + 1) / 2)
                    penalty = mask_penalty(mask, bound)
                else:
                    stamped = apply_filters(xb, kernels, bias)
                    change = (stamped - xb.repeat(k, 1, 1, 1)).abs().view(k, -1).mean(1)
                    penalty = 50.0 * torch.relu(change - self.max_filter_change) + 0.01 * change
                acts.clear()
                logits = net(stamped)
                a = acts[0].flatten(2).mean(2)  # [k * B, C]: each channel's mean activation
                own = a[rows, chan]
                others = a.sum(1) - own
                weight = 1.0 if step < self.steps // 2 else 3.0
                per_image = -own + 1e-4 * others - weight * logits[rows, target]
                loss = per_image.view(k, -1).mean(1) + penalty  # disjoint parameters: k separate problems
                opt.zero_grad(set_to_none=True)
                loss.sum().backward()
                opt.step()
                if self.trigger == "pixel":
                    # keep the mask out of tanh's flat ends (m in [0.0025, 0.9975]): a pixel pushed to zero
                    # by the size penalty must be able to come back when the bound allows it
                    with torch.no_grad():
                        mask_p.clamp_(-3.0, 3.0)
        finally:
            handle.remove()
        with torch.no_grad():
            if self.trigger == "pixel":
                return {"masks": bounded((torch.tanh(mask_p) + 1) / 2, bound), "patterns": (torch.tanh(pattern_p) + 1) / 2}
            return {"kernels": kernels.detach().clone(), "bias": bias.detach().clone()}

    def _reasr(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, trig: dict[str, torch.Tensor],
               targets: torch.Tensor) -> torch.Tensor:
        """Per candidate: the share of held-out images of other labels classified as its label once stamped."""
        out = []
        with torch.no_grad():
            for i, t in enumerate(targets.tolist()):
                xs = x[y != t]
                if len(xs) == 0:
                    out.append(0.0)
                    continue
                if self.trigger == "pixel":
                    stamped = apply_masks(xs, trig["masks"][i : i + 1], trig["patterns"][i : i + 1])
                else:
                    stamped = apply_filters(xs, trig["kernels"][i : i + 1], trig["bias"][i : i + 1])
                out.append(float((net(stamped).argmax(1) == t).double().mean()))
        return torch.tensor(out, dtype=torch.float64)

    # -- the verdict --------------------------------------------------------------------------
    def inspect(self, model: nn.Module, clean: Dataset) -> ModelVerdict:
        net = model_copy(model)
        for p in net.parameters():
            p.requires_grad_(False)
        x_all = check_clean_set(net, clean, "abs")
        needed = self.n_seed + 10
        if len(x_all) < needed:
            raise ConfigError(f"abs: the clean set has {len(x_all)} images, fewer than the {needed} needed "
                              f"(n_seed={self.n_seed} to stimulate plus 10 held out); give a larger clean set "
                              "or lower n_seed")
        layer_name, layer = find_layer(net, self.layer)
        g = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(x_all), generator=g)
        seed_idx, held_idx = order[: self.n_seed], order[self.n_seed : self.n_seed + self.n_holdout]
        y_all = clean.labels
        stim = self.stimulate(net, layer, x_all[seed_idx], y_all[seed_idx])
        neurons = stim.candidates
        targets = stim.label[neurons]
        details: dict[str, Any] = {
            "layer": layer_name, "max_activation": stim.max_activation, "candidate_neurons": neurons.tolist(),
            "candidate_labels": targets.tolist(), "candidate_values": stim.value[neurons].tolist(),
            "candidate_consistency": stim.fraction[neurons].tolist(), "n_seed": len(seed_idx),
            "n_holdout": len(held_idx), "params": self.params(),
        }
        num_classes = int(net(x_all[:1]).shape[1])
        trig: dict[str, torch.Tensor] = {}
        reasr = torch.zeros(0, dtype=torch.float64)
        score, suspect = 0.0, None  # no candidate neuron: nothing drives one label, nothing to reverse
        details |= {"reasr": [], "best": None}
        if len(neurons):
            trig = self._reverse(net, layer, x_all[seed_idx], neurons, targets, g)
            reasr = self._reasr(net, x_all[held_idx], y_all[held_idx], trig, targets)
            best = int(reasr.argmax())
            score, suspect = float(reasr[best]), int(targets[best])
            details |= {"reasr": reasr.tolist(), "best": {"neuron": int(neurons[best]), "label": suspect,
                                                          "reasr": score}}
        artefacts = self._per_label_artefacts(trig, reasr, targets, num_classes, x_all.shape[1:])
        if "norms" in artefacts:
            details["norms"] = artefacts.pop("norms")
        flagged = score > self.threshold
        return ModelVerdict(score, flagged, self.threshold, suspect if flagged else None, details, artefacts)

    def _per_label_artefacts(self, trig: dict[str, torch.Tensor], reasr: torch.Tensor, targets: torch.Tensor,
                             num_classes: int, shape: torch.Size) -> dict[str, Any]:
        """Pixel triggers: per label, the trigger of its best candidate (masks [K, 1, H, W], patterns [K, C, H, W],
        zero where the label has no candidate; norms NaN there), the layout the reversed-trigger figure of
        the detect command draws. Filter triggers: the kernels and biases of every candidate."""
        if self.trigger == "filter":
            return dict(trig)
        c, h, w = shape
        masks, patterns = torch.zeros(num_classes, 1, h, w), torch.zeros(num_classes, c, h, w)
        norms = [float("nan")] * num_classes
        best_reasr = torch.full((num_classes,), -1.0, dtype=torch.float64)
        for i, t in enumerate(targets.tolist()):
            if trig and reasr[i] > best_reasr[t]:
                best_reasr[t] = reasr[i]
                masks[t], patterns[t] = trig["masks"][i], trig["patterns"][i]
                norms[t] = float(trig["masks"][i].sum())
        return {"masks": masks, "patterns": patterns, "norms": norms}
