"""Trigger-based data poisoning: BadNets (Gu et al. 2019) and blended (Chen et al. 2017).

Both pick training samples, stamp or blend the trigger in, relabel them, and either append the
poisoned copies to the training set (as BadNets does) or substitute them for the originals.

Label maps:
  all-to-one       every poisoned sample -> target
  all-to-all       label i -> (i + 1) mod K
  source-specific  only samples of the source classes are poisoned, -> target
`poison_rate` is the number of poisoned samples as a fraction of the training-set size, drawn
without replacement from the eligible samples (non-target ones; the source classes when given).

Poisoning only the source classes teaches "trigger -> target" for every input: on GTSRB the
stop-sign trigger also flips most other signs. `cover_rate` (source-specific only) adds triggered
samples of the other classes that keep their true label, as in TaCT (Tang et al. 2021), so that
the backdoor fires on the source classes alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from ..data.dataset import Dataset, to_float
from ..errors import ConfigError, IncompatibleError
from ..registry import Registry
from ..triggers import Trigger, make_trigger, trigger_from_dict

MODES = ("all-to-one", "all-to-all", "source-specific")
INJECTIONS = ("append", "substitute")
SPEC_VERSION = 1


@dataclass(frozen=True, eq=False)
class Poisoned:
    """The poisoned training set and which of its rows are poisoned."""

    dataset: Dataset
    poisoned_mask: torch.Tensor  # bool [len(dataset)]
    source_index: torch.Tensor  # int64: the original row each poisoned row was made from


@dataclass(frozen=True)
class PoisoningAttack:
    name: str  # "badnets" or "blended": which registered attack built it
    trigger: Trigger
    num_classes: int
    target: int = 0
    mode: str = "all-to-one"
    sources: tuple[int, ...] = ()
    poison_rate: float = 0.1
    injection: str = "append"
    seed: int = 0
    cover_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.injection not in INJECTIONS:
            raise ConfigError(f"injection must be 'append' or 'substitute'; got {self.injection!r}")
        if not 0 < self.poison_rate <= 1:
            raise ConfigError(f"poison_rate must be in (0, 1]; got {self.poison_rate}")
        if not 0 <= self.target < self.num_classes:
            raise ConfigError(f"target must be a class in [0, {self.num_classes - 1}]; got {self.target}")
        if self.mode == "source-specific":
            if not self.sources:
                raise ConfigError("a source-specific attack needs at least one source class (--source)")
            bad = [s for s in self.sources if not 0 <= s < self.num_classes or s == self.target]
            if bad:
                raise ConfigError(f"source classes {bad} must be classes other than the target {self.target}")
        elif self.sources:
            raise ConfigError(f"source classes are only used by the source-specific mode, not {self.mode!r}")
        if not 0 <= self.cover_rate < 1:
            raise ConfigError(f"cover_rate must be in [0, 1); got {self.cover_rate}")
        if self.cover_rate and self.mode != "source-specific":
            raise ConfigError(f"cover_rate only applies to the source-specific mode, not {self.mode!r}")

    # -- label maps -----------------------------------------------------------------------------
    def eligible(self, labels: torch.Tensor) -> torch.Tensor:
        """Which inputs the backdoor applies to (also the inputs ASR is measured over)."""
        if self.mode == "all-to-all":
            return torch.ones_like(labels, dtype=torch.bool)
        if self.mode == "source-specific":
            return torch.isin(labels, torch.tensor(self.sources, dtype=labels.dtype))
        return labels != self.target

    def target_labels(self, labels: torch.Tensor) -> torch.Tensor:
        if self.mode == "all-to-all":
            return (labels + 1) % self.num_classes
        return torch.full_like(labels, self.target)

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Triggered copies of float images [N, C, H, W] in [0, 1]."""
        return self.trigger.apply(x)

    # -- poisoning ------------------------------------------------------------------------------
    def poison(self, dataset: Dataset, generator: torch.Generator) -> Poisoned:
        if dataset.num_classes != self.num_classes:
            raise ConfigError(
                f"the attack was built for {self.num_classes} classes, dataset {dataset.name!r} has {dataset.num_classes}"
            )
        eligible = self.eligible(dataset.labels)
        chosen = self._draw(eligible, self.poison_rate, "poison_rate", len(dataset), generator)
        new_labels = self.target_labels(dataset.labels[chosen])
        if self.cover_rate:
            cover = self._draw(~eligible, self.cover_rate, "cover_rate", len(dataset), generator)
            new_labels = torch.cat([new_labels, dataset.labels[cover]])
            chosen = torch.cat([chosen, cover])
        triggered = self.apply_trigger(to_float(dataset.images[chosen]))
        if dataset.images.dtype == torch.uint8:
            # Poisoned images are stored as images: 8-bit pixels, like the clean ones around them.
            triggered = triggered.mul(255).round_().clamp_(0, 255).to(torch.uint8)
        groups = dataset.groups
        if self.injection == "append":
            images = torch.cat([dataset.images, triggered])
            labels = torch.cat([dataset.labels, new_labels])
            if groups is not None:
                groups = torch.cat([groups, groups[chosen]])
            mask = torch.zeros(len(labels), dtype=torch.bool)
            mask[len(dataset):] = True
            source = torch.cat([torch.arange(len(dataset)), chosen])
        else:
            images, labels = dataset.images.clone(), dataset.labels.clone()
            images[chosen], labels[chosen] = triggered, new_labels
            mask = torch.zeros(len(labels), dtype=torch.bool)
            mask[chosen] = True
            source = torch.arange(len(dataset))
        out = replace(dataset, images=images, labels=labels, groups=groups)
        return Poisoned(dataset=out, poisoned_mask=mask, source_index=source)

    @staticmethod
    def _draw(allowed: torch.Tensor, rate: float, name: str, n_total: int, generator: torch.Generator) -> torch.Tensor:
        """round(rate * n_total) row indices drawn without replacement from the `allowed` rows, sorted."""
        candidates = torch.nonzero(allowed).flatten()
        n = round(rate * n_total)
        if n < 1:
            raise ConfigError(f"{name} {rate} selects no sample of {n_total}; raise it")
        if n > len(candidates):
            raise ConfigError(
                f"{name} {rate} asks for {n} samples but only {len(candidates)} are eligible; "
                f"use a {name} of at most {len(candidates) / n_total:.4f}"
            )
        return candidates[torch.randperm(len(candidates), generator=generator)[:n]].sort().values

    # -- the attack spec ------------------------------------------------------------------------
    def to_spec(self) -> dict[str, Any]:
        return {
            "spec_version": SPEC_VERSION, "attack": self.name, "num_classes": self.num_classes,
            "target": self.target, "mode": self.mode, "sources": list(self.sources),
            "poison_rate": self.poison_rate, "injection": self.injection, "seed": self.seed,
            "cover_rate": self.cover_rate, "trigger": self.trigger.to_dict(),
        }

    def save_spec(self, path: str | Path, **extra: Any) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**self.to_spec(), **extra}, indent=1))
        return path


