"""Stealthier data-poisoning attacks, each its own registered class in `ATTACKS` over `PoisoningAttack`:

  wanet             warping-based (Nguyen & Tran, ICLR 2021): a smooth random warp field; "noise mode" cross
                    samples warped by the field plus fresh per-sample noise keep their true label
  sig               clean-label sinusoidal signal (Barni, Kallas & Tondi, ICIP 2019) on target-class images
  label-consistent  clean-label (Turner, Tsipras & Madry 2019): target-class images made hard to classify by
                    an l-inf PGD perturbation against a reference model (or a surrogate the attack trains
                    on the data it poisons), then the trigger stamped; no relabelling
  invisible         invisible perturbation (Liao et al. 2018, static variant): a fixed, small additive
                    +-epsilon pattern over the whole image
  trojannn          TrojanNN (Liu et al., NDSS 2018): the pixels of a trigger region optimised to excite the
                    neurons of a reference model's last hidden layer with the largest outgoing weights;
                    the poisoned (re)training data carry that trigger

Clean-label attacks (`clean_label = True`) draw their poisoned rows from the target class and keep their
labels; `poison_rate` stays a fraction of the whole training set, so it is at most the target class's share.
The new trigger kinds (warp, sinusoid, perturbation) are registered in `TRIGGERS` here, with strict
schemas, so their JSON form travels in an attack spec like any other trigger.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..data.dataset import Dataset, DatasetInfo, to_float
from ..errors import ConfigError, IncompatibleError
from ..schemas import MAX_CHANNELS, MAX_SIDE, PoisoningSpec, Strict, TriggerSpec, json_form, validate
from ..triggers import TRIGGERS, ImageTrigger, PatchTrigger, Trigger, make_trigger, trigger_from_dict
from .poisoning import _COMMON_HELP, Poisoned, PoisoningAttack, _is_int, _is_real
from .registries import ATTACKS

# --------------------------------------------------------------------------- pure tensor functions


def _check_images(x: torch.Tensor, shape: tuple[int, int, int], what: str) -> None:
    if x.ndim != 4 or not x.is_floating_point():
        raise IncompatibleError(f"triggers apply to float image batches [N, C, H, W]; got {x.dtype} {tuple(x.shape)}")
    if tuple(x.shape[1:]) != tuple(shape):
        raise IncompatibleError(f"the {what} trigger was made for {shape[0]}x{shape[1]}x{shape[2]} images, "
                                f"not {x.shape[1]}x{x.shape[2]}x{x.shape[3]}")


def warp_grid(field: torch.Tensor, strength: float, height: int, width: int) -> torch.Tensor:
    """WaNet's sampling grid [H, W, 2]: identity + strength * bicubic-upsampled `field` [2, k, k] / H,
    clamped to [-1, 1] (official code: grid_temps)."""
    up = F.interpolate(field[None].float(), size=(height, width), mode="bicubic", align_corners=True)[0]
    rows, cols = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    identity = torch.stack((cols, rows), -1)  # grid_sample wants (x, y) = (column, row)
    return (identity + strength * up.permute(1, 2, 0) / height).clamp(-1, 1)


def warp(x: torch.Tensor, grid: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
    """x resampled through `grid` [H, W, 2]; `noise` [N, H, W, 2] (WaNet's cross samples) is added per
    sample, divided by H, before clamping. New tensor, pixels in [0, 1]."""
    n, _c, h, _w = x.shape
    g = grid.expand(n, *grid.shape)
    if noise is not None:
        g = (g + noise / h).clamp(-1, 1)
    return F.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=True).clamp(0, 1)


def sinusoid(height: int, width: int, delta: float, frequency: float) -> torch.Tensor:
    """SIG's signal v(i, j) = delta * sin(2 pi j f / m) [H, W], m the image width (every row the same)."""
    j = torch.arange(width, dtype=torch.float32)
    return (delta * torch.sin(2 * math.pi * j * frequency / width)).expand(height, width)


def pgd_linf(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, epsilon: float, steps: int,
             batch_size: int = 256) -> torch.Tensor:
    """Untargeted l-inf PGD (no random start): x + delta, |delta| <= epsilon, raising the model's loss on
    `labels`; step 2.5 * epsilon / steps (Madry et al.). The model is used as it is (eval mode expected)."""
    step = 2.5 * epsilon / steps
    out = []
    with torch.enable_grad():  # callers may hold no_grad; the gradient is on the input only
        return _pgd_batches(model, x, labels, epsilon, steps, step, batch_size, out)


def _pgd_batches(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, epsilon: float, steps: int, step: float,
                 batch_size: int, out: list[torch.Tensor]) -> torch.Tensor:
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], labels[start:start + batch_size]
        delta = torch.zeros_like(xb, requires_grad=True)
        for _ in range(steps):
            loss = F.cross_entropy(model((xb + delta).clamp(0, 1)), yb)
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta += step * grad.sign()
                delta.clamp_(-epsilon, epsilon)
        out.append((xb + delta.detach()).clamp(0, 1))
    return torch.cat(out) if out else x.clone()


# --------------------------------------------------------------------------- trigger kinds
Shape = Annotated[list[Annotated[int, Field(ge=1, le=MAX_SIDE)]], Field(min_length=3, max_length=3)]
Coarse = Annotated[list[Annotated[list[Annotated[float, Field(ge=-1e3, le=1e3)]], Field(min_length=1, max_length=64)]],
                   Field(min_length=1, max_length=64)]
