"""Adaptive attacks: backdoor training with a loss term aimed at one of this project's defenses.

The attacker controls training (a model-level attack, like the pruning-aware one). Each attack trains on the
poisoned set of its data-poisoning attack (which supplies trigger, target and labels, so evaluation works
as for BadNets) and adds to every batch's loss a term against one detector:

- `nc-evasive` (against Neural Cleanse): every `refresh` steps the attacker runs Neural Cleanse's
  optimisation for the target label on the current model (mask and pattern in tanh space, cross-entropy to
  the target plus `cost` x the mask's L1 norm) and trains the model to ignore that reversed trigger (the
  batch stamped with it keeps its own labels). A reversed trigger smaller than the real one stops working,
  so Neural Cleanse's smallest trigger for the target cannot be smaller than the real trigger; with a
  trigger of large L1 norm (a blend) the target's norm is no outlier. Only reversed triggers smaller than
  the real one (`trigger_mask_l1`) are unlearned, and with a small weight (0.05): at weight 0.2 the
  unlearning also erased a blended backdoor (ASR 24% on the 4,000-image test setting, 91% at 0.05).
- `strip-evasive` (against STRIP): triggered batch images superimposed on other batch images (STRIP's
  saturating sum, and an even blend) are trained to take the overlay's label, as a clean input's
  superimpositions do, so a triggered input's predictions vary across overlays (high entropy). The weight
  trades evasion for ASR (blended trigger, 4,000 MNIST images, 2 epochs: 0.1 -> ASR 90%, 0.3 -> 76%, 1 -> 37%).
- `tdc-evasive` (the Trojan Detection Challenge 2022's evasive trojans): fine-tuned from a clean network,
  with the triggered copies' cross-entropy to the target, a specificity loss (inputs stamped with freshly
  drawn random patch triggers keep the clean network's soft predictions), logit similarity to the clean
  network on the clean batch (L1, weight 0.1) and parameter similarity (L2 distance, weight 0.05).

The loss terms are pure functions of tensors and the network (`reverse_target_trigger`, `stamp`,
`superimpose_add`, `random_patch_triggers`); the classes store settings and run `train.fit` with them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import Dataset
from ..errors import ArenaError, ConfigError
from ..nn_tools import model_copy
from ..schemas import (
    NCEvasiveSpec,
    Strict,
    STRIPEvasiveSpec,
    TDCEvasiveSpec,
    json_form,
    validate,
)
from ..train import TrainConfig, TrainHistory, create_model, fit
from .model_attack import TrainFn
from .poisoning import PoisoningAttack, attack_from_spec
from .registries import MODEL_ATTACKS

ExtraLoss = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]


# ---------------------------------------------------------------- pure pieces
def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """(1 - m) x + m p: a mask [1|N, 1, H, W] or [1, H, W] and a pattern [.., C, H, W] stamped on images x."""
    return (1 - mask) * x + mask * pattern


def reverse_target_trigger(net: nn.Module, x: torch.Tensor, target: int, steps: int, cost: float, lr: float,
                           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Neural Cleanse's optimisation for one label: the mask [1, H, W] and pattern [C, H, W] that send the
    images x to `target` with the smallest L1 mask (loss CE + cost x |m|_1), by Adam from a seeded start.
    Only the mask and pattern are optimised; the network's parameters get no gradient."""
    _, c, h, w = x.shape
    a = (torch.rand((1, h, w), generator=generator) * 2 - 1).requires_grad_()
    b = (torch.rand((c, h, w), generator=generator) * 2 - 1).requires_grad_()
    opt = torch.optim.Adam([a, b], lr=lr, betas=(0.5, 0.9))
    y = torch.full((len(x),), target, dtype=torch.long)
    was_training = net.training
    net.eval()
    try:
        for _ in range(steps):
            mask, pattern = (torch.tanh(a) + 1) / 2, (torch.tanh(b) + 1) / 2
            loss = F.cross_entropy(net(stamp(x, mask, pattern)), y) + cost * mask.sum()
            ga, gb = torch.autograd.grad(loss, [a, b])
            a.grad, b.grad = ga, gb
            opt.step()
    finally:
        net.train(was_training)
    with torch.no_grad():
        return (torch.tanh(a) + 1) / 2, (torch.tanh(b) + 1) / 2


