"""Model inspection and surgery shared by attacks and defenses (a neutral home below both): copies,
layer lookup, activation capture with hooks that are always removed, the prune site of the last conv
layer, channel zeroing and freezing, pruning by activation, and penultimate-layer features.

Every function leaves the caller's model as it found it (training mode restored, hooks removed), also
when it raises, unless its name says it changes the model in place (`zero_channels`, `freeze_channels`).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .data.dataset import Dataset, to_float
from .errors import IncompatibleError
from .metrics import accuracy, predict

# A callback measuring a model at points of a procedure (e.g. the evaluator's test accuracy and ASR):
# opaque to the procedure, which only calls it and records what it returns.
Probe = Callable[[nn.Module], dict[str, float]]


# --------------------------------------------------------------------------- copies and layers
def model_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode, so that weights can change without touching the caller's model."""
    return copy.deepcopy(model).eval()


def last_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The last convolutional layer (name, module), where Fine-Pruning and Grad-CAM look."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise IncompatibleError(
            f"the model ({type(model).__name__}) has no convolutional layer; this method needs one"
        )
    return convs[-1]


def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last Linear layer (the classifier head of every architecture here)."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise IncompatibleError(f"the model ({type(model).__name__}) has no Linear layer to read representations from")
    return linears[-1]


# --------------------------------------------------------------------------- activations
@contextlib.contextmanager
def capture_activations(model: nn.Module, layer: nn.Module, *, train_mode: bool = False) -> Iterator[list]:
    """Record `layer`'s outputs while the block runs; the hook is removed and the model's mode restored
    afterwards, also when the block raises. Yields the list the outputs are appended to."""
    outputs: list[torch.Tensor] = []
    was_training = model.training
    handle = layer.register_forward_hook(lambda _m, _i, out: outputs.append(out))
    model.train(train_mode)
    try:
        yield outputs
    finally:
        handle.remove()
        model.train(was_training)