Signed = Annotated[float, Field(ge=-1.0, le=1.0)]
SignedPlanes = Annotated[list[Annotated[list[Annotated[list[Signed], Field(min_length=1, max_length=MAX_SIDE)]],
                                        Field(min_length=1, max_length=MAX_SIDE)]],
                         Field(min_length=1, max_length=MAX_CHANNELS)]


class WarpTriggerSpec(TriggerSpec):
    """A WaNet warp: the coarse field [2][k][k], its strength, and the image shape [C, H, W] it was made for."""

    field: Annotated[list[Coarse], Field(min_length=2, max_length=2)]
    strength: Annotated[float, Field(gt=0.0, le=100.0)]
    shape: Shape


class SinusoidTriggerSpec(TriggerSpec):
    """A SIG signal: amplitude delta in (0, 1], frequency in cycles per image width, image shape [C, H, W]."""

    delta: Annotated[float, Field(gt=0.0, le=1.0)]
    frequency: Annotated[float, Field(gt=0.0, le=MAX_SIDE)]
    shape: Shape


class PerturbationTriggerSpec(TriggerSpec):
    """An additive perturbation pattern [C][H][W], values in [-1, 1]."""

    pattern: SignedPlanes


def _shape(channels: Any, image_size: Any, what: str) -> tuple[int, int, int]:
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise ConfigError(f"{what} channels must be an integer from 1 to {MAX_CHANNELS}, got {channels!r}")
    if not _is_int(image_size) or not 2 <= image_size <= MAX_SIDE:
        raise ConfigError(f"{what} image_size must be an integer from 2 to {MAX_SIDE}, got {image_size!r}")
    return (channels, image_size, image_size)


def _rounded(t: torch.Tensor) -> tuple:
    """A tensor as nested tuples of floats rounded as the JSON form keeps them (so a round trip is exact)."""
    def conv(v: Any) -> Any:
        return tuple(conv(i) for i in v) if isinstance(v, list) else round(float(v), 6)
    return conv(t.tolist())