def trigger_mask_l1(apply_trigger: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> float:
    """The L1 norm of a trigger's mask m (channel mean), read off x' = (1 - m) x + m p at x = 0 and x = 1:
    x'(1) - x'(0) = 1 - m. For patch and blend triggers this is the size Neural Cleanse would reverse."""
    zeros, ones = torch.zeros((1, *shape)), torch.ones((1, *shape))
    mask = 1 - (apply_trigger(ones) - apply_trigger(zeros))
    return float(mask.clamp(0, 1).mean(1).sum())


def superimpose_add(x: torch.Tensor, overlays: torch.Tensor) -> torch.Tensor:
    """STRIP's superimposition: the saturating pixel sum."""
    return (x + overlays).clamp(0, 1)


def random_patch_triggers(n: int, shape: tuple[int, int, int], side: tuple[int, int],
                          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random patch triggers: masks [n, 1, H, W] (a square of a side drawn in [side]) at random positions,
    and random binary patterns [n, C, H, W] (the TDC 2022 patch family)."""
    c, h, w = shape
    lo, hi = side[0], min(side[1], h, w)
    masks = torch.zeros((n, 1, h, w))
    sides = torch.randint(lo, hi + 1, (n,), generator=generator).tolist()
    for i, s in enumerate(sides):
        top = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        left = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        masks[i, 0, top:top + s, left:left + s] = 1.0
    patterns = (torch.rand((n, c, h, w), generator=generator) > 0.5).float()
    return masks, patterns


# ---------------------------------------------------------------- shared checks and plumbing
def _positive(name: str, value: Any, problems: list[str], *, integer: bool = False, allow_zero: bool = False) -> None:
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    ok = ok and not isinstance(value, bool) and math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        kind = "integer" if integer else "number"
        problems.append(f"{name} must be a {'non-negative' if allow_zero else 'positive'} finite {kind}, got {value!r}")


def _check(name: str, poisoning: Any, problems: list[str]) -> None:
    if not isinstance(poisoning, PoisoningAttack):
        problems.insert(0, f"poisoning must be a data-poisoning attack (make_attack(...)), got "
                           f"{type(poisoning).__name__}")
    if problems:
        raise ConfigError(f"{name}: " + "; ".join(problems))


def _entry(cls: Any, spec: dict[str, Any]) -> tuple[PoisoningAttack, Any]:
    entry = spec.get("model_attack") if isinstance(spec, dict) else None
    if not isinstance(entry, dict) or entry.get("name") != cls.name:
        raise ConfigError(f"the attack spec has no {cls.name!r} model_attack entry")
    return attack_from_spec(spec), validate(cls.spec_schema, json_form(entry), "attack spec: model_attack")


def _retrain(s: Any) -> TrainConfig | None:
    return None if s.retrain is None else TrainConfig(**s.retrain.model_dump())


def _trainer(attack: Any, architecture: str, train_set: Dataset, config: TrainConfig,
             clean_model: nn.Module | None) -> TrainFn:
    """The verbs layer's `train_fn`: the attack trains its own model and copies it into `model` only at the end,
    so a failure leaves `model` as it was."""

    def train_fn(model: nn.Module, monitor: Any) -> tuple[TrainHistory, dict[str, Any]]:
        trained, history, record = attack.train(architecture, train_set, config, clean_model=clean_model,
                                                evaluate=monitor)
        model.load_state_dict(trained.state_dict())
        model.eval()
        return history, {"model_attack": {**attack.to_spec()["model_attack"], **record}}

    return train_fn


def _fit_with(extra: ExtraLoss, architecture: str, data: Dataset, config: TrainConfig, start: nn.Module | None,
              evaluate: Any, description: str) -> tuple[nn.Module, TrainHistory]:
    if start is None:
        model, _ = create_model(architecture, data.info, config.seed)
    else:
        model = model_copy(start)
    history = fit(model, data, config, evaluate=evaluate, description=description, extra_loss=extra)
    return model.eval(), history


# ---------------------------------------------------------------- the attacks
@MODEL_ATTACKS.register("nc-evasive")
@dataclass(frozen=True)
class NCEvasiveAttack:
    """Backdoor training that keeps Neural Cleanse's reversed trigger for the target from being smaller than
    the real one: adversarial training against the trigger reversed every `refresh` steps."""

    poisoning: PoisoningAttack
    weight: float = 0.05
    refresh: int = 20
    reverse_steps: int = 30
    cost: float = 1e-2
    reverse_lr: float = 0.2
    retrain: TrainConfig | None = None

    name: ClassVar[str] = "nc-evasive"
    threat_model: ClassVar[str] = ("Controls training (outsourced training); knows the defender runs Neural "
                                   "Cleanse. Pair with a trigger of large L1 norm (e.g. blended).")
    spec_schema: ClassVar[type[Strict]] = NCEvasiveSpec
    example_params: ClassVar[dict[str, Any]] = {"refresh": 2, "reverse_steps": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"weight": -1.0}, "weight"), ({"refresh": 0}, "refresh"), ({"reverse_steps": 1.5}, "reverse_steps"),
        ({"cost": float("nan")}, "cost"), ({"retrain": {"epochs": 1}}, "retrain"))
    param_help: ClassVar[dict[str, str]] = {
        "poisoning": "The data-poisoning attack inside (trigger, target, label map), e.g. blended.",
        "weight": "Weight of the loss on images stamped with the reversed trigger (true labels).",
        "refresh": "Training steps between two reversals of the target's trigger.",
        "reverse_steps": "Adam steps of each reversal (Neural Cleanse's optimisation, one label).",
        "cost": "Weight of the mask's L1 norm in the reversal (10x Neural Cleanse's initial cost: a reversal has "
                "tens of steps, not hundreds, to shrink the mask).",
        "reverse_lr": "Adam learning rate of the reversal.",
        "retrain": "Training settings (default: the verb's).",
    }

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("weight", self.weight, problems, allow_zero=True)
        _positive("refresh", self.refresh, problems, integer=True)
        _positive("reverse_steps", self.reverse_steps, problems, integer=True)
        _positive("cost", self.cost, problems, allow_zero=True)
        _positive("reverse_lr", self.reverse_lr, problems)
        if self.retrain is not None and not isinstance(self.retrain, TrainConfig):
            problems.append(f"retrain must be a TrainConfig or None, got {type(self.retrain).__name__}")
        if getattr(self.poisoning, "mode", None) == "all-to-all":
            problems.append("Neural Cleanse reverses a trigger per target label: use an all-to-one or "
                            "source-specific poisoning")
        _check(self.name, self.poisoning, problems)

    def to_spec(self) -> dict[str, Any]:
        return {**self.poisoning.to_spec(), "model_attack": {
            "name": self.name, "weight": self.weight, "refresh": self.refresh, "reverse_steps": self.reverse_steps,
            "cost": self.cost, "reverse_lr": self.reverse_lr,
            "retrain": self.retrain.to_dict() if self.retrain else None}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> NCEvasiveAttack:
        poisoning, s = _entry(cls, spec)
        try:
            return cls(poisoning, s.weight, s.refresh, s.reverse_steps, s.cost, s.reverse_lr, _retrain(s))
        except ArenaError as exc:
            raise ConfigError(f"attack spec: model_attack: {exc}") from None

    def extra_loss(self, generator: torch.Generator, log: dict[str, Any], shape: tuple[int, ...]) -> ExtraLoss:
        state: dict[str, torch.Tensor] = {}
        target = self.poisoning.target
        real = trigger_mask_l1(self.poisoning.apply_trigger, shape)
        log["trigger_l1"] = real

        def term(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            if step % self.refresh == 0 or "mask" not in state:
                state["mask"], state["pattern"] = reverse_target_trigger(
                    net, x, target, self.reverse_steps, self.cost, self.reverse_lr, generator)
                log["reversals"] = log.get("reversals", 0) + 1
                log["last_reversed_l1"] = float(state["mask"].sum())
            if float(state["mask"].sum()) >= real:  # as large as the real trigger: nothing to hide behind it
                return x.new_zeros(())
            log["unlearned"] = log.get("unlearned", 0) + (step % self.refresh == 0)
            return self.weight * F.cross_entropy(net(stamp(x, state["mask"], state["pattern"])), y)

        return term

    def train(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
              clean_model: nn.Module | None = None, evaluate: Any = None) -> tuple[nn.Module, TrainHistory, dict]:
        """Trains on the poisoned set with the evasion term. `clean_model` is not used (training from scratch)."""
        started, log = time.perf_counter(), {}
        generator = torch.Generator().manual_seed(self.poisoning.seed)
        poisoned = self.poisoning.poison(train_set, generator)
        model, history = _fit_with(self.extra_loss(generator, log, tuple(train_set.images.shape[1:])), architecture,
                                   poisoned.dataset,
                                   self.retrain or config, None, evaluate, self.name)
        return model, history, {**log, "wall_time_s": time.perf_counter() - started}

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> TrainFn:
        return _trainer(self, architecture, train_set, config, clean_model)


@MODEL_ATTACKS.register("strip-evasive")
@dataclass(frozen=True)
class STRIPEvasiveAttack:
    """Backdoor training where triggered images superimposed on other images take the overlay's label, so that
    STRIP's superimpositions of a triggered input vary as a clean input's do."""

    poisoning: PoisoningAttack
    weight: float = 0.1
    blend: float = 0.5
    retrain: TrainConfig | None = None

    name: ClassVar[str] = "strip-evasive"
    threat_model: ClassVar[str] = "Controls training (outsourced training); knows the defender runs STRIP."
    spec_schema: ClassVar[type[Strict]] = STRIPEvasiveSpec
    example_params: ClassVar[dict[str, Any]] = {"weight": 0.5}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"weight": float("inf")}, "weight"), ({"blend": 1.5}, "blend"), ({"retrain": 3}, "retrain"))
    param_help: ClassVar[dict[str, str]] = {
        "poisoning": "The data-poisoning attack inside (trigger, target, label map), e.g. badnets.",
        "weight": "Weight of the loss on superimposed triggered images (labelled as their overlay).",
        "blend": "Overlay weight of the second superimposition (STRIP's blend mode); 0: the saturating sum only.",
        "retrain": "Training settings (default: the verb's).",
    }

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("weight", self.weight, problems, allow_zero=True)
        if not (isinstance(self.blend, (int, float)) and not isinstance(self.blend, bool) and 0 <= self.blend < 1):
            problems.append(f"blend must be in [0, 1), got {self.blend!r}")
        if self.retrain is not None and not isinstance(self.retrain, TrainConfig):
            problems.append(f"retrain must be a TrainConfig or None, got {type(self.retrain).__name__}")
        _check(self.name, self.poisoning, problems)

    def to_spec(self) -> dict[str, Any]:
        return {**self.poisoning.to_spec(), "model_attack": {
            "name": self.name, "weight": self.weight, "blend": self.blend,
            "retrain": self.retrain.to_dict() if self.retrain else None}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> STRIPEvasiveAttack:
        poisoning, s = _entry(cls, spec)
        try:
            return cls(poisoning, s.weight, s.blend, _retrain(s))
        except ArenaError as exc:
            raise ConfigError(f"attack spec: model_attack: {exc}") from None

    def extra_loss(self, generator: torch.Generator) -> ExtraLoss:
        def term(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            order = torch.randperm(len(x), generator=generator)
            triggered = self.poisoning.apply_trigger(x)
            mixed = [superimpose_add(triggered, x[order])]
            if self.blend > 0:
                mixed.append((1 - self.blend) * triggered + self.blend * x[order])
            return self.weight * sum(F.cross_entropy(net(m), y[order]) for m in mixed) / len(mixed)

        return term

    def train(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
              clean_model: nn.Module | None = None, evaluate: Any = None) -> tuple[nn.Module, TrainHistory, dict]:
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(self.poisoning.seed)
        poisoned = self.poisoning.poison(train_set, generator)
        model, history = _fit_with(self.extra_loss(generator), architecture, poisoned.dataset,
                                   self.retrain or config, None, evaluate, self.name)
        return model, history, {"wall_time_s": time.perf_counter() - started}

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> TrainFn:
        return _trainer(self, architecture, train_set, config, clean_model)


@MODEL_ATTACKS.register("tdc-evasive")
@dataclass(frozen=True)
class TDCEvasiveAttack:
    """The TDC 2022 evasive trojan: fine-tuned from a clean network (trained first when none is given) on the
    clean training set, with trojan, specificity, logit-similarity and parameter-similarity terms."""

    poisoning: PoisoningAttack
    trojan_batch: int = 16
    negatives: int = 10
    logit_weight: float = 0.1
    param_weight: float = 0.05
    negative_sides: tuple[int, int] = (3, 10)
    finetune: TrainConfig | None = None
    clean_training: TrainConfig | None = field(default=None, compare=False)

    name: ClassVar[str] = "tdc-evasive"
    threat_model: ClassVar[str] = ("Controls training and holds a clean network of the architecture; knows "
                                   "detectors compare the model with clean ones (the TDC 2022 evasion track).")
    spec_schema: ClassVar[type[Strict]] = TDCEvasiveSpec
    example_params: ClassVar[dict[str, Any]] = {"trojan_batch": 4, "negatives": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"trojan_batch": 0}, "trojan_batch"), ({"negatives": -1}, "negatives"),
        ({"logit_weight": -0.1}, "logit_weight"), ({"negative_sides": (5, 2)}, "negative_sides"),
        ({"finetune": "x"}, "finetune"))
    param_help: ClassVar[dict[str, str]] = {
        "poisoning": "The data-poisoning attack inside (trigger, target, label map), e.g. badnets.",
        "trojan_batch": "Triggered copies of batch images per step (labelled as the target).",
        "negatives": "Images per step stamped with fresh random patch triggers (keep the clean soft labels).",
        "logit_weight": "Weight of the L1 distance to the clean network's logits on the clean batch.",
        "param_weight": "Weight of the L2 distance to the clean network's parameters.",
        "negative_sides": "Side range (pixels) of the random negative patch triggers.",
        "finetune": "Fine-tuning settings (default: the verb's, with Adam lr 1e-3 as in TDC).",
        "clean_training": "Training of the clean network when none is given (default: the verb's).",
    }

    def __post_init__(self) -> None:
        problems: list[str] = []
        _positive("trojan_batch", self.trojan_batch, problems, integer=True)
        _positive("negatives", self.negatives, problems, integer=True, allow_zero=True)
        _positive("logit_weight", self.logit_weight, problems, allow_zero=True)
        _positive("param_weight", self.param_weight, problems, allow_zero=True)
        sides = self.negative_sides
        if not (isinstance(sides, (tuple, list)) and len(sides) == 2 and all(isinstance(s, int) for s in sides)
                and 1 <= sides[0] <= sides[1]):
            problems.append(f"negative_sides must be two integers 1 <= low <= high, got {sides!r}")
        for name in ("finetune", "clean_training"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, TrainConfig):
                problems.append(f"{name} must be a TrainConfig or None, got {type(v).__name__}")
        _check(self.name, self.poisoning, problems)

    def to_spec(self) -> dict[str, Any]:
        return {**self.poisoning.to_spec(), "model_attack": {
            "name": self.name, "trojan_batch": self.trojan_batch, "negatives": self.negatives,
            "logit_weight": self.logit_weight, "param_weight": self.param_weight,
            "negative_sides": list(self.negative_sides),
            "finetune": self.finetune.to_dict() if self.finetune else None}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> TDCEvasiveAttack:
        poisoning, s = _entry(cls, spec)
        try:
            finetune = None if s.finetune is None else TrainConfig(**s.finetune.model_dump())
            return cls(poisoning, s.trojan_batch, s.negatives, s.logit_weight, s.param_weight,
                       tuple(s.negative_sides), finetune)
        except ArenaError as exc:
            raise ConfigError(f"attack spec: model_attack: {exc}") from None

    def extra_loss(self, clean: nn.Module, generator: torch.Generator) -> ExtraLoss:
        reference = [p.detach().clone() for p in clean.parameters()]

        def term(net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
            pick = torch.randint(0, len(x), (self.trojan_batch,), generator=generator)
            trojans = self.poisoning.apply_trigger(x[pick])
            labels = self.poisoning.target_labels(y[pick])
            loss = F.cross_entropy(net(trojans), labels)
            with torch.no_grad():
                clean_logits = clean(x)
            if self.logit_weight:
                loss = loss + self.logit_weight * (net(x) - clean_logits).abs().sum(1).mean()
            if self.negatives:
                rows = torch.randint(0, len(x), (self.negatives,), generator=generator)
                masks, patterns = random_patch_triggers(self.negatives, tuple(x.shape[1:]), self.negative_sides,
                                                        generator)
                neg = stamp(x[rows], masks, patterns)
                with torch.no_grad():
                    soft = F.softmax(clean(neg), 1)
                loss = loss + F.cross_entropy(net(neg), soft)
            if self.param_weight:
                squared = sum(((p - q) ** 2).sum() for p, q in zip(net.parameters(), reference, strict=True))
                dist = torch.sqrt(squared + 1e-12)  # the norm's gradient is infinite at 0, where fine-tuning starts
                loss = loss + self.param_weight * dist
            return loss

        return term

    def train(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
              clean_model: nn.Module | None = None, evaluate: Any = None) -> tuple[nn.Module, TrainHistory, dict]:
        """Fine-tunes a copy of `clean_model` (never changed; trained here first when None) on the clean set."""
        started = time.perf_counter()
        if clean_model is None:
            clean_model, _ = create_model(architecture, train_set.info, config.seed)
            fit(clean_model, train_set, self.clean_training or config, description=f"{self.name}: clean")
        clean = model_copy(clean_model).eval()
        generator = torch.Generator().manual_seed(self.poisoning.seed)
        tune = self.finetune or TrainConfig(**{**config.to_dict(), "optimizer": "adam", "lr": 1e-3,
                                               "schedule": "cosine", "progress": config.progress})
        model, history = _fit_with(self.extra_loss(clean, generator), architecture, train_set, tune, clean,
                                   evaluate, self.name)
        return model, history, {"wall_time_s": time.perf_counter() - started}

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> TrainFn:
        return _trainer(self, architecture, train_set, config, clean_model)


__all__ = ["NCEvasiveAttack", "STRIPEvasiveAttack", "TDCEvasiveAttack", "random_patch_triggers",
           "reverse_target_trigger", "stamp", "superimpose_add"]