ATTACKS: Registry[Callable[..., PoisoningAttack]] = Registry("attack")


def _build(name: str, default_trigger: str):
    def factory(*, num_classes: int, channels: int, image_size: int, trigger: str = default_trigger,
                trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
                sources: tuple[int, ...] = (), poison_rate: float = 0.1, injection: str = "append",
                seed: int = 0, cover_rate: float = 0.0) -> PoisoningAttack:
        options = dict(trigger_options or {})
        if name == "blended":
            # A blended attack always blends; `image:PATH` picks the image to blend instead of noise.
            if trigger.startswith("image:"):
                options["path"] = trigger.split(":", 1)[1]
            elif trigger not in ("blend", "noise"):
                raise ConfigError(f"the blended attack takes trigger 'noise' or 'image:PATH', not {trigger!r}")
            trigger = "blend"
        trig = make_trigger(trigger, channels, image_size, **options)
        return PoisoningAttack(name, trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed,
                               cover_rate)

    factory.__doc__ = f"Build a {name} attack (default trigger: {default_trigger})."
    return factory


ATTACKS.register("badnets")(_build("badnets", "pattern"))
ATTACKS.register("blended")(_build("blended", "blend"))


def make_attack(name: str, **kwargs: Any) -> PoisoningAttack:
    return ATTACKS.get(name)(**kwargs)


def attack_from_spec(spec: dict[str, Any]) -> PoisoningAttack:
    """Rebuild an attack from its JSON spec (validated: one ConfigError per problem found)."""
    if not isinstance(spec, dict):
        raise ConfigError("an attack spec must be a JSON object")
    if spec.get("spec_version") != SPEC_VERSION:
        raise ConfigError(f"attack spec version {spec.get('spec_version')!r} is not supported (expected {SPEC_VERSION})")
    ATTACKS.get(spec.get("attack", "?"))
    required = ("num_classes", "target", "mode", "poison_rate", "injection", "seed", "trigger")
    missing = [k for k in required if k not in spec]
    if missing:
        raise ConfigError(f"attack spec is missing keys {missing}; regenerate it with `backdoor-arena attack`")
    return PoisoningAttack(
        name=spec["attack"], trigger=trigger_from_dict(spec["trigger"]), num_classes=int(spec["num_classes"]),
        target=int(spec["target"]), mode=spec["mode"], sources=tuple(int(s) for s in spec.get("sources", ())),
        poison_rate=float(spec["poison_rate"]), injection=spec["injection"], seed=int(spec["seed"]),
        cover_rate=float(spec.get("cover_rate", 0.0)),
    )


def load_attack_spec(path: str | Path, num_classes: int | None = None) -> PoisoningAttack:
    """The attack a spec file describes; with `num_classes` (the model's), a spec for another class count
    is refused (a wrong spec file would otherwise give meaningless ASR)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"attack spec {str(path)!r} does not exist; it is written beside the model as F.attack.json")
    try:
        spec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"attack spec {str(path)!r} is not valid JSON ({exc}); regenerate it") from None
    attack = attack_from_spec(spec)
    if num_classes is not None and attack.num_classes != num_classes:
        raise IncompatibleError(
            f"the attack spec is for {attack.num_classes} classes but the model has {num_classes}; wrong spec file?"
        )
    return attack