@TRIGGERS.register("warp")
@dataclass(frozen=True)
class WarpTrigger:
    """WaNet's warp (Nguyen & Tran 2021): a random field of k x k control points, normalised by its mean
    absolute value, upsampled bicubically; the image is resampled through identity + strength * field / H."""

    field: tuple  # [2][k][k]
    strength: float
    shape: tuple[int, int, int]

    kind: ClassVar[str] = "warp"
    spec_schema: ClassVar[type[Strict]] = WarpTriggerSpec
    example_params: ClassVar[dict[str, Any]] = {"strength": 4.0}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"strength": 0}, "strength"), ({"strength": float("nan")}, "strength"), ({"grid_size": 1}, "grid_size"),
        ({"grid_size": 99}, "grid_size"), ({"seed": -1}, "seed"))
    param_help: ClassVar[dict[str, str]] = {
        "grid_size": "k: the warp field has k x k random control points (WaNet: 4).",
        "strength": "s: how far pixels move, in units of 2/H of the image (WaNet: 0.5; larger is learned faster).",
        "seed": "Seed of the random warp field.",
    }

    def grid(self, height: int, width: int) -> torch.Tensor:
        return warp_grid(torch.tensor(self.field, dtype=torch.float32), self.strength, height, width)

    def apply(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        _check_images(x, self.shape, "warp")
        return warp(x, self.grid(x.shape[-2], x.shape[-1]), noise)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "field": self.field, "strength": self.strength, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WarpTrigger:
        s = validate(cls.spec_schema, json_form(data), "trigger")
        k = len(s.field[0])
        if any(len(p) != k or any(len(r) != k for r in p) for p in s.field):
            raise ConfigError("trigger: field must be [2][k][k] (two square planes of the same size)")
        return cls(_rounded(torch.tensor(s.field)), float(s.strength), tuple(s.shape))

    @classmethod
    def build(cls, channels: int, *, image_size: int, grid_size: int = 4, strength: float = 0.5,
              seed: int = 0) -> WarpTrigger:
        shape = _shape(channels, image_size, "warp")
        if not _is_int(grid_size) or not 2 <= grid_size <= min(64, image_size):
            raise ConfigError(f"warp grid_size must be an integer from 2 to {min(64, image_size)} (at most the "
                              f"image side), got {grid_size!r}")
        if not _is_real(strength) or not 0 < strength <= 100:
            raise ConfigError(f"warp strength must be a number in (0, 100], got {strength!r}")
        if not _is_int(seed) or not 0 <= seed < 2**63:
            raise ConfigError(f"warp seed must be an integer in [0, 2**63), got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        field = torch.rand(2, grid_size, grid_size, generator=g) * 2 - 1
        field = field / field.abs().mean()
        return cls(_rounded(field), float(strength), shape)


@TRIGGERS.register("sinusoid")
@dataclass(frozen=True)
class SinusoidTrigger:
    """SIG's horizontal sinusoid (Barni et al. 2019): x + delta * sin(2 pi j f / m) on every row and
    channel, clipped to [0, 1]."""

    delta: float
    frequency: float
    shape: tuple[int, int, int]

    kind: ClassVar[str] = "sinusoid"
    spec_schema: ClassVar[type[Strict]] = SinusoidTriggerSpec
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"delta": 0}, "delta"), ({"delta": 2.0}, "delta"), ({"frequency": 0}, "frequency"),
        ({"frequency": float("inf")}, "frequency"))
    param_help: ClassVar[dict[str, str]] = {
        "delta": "Amplitude of the signal in pixel units of [0, 1] (SIG reimplementations: 20/255).",
        "frequency": "Cycles across the image width (SIG reimplementations: 6).",
    }

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x, self.shape, "sinusoid")
        return (x + sinusoid(x.shape[-2], x.shape[-1], self.delta, self.frequency).to(x.dtype)).clamp(0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "delta": self.delta, "frequency": self.frequency, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinusoidTrigger:
        s = validate(cls.spec_schema, json_form(data), "trigger")
        return cls(float(s.delta), float(s.frequency), tuple(s.shape))

    @classmethod
    def build(cls, channels: int, *, image_size: int, delta: float = 20 / 255, frequency: float = 6.0
              ) -> SinusoidTrigger:
        shape = _shape(channels, image_size, "sinusoid")
        if not _is_real(delta) or not 0 < delta <= 1:
            raise ConfigError(f"sinusoid delta must be a number in (0, 1] (pixel units), got {delta!r}")
        if not _is_real(frequency) or not 0 < frequency <= image_size:
            raise ConfigError(f"sinusoid frequency must be a number in (0, {image_size}] (cycles per width), "
                              f"got {frequency!r}")
        return cls(float(delta), float(frequency), shape)


@TRIGGERS.register("perturbation")
@dataclass(frozen=True)
class PerturbationTrigger:
    """A fixed additive pattern over the whole image, x + pattern clipped to [0, 1]; built as a seeded
    random +-epsilon sign pattern (Liao et al.'s static invisible perturbation)."""

    pattern: tuple  # [C][H][W], values in [-1, 1]

    kind: ClassVar[str] = "perturbation"
    spec_schema: ClassVar[type[Strict]] = PerturbationTriggerSpec
    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"epsilon": 0}, "epsilon"), ({"epsilon": 1.5}, "epsilon"), ({"epsilon": float("nan")}, "epsilon"),
        ({"seed": -1}, "seed"))
    param_help: ClassVar[dict[str, str]] = {
        "epsilon": "The l-inf size of the pattern, in pixel units of [0, 1] (e.g. 8/255: invisible).",
        "seed": "Seed of the random sign pattern.",
    }

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        pattern = torch.tensor(self.pattern, dtype=torch.float32)
        _check_images(x, tuple(pattern.shape), "perturbation")
        return (x + pattern.to(x.dtype)).clamp(0, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "pattern": self.pattern}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PerturbationTrigger:
        s = validate(cls.spec_schema, json_form(data), "trigger")
        planes = s.pattern
        h, w = len(planes[0]), len(planes[0][0])
        if any(len(p) != h or any(len(r) != w for r in p) for p in planes):
            raise ConfigError("trigger: pattern must be a [C][H][W] array (rows and channels of equal length)")
        return cls(_rounded(torch.tensor(planes)))

    @classmethod
    def build(cls, channels: int, *, image_size: int, epsilon: float = 8 / 255, seed: int = 0) -> PerturbationTrigger:
        shape = _shape(channels, image_size, "perturbation")
        if not _is_real(epsilon) or not 0 < epsilon <= 1:
            raise ConfigError(f"perturbation epsilon must be a number in (0, 1] (pixel units), got {epsilon!r}")
        if not _is_int(seed) or not 0 <= seed < 2**63:
            raise ConfigError(f"perturbation seed must be an integer in [0, 2**63), got {seed!r}")
        g = torch.Generator().manual_seed(seed)
        signs = torch.randint(0, 2, shape, generator=g).float() * 2 - 1
        return cls(_rounded(signs * epsilon))


# --------------------------------------------------------------------------- shared pieces


def _inject(dataset: Dataset, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]],
            injection: str) -> Poisoned:
    """The training set with `parts` (rows, float images, labels, poisoned?) appended as copies or
    substituted for their rows (rows disjoint). Rows flagged False (WaNet's noise samples) are attacker-made
    but keep their true label; they are not in `poisoned_mask`."""
    rows = torch.cat([p[0] for p in parts])
    images = torch.cat([p[1] for p in parts])
    labels = torch.cat([p[2] for p in parts])
    flags = torch.cat([torch.full((len(p[0]),), p[3], dtype=torch.bool) for p in parts])
    if dataset.images.dtype == torch.uint8:
        images = images.mul(255).round_().clamp_(0, 255).to(torch.uint8)
    else:
        images = images.to(dataset.images.dtype)
    n, groups = len(dataset), dataset.groups
    if injection == "append":
        all_images, all_labels = torch.cat([dataset.images, images]), torch.cat([dataset.labels, labels])
        if groups is not None:
            groups = torch.cat([groups, groups[rows]])
        mask = torch.cat([torch.zeros(n, dtype=torch.bool), flags])
        source = torch.cat([torch.arange(n), rows])
    else:
        all_images, all_labels = dataset.images.clone(), dataset.labels.clone()
        all_images[rows], all_labels[rows] = images, labels
        mask = torch.zeros(n, dtype=torch.bool)
        mask[rows] = flags
        source = torch.arange(n)
    out = replace(dataset, images=all_images, labels=all_labels, groups=groups)
    return Poisoned(dataset=out, poisoned_mask=mask, source_index=source)