@contextlib.contextmanager
def capture_inputs(layer: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Record the (detached) first input of `layer` while the block runs; the hook is always removed."""
    inputs: list[torch.Tensor] = []
    handle = layer.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].detach()))
    try:
        yield inputs
    finally:
        handle.remove()


def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 1000, *,
                         optimise: bool = False) -> torch.Tensor:
    """Representations [N, D] that the final Linear layer reads, computed in eval mode without gradients
    (the model's mode is restored afterwards).

    optimise=True runs a TorchScript graph of the model up to that layer, frozen and optimised for
    inference (on CPU: oneDNN layout from the first convolution to the last, ReLUs in place): about 2x
    the eager rate on small CNNs (measured: badnet-mnist, one thread), equal to float rounding. Traced on
    the first inputs, it is checked against the eager model on the last ones; where tracing fails or
    disagrees, the eager model computes everything."""
    head = last_linear(model)
    was_training = model.training
    model.eval()
    try:
        fast = _frozen_features(model, head, to_float(x[:16]), to_float(x[-16:])) if optimise and len(x) else None
        if fast is not None:
            with torch.no_grad():
                return torch.cat([fast(to_float(x[i : i + batch_size])).flatten(1) for i in range(0, len(x), batch_size)])
        with capture_inputs(head) as inputs, torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(to_float(x[i : i + batch_size]))
        return torch.cat([t.flatten(1) for t in inputs])
    finally:
        model.train(was_training)


class _UpToInput(nn.Module):
    """The model's computation up to `layer`'s input, as a module that returns it (for tracing). The model
    is held outside the module tree, so that the tracer records its weights as constants instead of
    building a scripted copy of every submodule (4x faster to trace)."""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.held = (model, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model, layer = self.held
        with capture_inputs(layer) as inputs:
            model(x)
        return inputs[0]


def _frozen_features(model: nn.Module, layer: nn.Module, example: torch.Tensor, check: torch.Tensor) -> Callable | None:
    """`layer`'s input as a frozen, inference-optimised TorchScript function of the model's input, traced
    on `example`, or None where the model does not trace or the traced graph disagrees with the eager
    model on `check`, other inputs of another batch size (control flow that depends on the data or the
    batch). The weights' requires_grad flags are cleared while tracing (a traced constant must not
    require grad) and restored."""
    import warnings

    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the check below decides
            traced = torch.jit.trace(_UpToInput(model, layer).eval(), example, check_trace=False)
            fast = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            check = check[: max(1, len(check) - 1)]  # a batch size other than the traced one, where possible
            with capture_inputs(layer) as inputs:
                model(check)
            got, want = fast(check), inputs[0]
    except Exception:  # noqa: BLE001  (any tracing failure: the eager path is always correct)
        return None
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
    if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())):
        return None
    return fast


# --------------------------------------------------------------------------- the prune site
@dataclass(frozen=True, eq=False)
class PruneSite:
    """Where channel surgery acts: the last conv layer and the BatchNorm that normalises its output, if any."""

    conv_name: str
    conv: nn.Conv2d
    bn: nn.BatchNorm2d | None

    @property
    def channels(self) -> int:
        return self.conv.out_channels

    @property
    def output_layer(self) -> nn.Module:
        """The layer whose output is a channel's pre-activation (the BN when there is one)."""
        return self.bn if self.bn is not None else self.conv

    def parameters(self) -> list[nn.Parameter]:
        """The parameters that carry a channel of this layer (dimension 0 indexes the channel)."""
        params = [self.conv.weight] + ([self.conv.bias] if self.conv.bias is not None else [])
        if self.bn is not None and self.bn.affine:
            params += [self.bn.weight, self.bn.bias]
        return params


def prune_site(model: nn.Module) -> PruneSite:
    """The last conv layer of `model` and the BatchNorm directly after it (module order), if any."""
    name, conv = last_conv(model)
    modules = list(model.named_modules())
    names = [n for n, _ in modules]
    after = modules[names.index(name) + 1][1] if names.index(name) + 1 < len(modules) else None
    bn = after if isinstance(after, nn.BatchNorm2d) and after.num_features == conv.out_channels else None
    if bn is not None and not bn.affine:
        raise IncompatibleError(f"the BatchNorm after {name!r} has no affine parameters; pruning cannot zero it")
    return PruneSite(name, conv, bn)


def mean_channel_activations(model: nn.Module, site: PruneSite, images: torch.Tensor,
                             batch_size: int = 500) -> torch.Tensor:
    """Mean post-ReLU activation per channel of the site over images and positions: float [C].

    Running sums, never the feature maps of the whole set. The ReLU is applied here (to the BN output
    when a BN follows) because a channel's activation is what the next layer sees."""
    total = torch.zeros(site.channels, dtype=torch.float64)
    count = 0
    with capture_activations(model, site.output_layer) as outputs, torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(to_float(images[i : i + batch_size]))
            out = outputs.pop()
            total += torch.relu(out).sum(dim=(0, 2, 3)).double()
            count += out.shape[0] * out.shape[2] * out.shape[3]
    return (total / max(count, 1)).float()


def max_channel_pre_activations(model: nn.Module, site: PruneSite, images: torch.Tensor,
                                batch_size: int = 500) -> torch.Tensor:
    """Max over images and positions of each channel's pre-activation (the input of the ReLU): float [C]."""
    best = torch.full((site.channels,), -torch.inf)
    with capture_activations(model, site.output_layer) as outputs, torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(to_float(images[i : i + batch_size]))
            best = torch.maximum(best, outputs.pop().amax(dim=(0, 2, 3)))
    return best


def zero_channels(site: PruneSite, channels: torch.Tensor | list[int]) -> None:
    """Prune `channels` in place (call on a copy): their output becomes exactly zero."""
    idx = torch.as_tensor(channels, dtype=torch.long)
    with torch.no_grad():
        for p in site.parameters():
            p[idx] = 0


def freeze_channels(site: PruneSite, channels: torch.Tensor | list[int]) -> list[Any]:
    """Gradient hooks that keep pruned channels at zero while training (zero gradient, zero weight: SGD
    momentum, weight decay and Adam all leave them at zero). Returns the handles; remove them after, or
    use `frozen_channels`, which does."""
    mask_index = torch.as_tensor(channels, dtype=torch.long)
    handles = []
    for p in site.parameters():
        mask = torch.ones_like(p)
        mask[mask_index] = 0
        handles.append(p.register_hook(lambda g, m=mask: g * m))
    return handles


@contextlib.contextmanager
def frozen_channels(site: PruneSite, channels: torch.Tensor | list[int]) -> Iterator[None]:
    """`freeze_channels` for the duration of the block; the hooks are removed also when it raises.
    No channels: nothing is hooked."""
    handles = freeze_channels(site, channels) if len(channels) else []
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- pruning by activation
def clean_accuracy_of(model: nn.Module, data: Dataset, batch_size: int = 1000) -> float:
    return accuracy(predict(model, data.images, batch_size), data.labels)


@dataclass(frozen=True, eq=False)
class PruneResult:
    model: nn.Module  # the pruned copy chosen by the stopping rule
    order: list[int]  # channels by increasing mean activation
    pruned: list[int]  # the channels pruned in `model`
    curve: list[dict[str, float]]
    baseline_accuracy: float


def prune_by_activation(
    model: nn.Module, data: Dataset, *, max_accuracy_drop: float = 0.04, step: int = 1,
    full_curve: bool = True, monitor: Probe | None = None, batch_size: int = 500, progress: bool = False,
) -> PruneResult:
    """Prune the last conv layer's channels of a copy of `model` in increasing order of mean activation on
    `data`; keep the most channels pruned such that accuracy on `data` has not dropped by more than
    `max_accuracy_drop` at any point. With `full_curve`, keep measuring to 100% pruned (for the plot).
    `data` is assumed to fit the model (callers check it: e.g. defenses.base.check_clean_set)."""
    from tqdm.auto import tqdm

    work = model_copy(model)
    site = prune_site(work)
    order = torch.argsort(mean_channel_activations(work, site, data.images, batch_size), stable=True).tolist()
    baseline = clean_accuracy_of(work, data)

    def point(k: int) -> dict[str, float]:
        row = {"pruned": k, "fraction_pruned": k / site.channels, "holdout_accuracy": clean_accuracy_of(work, data)}
        if monitor is not None:
            row.update(monitor(work))
        return row

    curve = [point(0)]
    chosen, stopped = 0, False
    sizes = list(range(step, site.channels, step)) + [site.channels]
    for k in tqdm(sizes, desc="pruning", disable=not progress, leave=False):
        zero_channels(site, order[:k])
        curve.append(point(k))
        if not stopped and baseline - curve[-1]["holdout_accuracy"] > max_accuracy_drop:
            stopped = True
        if not stopped:
            chosen = k
        if stopped and not full_curve:
            break
    pruned_model = model_copy(model)
    zero_channels(prune_site(pruned_model), order[:chosen])
    return PruneResult(pruned_model, order, order[:chosen], curve, baseline)


__all__ = [
    "Probe", "PruneResult", "PruneSite", "capture_activations", "capture_inputs", "clean_accuracy_of",
    "freeze_channels", "frozen_channels", "last_conv", "last_linear", "max_channel_pre_activations",
    "mean_channel_activations", "model_copy", "penultimate_features", "prune_by_activation", "prune_site",
    "zero_channels",
]