def _check_classes(attack: PoisoningAttack, dataset: Dataset) -> None:
    if dataset.num_classes != attack.num_classes:
        raise ConfigError(f"the attack was built for {attack.num_classes} classes, dataset {dataset.name!r} has "
                          f"{dataset.num_classes}")


def _reference_path(reference: Any) -> str | None:
    if reference is not None and (not isinstance(reference, str) or not 1 <= len(reference) <= 4096):
        raise ConfigError(f"reference must be the path of a model file (.safetensors) or None, got {reference!r}")
    return reference


def load_reference(path: str, channels: int, image_size: int, num_classes: int) -> nn.Module:
    """The reference model file at `path`, checked to fit the attacked inputs and classes; eval mode."""
    from ..modelfile import load_model

    loaded = load_model(path)
    m = loaded.manifest
    if list(m.input_shape) != [channels, image_size, image_size] or m.num_classes != num_classes:
        raise IncompatibleError(f"reference model {path} takes {m.input_shape} inputs and {m.num_classes} classes; "
                                f"the attack is for [{channels}, {image_size}, {image_size}] and {num_classes}")
    return loaded.model.eval()


def _frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


_CLEAN_LABEL_HELP = {
    **_COMMON_HELP,
    "mode": "Label map: all-to-one only (a clean-label attack relabels nothing; ASR is measured on the other "
            "classes).",
    "poison_rate": "Poisoned target-class samples as a fraction of the training-set size (at most the target "
                   "class's share).",
}
_CLEAN_LABEL_BAD = (
    ({"poison_rate": -1}, "poison_rate"), ({"poison_rate": 1.5}, "poison_rate"), ({"target": 99}, "target"),
    ({"mode": "all-to-all"}, "clean-label"), ({"injection": "insert"}, "injection"), ({"seed": -1}, "seed"),
    ({"cover_rate": 0.1}, "cover_rate"), ({"poison_rate": float("nan")}, "poison_rate"),
)


@dataclass(frozen=True)
class CleanLabelAttack(PoisoningAttack):
    """The base of clean-label attacks: poisoned rows are drawn from the target class and keep their label;
    `prepare` may change them (label-consistent: adversarially) before the trigger is applied."""

    clean_label: ClassVar[bool] = True
    example_params: ClassVar[dict[str, Any]] = {"target": 1, "poison_rate": 0.2, "seed": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = _CLEAN_LABEL_BAD
    param_help: ClassVar[dict[str, str]] = {"trigger": "The trigger kind (any registered trigger).",
                                            **_CLEAN_LABEL_HELP}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode != "all-to-one":
            raise ConfigError(f"{self.name or 'this'} is a clean-label attack (target-class images, labels kept): "
                              f"mode must be 'all-to-one', got {self.mode!r}")

    def prepare(self, x: torch.Tensor, labels: torch.Tensor, dataset: Dataset,
                generator: torch.Generator) -> torch.Tensor:
        """The chosen target-class images before the trigger is applied (float [N, C, H, W])."""
        return x

    def poison(self, dataset: Dataset, generator: torch.Generator) -> Poisoned:
        _check_classes(self, dataset)
        rows = self._draw(dataset.labels == self.target, self.poison_rate, "poison_rate", len(dataset), generator)
        labels = dataset.labels[rows]
        x = self.prepare(to_float(dataset.images[rows]), labels, dataset, generator)
        return _inject(dataset, [(rows, self.apply_trigger(x), labels, True)], self.injection)


# --------------------------------------------------------------------------- WaNet


class WaNetSpec(PoisoningSpec):
    cross_ratio: Annotated[float, Field(ge=0.0, le=100.0)] = 0.0


@ATTACKS.register("wanet")
@dataclass(frozen=True)
class WaNet(PoisoningAttack):
    """WaNet (Nguyen & Tran, ICLR 2021): poisoned samples are warped by a fixed random field and relabelled;
    `cross_ratio` x as many "noise mode" samples, warped by the field plus fresh random noise, keep their
    true label, so that only the exact warp fires (official code: cross_ratio 2)."""

    cross_ratio: float = 2.0

    name: ClassVar[str] = "wanet"
    default_trigger: ClassVar[str] = "warp"
    spec_schema: ClassVar[type[Strict]] = WaNetSpec
    threat_model: ClassVar[str] = (
        "Data poisoning: controls a fraction of the training set (warped images relabelled, plus noise-warped "
        "images with their true labels); knows nothing of the model or the training. (The paper's attacker "
        "controls training; here the warps are fixed in the data.)")
    example_params: ClassVar[dict[str, Any]] = {"target": 1, "poison_rate": 0.1, "cross_ratio": 2.0, "seed": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PoisoningAttack.bad_params, ({"cross_ratio": -1.0}, "cross_ratio"), ({"trigger": "square"}, "warp"),
        ({"trigger_options": {"strength": 0}}, "strength"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger: warp (the only kind; options grid_size, strength, seed).",
        **_COMMON_HELP,
        "cross_ratio": "Noise-mode samples (warp + per-sample noise, true label) per poisoned sample (WaNet: 2).",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trigger, WarpTrigger):
            raise ConfigError(f"wanet needs a warp trigger, got {type(self.trigger).__name__}")
        if not _is_real(self.cross_ratio) or not 0 <= self.cross_ratio <= 100:
            raise ConfigError(f"cross_ratio must be a number in [0, 100], got {self.cross_ratio!r}")

    @classmethod
    def build(cls, *, num_classes: int, channels: int, image_size: int, trigger: str | None = None,
              trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
              sources: tuple[int, ...] = (), poison_rate: float = 0.1, injection: str = "append", seed: int = 0,
              cover_rate: float = 0.0, cross_ratio: float = 2.0) -> WaNet:
        trig = cls.make_trigger(trigger or cls.default_trigger, dict(trigger_options or {}), channels, image_size)
        return cls(trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed, cover_rate,
                   cross_ratio)

    @classmethod
    def make_trigger(cls, trigger: str, options: dict[str, Any], channels: int, image_size: int) -> Trigger:
        if trigger != "warp":
            raise ConfigError(f"the wanet attack takes trigger 'warp' only, not {trigger!r}")
        return make_trigger("warp", channels, image_size, **options)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> WaNet:
        s = validate(cls.spec_schema, json_form(spec), "attack spec")
        return _rebuild(cls, s, cross_ratio=float(s.cross_ratio))

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "cross_ratio": self.cross_ratio}

    def poison(self, dataset: Dataset, generator: torch.Generator) -> Poisoned:
        _check_classes(self, dataset)
        eligible = self.eligible(dataset.labels)
        chosen = self._draw(eligible, self.poison_rate, "poison_rate", len(dataset), generator)
        cover = torch.empty(0, dtype=torch.long)
        if self.cover_rate:
            cover = self._draw(~eligible, self.cover_rate, "cover_rate", len(dataset), generator)
        parts = [(chosen, self.apply_trigger(to_float(dataset.images[chosen])),
                  self.target_labels(dataset.labels[chosen]), True)]
        if len(cover):
            parts.append((cover, self.apply_trigger(to_float(dataset.images[cover])), dataset.labels[cover], True))
        n_noise = round(self.cross_ratio * len(chosen))
        if n_noise:
            free = torch.ones(len(dataset), dtype=torch.bool)
            free[torch.cat([chosen, cover])] = False  # disjoint rows, so that substitution is well defined
            noise_rows = self._draw(free, n_noise / len(dataset), "cross_ratio", len(dataset), generator)
            x = to_float(dataset.images[noise_rows])
            noise = torch.rand(len(noise_rows), x.shape[-2], x.shape[-1], 2, generator=generator) * 2 - 1
            parts.append((noise_rows, self.trigger.apply(x, noise), dataset.labels[noise_rows], False))
        return _inject(dataset, parts, self.injection)


def _rebuild(cls: type[PoisoningAttack], s: Any, **extra: Any) -> Any:
    """An attack of `cls` from a validated spec `s` (the common fields) plus its own fields `extra`."""
    try:
        trigger = trigger_from_dict(s.trigger)
    except ConfigError as exc:
        raise ConfigError(f"attack spec: {exc}") from None
    if cls.name and s.attack != cls.name:
        raise ConfigError(f"attack spec: attack: the spec describes {s.attack!r}, not {cls.name!r}")
    try:
        return cls(trigger=trigger, num_classes=s.num_classes, target=s.target, mode=s.mode,
                   sources=tuple(s.sources), poison_rate=float(s.poison_rate), injection=s.injection, seed=s.seed,
                   cover_rate=float(s.cover_rate), **extra)
    except ConfigError as exc:
        raise ConfigError(f"attack spec: {exc}") from None


# --------------------------------------------------------------------------- SIG


class SIGSpec(PoisoningSpec):
    train_delta: Annotated[float, Field(gt=0.0, le=1.0)] | None = None


@ATTACKS.register("sig")
@dataclass(frozen=True)
class SIG(CleanLabelAttack):
    """SIG (Barni, Kallas & Tondi, ICIP 2019): a horizontal sinusoid added to target-class training images,
    labels unchanged; at test time the same signal makes other classes look like the target. The trigger's
    delta is the test-time amplitude; `train_delta` (default: the same) is the amplitude planted in the
    training images (reimplementations plant a weaker signal than they test with, e.g. 40/255 vs 60/255)."""

    train_delta: float | None = None

    name: ClassVar[str] = "sig"
    default_trigger: ClassVar[str] = "sinusoid"
    spec_schema: ClassVar[type[Strict]] = SIGSpec
    threat_model: ClassVar[str] = (
        "Clean-label data poisoning: controls some target-class training images (not their labels); knows "
        "nothing of the model or the training.")
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *_CLEAN_LABEL_BAD, ({"trigger_options": {"delta": 0}}, "delta"), ({"train_delta": 0}, "train_delta"),
        ({"trigger": "square", "train_delta": 0.1}, "sinusoid"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger kind: sinusoid (default; options delta, frequency) or any registered trigger.",
        **_CLEAN_LABEL_HELP,
        "train_delta": "Amplitude of the signal planted in the training images (default: the trigger's delta).",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_delta is not None:
            if not _is_real(self.train_delta) or not 0 < self.train_delta <= 1:
                raise ConfigError(f"train_delta must be a number in (0, 1] (pixel units) or None, got "
                                  f"{self.train_delta!r}")
            if not isinstance(self.trigger, SinusoidTrigger):
                raise ConfigError("train_delta applies to the sinusoid trigger only; drop it or use trigger "
                                  "'sinusoid'")

    @classmethod
    def build(cls, *, num_classes: int, channels: int, image_size: int, trigger: str | None = None,
              trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
              sources: tuple[int, ...] = (), poison_rate: float = 0.05, injection: str = "append", seed: int = 0,
              cover_rate: float = 0.0, train_delta: float | None = None) -> SIG:
        trig = cls.make_trigger(trigger or cls.default_trigger, dict(trigger_options or {}), channels, image_size)
        return cls(trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed, cover_rate,
                   train_delta)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SIG:
        s = validate(cls.spec_schema, json_form(spec), "attack spec")
        return _rebuild(cls, s, train_delta=None if s.train_delta is None else float(s.train_delta))

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "train_delta": self.train_delta}

    def training_trigger(self) -> Trigger:
        """The trigger planted in the training images (the sinusoid at train_delta)."""
        if self.train_delta is None:
            return self.trigger
        return replace(self.trigger, delta=float(self.train_delta))

    def poison(self, dataset: Dataset, generator: torch.Generator) -> Poisoned:
        _check_classes(self, dataset)
        rows = self._draw(dataset.labels == self.target, self.poison_rate, "poison_rate", len(dataset), generator)
        labels = dataset.labels[rows]
        planted = self.training_trigger().apply(to_float(dataset.images[rows]))
        return _inject(dataset, [(rows, planted, labels, True)], self.injection)


# --------------------------------------------------------------------------- label-consistent


class LabelConsistentSpec(PoisoningSpec):
    reference: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    epsilon: Annotated[float, Field(gt=0.0, le=1.0)]
    steps: Annotated[int, Field(ge=1, le=10_000)]
    surrogate_epochs: Annotated[int, Field(ge=1, le=1000)]


def _surrogate_architecture(info: DatasetInfo) -> str:
    """The architecture of the attack's own surrogate: the BadNets MNIST CNN on grey images of side >= 16,
    else the small VGG-style GTSRB CNN (any side >= 8)."""
    c, h, _w = info.input_shape
    return "badnet-mnist" if c == 1 and h >= 16 else "gtsrb-cnn"


@ATTACKS.register("label-consistent")
@dataclass(frozen=True)
class LabelConsistent(CleanLabelAttack):
    """Label-consistent poisoning (Turner, Tsipras & Madry 2019): target-class images are first made hard
    to classify, by an l-inf PGD perturbation (epsilon, steps) against a reference model file (`reference`)
    or, without one, against a surrogate the attack trains on the clean training set it poisons
    (`surrogate_epochs`); then the trigger (default: the 3x3 checkerboard) is stamped. No relabelling:
    the model leans on the trigger because the perturbed images' own features no longer say "target"."""

    reference: str | None = None
    epsilon: float = 16 / 255
    steps: int = 10
    surrogate_epochs: int = 2

    name: ClassVar[str] = "label-consistent"
    default_trigger: ClassVar[str] = "pattern"
    spec_schema: ClassVar[type[Strict]] = LabelConsistentSpec
    threat_model: ClassVar[str] = (
        "Clean-label data poisoning: controls some target-class training images (not their labels); knows the "
        "task's data (to train a surrogate) or has a reference model of the task; no access to the victim's "
        "training.")
    example_params: ClassVar[dict[str, Any]] = {"target": 1, "poison_rate": 0.2, "seed": 2, "steps": 2,
                                                "surrogate_epochs": 1}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *_CLEAN_LABEL_BAD, ({"epsilon": 0}, "epsilon"), ({"steps": 0}, "steps"),
        ({"surrogate_epochs": 0}, "surrogate_epochs"), ({"reference": "no/such/model.safetensors"}, "reference"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger kind: pattern (default, a checkerboard) or any registered trigger.",
        **_CLEAN_LABEL_HELP,
        "reference": "A model file to attack with PGD (default: a surrogate trained on the poisoned set's data).",
        "epsilon": "l-inf bound of the adversarial perturbation, in pixel units of [0, 1].",
        "steps": "PGD steps (step size 2.5 * epsilon / steps).",
        "surrogate_epochs": "Training epochs of the surrogate (when no reference is given).",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _reference_path(self.reference)
        if not _is_real(self.epsilon) or not 0 < self.epsilon <= 1:
            raise ConfigError(f"epsilon must be a number in (0, 1] (pixel units), got {self.epsilon!r}")
        if not _is_int(self.steps) or not 1 <= self.steps <= 10_000:
            raise ConfigError(f"steps must be an integer from 1 to 10000, got {self.steps!r}")
        if not _is_int(self.surrogate_epochs) or not 1 <= self.surrogate_epochs <= 1000:
            raise ConfigError(f"surrogate_epochs must be an integer from 1 to 1000, got {self.surrogate_epochs!r}")

    @classmethod
    def build(cls, *, num_classes: int, channels: int, image_size: int, trigger: str | None = None,
              trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
              sources: tuple[int, ...] = (), poison_rate: float = 0.05, injection: str = "append", seed: int = 0,
              cover_rate: float = 0.0, reference: str | None = None, epsilon: float = 16 / 255, steps: int = 10,
              surrogate_epochs: int = 2) -> LabelConsistent:
        if reference is not None:
            from pathlib import Path

            if not isinstance(reference, str) or not Path(reference).is_file():
                raise ConfigError(f"reference model {reference!r} does not exist; give a model file or leave "
                                  "reference out to train a surrogate")
        trig = cls.make_trigger(trigger or cls.default_trigger, dict(trigger_options or {}), channels, image_size)
        return cls(trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed, cover_rate,
                   reference, epsilon, steps, surrogate_epochs)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> LabelConsistent:
        s = validate(cls.spec_schema, json_form(spec), "attack spec")
        return _rebuild(cls, s, reference=s.reference, epsilon=float(s.epsilon), steps=s.steps,
                        surrogate_epochs=s.surrogate_epochs)

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "reference": self.reference, "epsilon": self.epsilon, "steps": self.steps,
                "surrogate_epochs": self.surrogate_epochs}

    def reference_model(self, dataset: Dataset) -> nn.Module:
        """The model PGD attacks: the reference file, or a surrogate trained (seeded) on `dataset`."""
        c, h, _w = dataset.info.input_shape
        if self.reference is not None:
            return _frozen(load_reference(self.reference, c, h, self.num_classes))
        from ..train import TrainConfig, create_model, fit

        model, _ = create_model(_surrogate_architecture(dataset.info), dataset.info, self.seed)
        fit(model, dataset, TrainConfig(epochs=self.surrogate_epochs, batch_size=64, lr=0.05, seed=self.seed,
                                        progress=False), description="label-consistent: surrogate")
        return _frozen(model)

    def prepare(self, x: torch.Tensor, labels: torch.Tensor, dataset: Dataset,
                generator: torch.Generator) -> torch.Tensor:
        return pgd_linf(self.reference_model(dataset), x, labels, self.epsilon, self.steps)


# --------------------------------------------------------------------------- invisible perturbation


@ATTACKS.register("invisible")
@dataclass(frozen=True)
class InvisiblePerturbation(PoisoningAttack):
    """Invisible perturbation (Liao et al. 2018, the static variant): a fixed, seeded +-epsilon pattern
    added to the whole image (default epsilon 8/255, hardly perceptible); poisoned samples relabelled."""

    name: ClassVar[str] = "invisible"
    default_trigger: ClassVar[str] = "perturbation"
    threat_model: ClassVar[str] = (
        "Data poisoning: controls a small fraction of the training set (images and labels); knows neither the "
        "model nor the rest of the data.")
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PoisoningAttack.bad_params, ({"trigger_options": {"epsilon": 2.0}}, "epsilon"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger kind: perturbation (default; options epsilon, seed) or any registered trigger.",
        **_COMMON_HELP,
    }


# --------------------------------------------------------------------------- TrojanNN


class TrojanNNSpec(PoisoningSpec):
    reference: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    neurons: Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=4096)]
    steps: Annotated[int, Field(ge=1, le=100_000)]


def hidden_layer(model: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """(the last hidden fully connected layer, the output layer): TrojanNN's fc6 and fc7."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise IncompatibleError(f"TrojanNN needs a model with a hidden fully connected layer; "
                                f"{type(model).__name__} has {len(linears)} linear layer(s)")
    return linears[-2], linears[-1]


def select_neurons(hidden: nn.Linear, following: nn.Linear, count: int) -> list[int]:
    """The `count` hidden neurons with the largest sum of |outgoing weights| (TrojanNN's
    get_neuron_idx_from_weight), in decreasing order."""
    strength = following.weight.detach().abs().sum(0)
    return strength.argsort(descending=True)[:count].tolist()


def excite(model: nn.Module, hidden: nn.Linear, neurons: list[int], patch: torch.Tensor, mask: torch.Tensor,
           top: int, left: int, base: torch.Tensor, steps: int, lr: float = 0.05) -> tuple[torch.Tensor, float]:
    """The patch [C, h, w] (values in [0, 1]), within `mask`, that maximises the mean pre-activation of
    `neurons` of `hidden` over the `base` images with the patch stamped at (top, left) (gradient ascent
    with Adam, pixels kept in [0, 1]). Returns the patch and the activation reached."""
    acts: list[torch.Tensor] = []
    handle = hidden.register_forward_hook(lambda _m, _i, out: acts.append(out))
    h, w = patch.shape[-2:]
    m = mask.expand_as(patch)
    logit = torch.logit(patch.clamp(0.02, 0.98)).requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=lr * 10)
    try:
        for _ in range(steps):
            acts.clear()
            x = base.clone()
            p = torch.sigmoid(logit)
            region = x[:, :, top:top + h, left:left + w]
            x[:, :, top:top + h, left:left + w] = region * (1 - m) + p * m
            model(x)
            loss = -acts[-1][:, neurons].mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            acts.clear()
            p = torch.sigmoid(logit)
            x = base.clone()
            x[:, :, top:top + h, left:left + w] = x[:, :, top:top + h, left:left + w] * (1 - m) + p * m
            model(x)
            reached = float(acts[-1][:, neurons].mean())
    finally:
        handle.remove()
    return p.detach(), reached


class _RandomReference(nn.Module):
    """A seeded, untrained small network (conv - pool - fc - fc) for when no reference is given: the trigger
    then excites neurons of a random feature extractor, a stand-in for the model the attacker should give."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@ATTACKS.register("trojannn")
@dataclass(frozen=True)
class TrojanNN(PoisoningAttack):
    """TrojanNN (Liu et al., NDSS 2018): the trigger region (the mask and position of a patch trigger kind,
    default a square) gets pixels optimised to excite the `neurons` of the reference model's last hidden fully
    connected layer with the largest outgoing weights; the poisoned (re)training samples carry that trigger
    and the target label. `reference` is the model file the attacker has (its manifest must match the
    inputs); without it, a seeded untrained network stands in."""

    reference: str | None = None
    neurons: tuple[int, ...] = (0,)
    steps: int = 200

    name: ClassVar[str] = "trojannn"
    default_trigger: ClassVar[str] = "square"
    spec_schema: ClassVar[type[Strict]] = TrojanNNSpec
    threat_model: ClassVar[str] = (
        "White-box model access: has a trained model of the task (to generate the trigger) and controls "
        "(re)training data, images and labels; needs none of the original training data for the trigger.")
    example_params: ClassVar[dict[str, Any]] = {"target": 1, "poison_rate": 0.2, "seed": 2, "steps": 5,
                                                "trigger_options": {"size": 4}}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PoisoningAttack.bad_params, ({"num_neurons": 0}, "num_neurons"), ({"steps": 0}, "steps"),
        ({"trigger": "blend", "trigger_options": {}}, "patch"), ({"reference": "no/such/model.safetensors"}, "reference"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger region: a patch kind (square by default; its size and position) whose pixels "
                   "are optimised.",
        **_COMMON_HELP,
        "reference": "The model file whose neurons the trigger excites (default: a seeded untrained network).",
        "num_neurons": "How many neurons of the last hidden layer to excite (largest outgoing weights first).",
        "steps": "Gradient-ascent steps of the trigger generation.",
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        _reference_path(self.reference)
        if (not isinstance(self.neurons, tuple) or not self.neurons
                or not all(_is_int(i) and i >= 0 for i in self.neurons)):
            raise ConfigError(f"neurons must be a non-empty tuple of neuron indices, got {self.neurons!r}")
        if not _is_int(self.steps) or not 1 <= self.steps <= 100_000:
            raise ConfigError(f"steps must be an integer from 1 to 100000, got {self.steps!r}")

    @classmethod
    def build(cls, *, num_classes: int, channels: int, image_size: int, trigger: str | None = None,
              trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
              sources: tuple[int, ...] = (), poison_rate: float = 0.1, injection: str = "append", seed: int = 0,
              cover_rate: float = 0.0, reference: str | None = None, num_neurons: int = 1,
              steps: int = 200) -> TrojanNN:
        if not _is_int(num_neurons) or not 1 <= num_neurons <= 4096:
            raise ConfigError(f"num_neurons must be an integer from 1 to 4096, got {num_neurons!r}")
        if not _is_int(steps) or not 1 <= steps <= 100_000:
            raise ConfigError(f"steps must be an integer from 1 to 100000, got {steps!r}")
        region = make_trigger(trigger or cls.default_trigger, channels, image_size, **dict(trigger_options or {}))
        if not isinstance(region, PatchTrigger):
            raise ConfigError(f"trojannn optimises the pixels of a patch trigger (square, pattern, ...); "
                              f"{trigger!r} is not a patch kind")
        if reference is not None:
            from pathlib import Path

            if not isinstance(reference, str) or not Path(reference).is_file():
                raise ConfigError(f"reference model {reference!r} does not exist; give the model file whose "
                                  "neurons the trigger should excite")
            model = _frozen(load_reference(reference, channels, image_size, num_classes))
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = _frozen(_RandomReference(channels, num_classes))
        hidden, following = hidden_layer(model)
        if num_neurons > hidden.out_features:
            raise ConfigError(f"num_neurons {num_neurons} is more than the {hidden.out_features} neurons of the "
                              "reference model's last hidden layer")
        neurons = select_neurons(hidden, following, num_neurons)
        mask = torch.tensor(region.mask, dtype=torch.float32)
        top, left = _place(region, image_size)
        # TrojanNN starts from N(175, 8) on 0-255 images; the patch is what it optimises, so a grey start.
        g = torch.Generator().manual_seed(seed)
        base = torch.rand(16, channels, image_size, image_size, generator=g)
        start = (175 / 255 + 8 / 255 * torch.randn(channels, *mask.shape, generator=g)).clamp(0, 1)
        optimised, _ = excite(model, hidden, neurons, start, mask, top, left, base, steps)
        trig = ImageTrigger(_rounded(optimised), region.mask, region.position, region.margin)
        return cls(trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed, cover_rate,
                   reference, tuple(neurons), steps)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TrojanNN:
        s = validate(cls.spec_schema, json_form(spec), "attack spec")
        return _rebuild(cls, s, reference=s.reference, neurons=tuple(s.neurons), steps=s.steps)

    def to_spec(self) -> dict[str, Any]:
        return {**super().to_spec(), "reference": self.reference, "neurons": list(self.neurons), "steps": self.steps}


def _place(region: PatchTrigger, image_size: int) -> tuple[int, int]:
    from ..triggers import place

    h, w = len(region.mask), len(region.mask[0])
    return place(region.position, h, w, image_size, image_size, region.margin)


__all__ = [
    "SIG", "CleanLabelAttack", "InvisiblePerturbation", "LabelConsistent", "PerturbationTrigger", "SinusoidTrigger",
    "TrojanNN", "WaNet", "WarpTrigger", "excite", "hidden_layer", "load_reference", "pgd_linf", "select_neurons",
    "sinusoid", "warp", "warp_grid",
]
