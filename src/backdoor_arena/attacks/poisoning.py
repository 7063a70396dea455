"""Trigger-based data poisoning: BadNets (Gu et al. 2019) and blended (Chen et al. 2017), each its own
registered class in `ATTACKS` over the shared base `PoisoningAttack`.

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

A poisoning attack class declares its registered `name`, its `default_trigger`, how it turns the
user's trigger choice into a trigger (`make_trigger`), and reads its own spec (`from_spec`); the spec
loader dispatches on the spec's "attack" field through the registry. Spec format (version 1): the
fields of `to_spec`, with the trigger's JSON form (triggers.py) under "trigger".

A spec is an external input: `load_attack_spec` reads it as a regular file of bounded size, parses strict
JSON (no NaN, no duplicate keys, bounded nesting) and validates it with the class's `spec_schema`
(schemas.PoisoningSpec: strict types, ranges, unknown keys refused), the trigger with the schema of its
kind and a model-level attack's entry with that attack's schema; then, given the model's facts, checks
the class count, that the trigger fits the inputs, and that the spec was made for this model (its tensor
hash). Every problem is one line naming the field and what is allowed. A subclass with spec fields of its
own declares a `spec_schema` extending schemas.PoisoningSpec and reads them in its `from_spec`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..data.dataset import Dataset, to_float
from ..errors import ArenaError, ConfigError, IncompatibleError
from ..safeio import MiB, atomic_write_text, read_text, shown
from ..schemas import ATTACK_MODES, INJECTIONS, MAX_CLASSES, PoisoningSpec, Strict, json_form, loads_json, validate
from ..triggers import Trigger, check_fits, make_trigger, trigger_from_dict
from .registries import ATTACKS, MODEL_ATTACKS

MODES = ATTACK_MODES
SPEC_VERSION = 1
MAX_SPEC_BYTES = 16 * MiB
# Parameters of `build` that come from the dataset (the verbs fill them in), not from the user.
DATASET_PARAMS = ("num_classes", "channels", "image_size")
SPEC_REQUIRED = ("num_classes", "target", "mode", "poison_rate", "injection", "seed", "trigger")  # PoisoningSpec


@dataclass(frozen=True, eq=False)
class Poisoned:
    """The poisoned training set and which of its rows are poisoned."""

    dataset: Dataset
    poisoned_mask: torch.Tensor  # bool [len(dataset)]
    source_index: torch.Tensor  # int64: the original row each poisoned row was made from


_COMMON_HELP = {
    "trigger_options": "Options of the trigger kind (size, color, position, margin, alpha, path, seed...).",
    "target": "The target class (all-to-one and source-specific modes).",
    "mode": "Label map: all-to-one (every poisoned sample -> target), all-to-all (label i -> i + 1 mod K), "
            "or source-specific (only the source classes -> target).",
    "sources": "Source classes of the source-specific mode.",
    "poison_rate": "Poisoned samples as a fraction of the training-set size, in (0, 1].",
    "injection": "append (poisoned copies added to the training set, as BadNets) or substitute (they replace "
                 "the originals).",
    "seed": "Seed of the poisoning (which samples are poisoned).",
    "cover_rate": "Source-specific only: triggered samples of the other classes that keep their label (TaCT), "
                  "as a fraction of the training-set size, in [0, 1).",
}


@dataclass(frozen=True)
class PoisoningAttack:
    """The shared base of trigger-based poisoners: label maps, the draw of poisoned rows, and the spec.
    Not registered itself; subclasses set `name`, `default_trigger` and the conformance declarations."""

    trigger: Trigger
    num_classes: int
    target: int = 0
    mode: str = "all-to-one"
    sources: tuple[int, ...] = ()
    poison_rate: float = 0.1
    injection: str = "append"
    seed: int = 0
    cover_rate: float = 0.0

    name: ClassVar[str] = ""  # the registered name; the spec's "attack" field
    default_trigger: ClassVar[str] = "pattern"
    spec_schema: ClassVar[type[Strict]] = PoisoningSpec  # what `from_spec` accepts
    threat_model: ClassVar[str] = ""  # what the attacker controls and knows (the attack catalogue's column)
    clean_label: ClassVar[bool] = False  # True: poisons target-class samples and relabels none
    example_params: ClassVar[dict[str, Any]] = {"target": 1, "poison_rate": 0.2, "seed": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"poison_rate": -1}, "poison_rate"), ({"poison_rate": 1.5}, "poison_rate"), ({"target": 99}, "target"),
        ({"mode": "one-to-one"}, "mode"), ({"injection": "insert"}, "injection"),
        ({"mode": "source-specific"}, "source class"), ({"cover_rate": 0.1}, "cover_rate"),
        ({"poison_rate": float("nan")}, "poison_rate"), ({"target": True}, "target"), ({"seed": -1}, "seed"),
    )
    param_help: ClassVar[dict[str, str]] = {"trigger": "The trigger kind (a registered trigger).", **_COMMON_HELP}

    def __post_init__(self) -> None:
        k = self.num_classes
        if not _is_int(k) or not 2 <= k <= MAX_CLASSES:
            raise ConfigError(f"num_classes must be an integer from 2 to {MAX_CLASSES}; got {k!r}")
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.injection not in INJECTIONS:
            raise ConfigError(f"injection must be 'append' or 'substitute'; got {self.injection!r}")
        if not _is_real(self.poison_rate) or not 0 < self.poison_rate <= 1:
            raise ConfigError(f"poison_rate must be a number in (0, 1]; got {self.poison_rate!r}")
        if not _is_int(self.target) or not 0 <= self.target < k:
            raise ConfigError(f"target must be a class in [0, {k - 1}]; got {self.target!r}")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be an integer in [0, 2**63); got {self.seed!r}")
        if not isinstance(self.sources, tuple) or not all(_is_int(s) for s in self.sources):
            raise ConfigError(f"sources must be class numbers (integers); got {self.sources!r}")
        if self.mode == "source-specific":
            if not self.sources:
                raise ConfigError("a source-specific attack needs at least one source class (--source)")
            bad = [s for s in self.sources if not 0 <= s < k or s == self.target]
            if bad:
                raise ConfigError(f"source classes {bad} must be classes in [0, {k - 1}] other than the target "
                                  f"{self.target}")
        elif self.sources:
            raise ConfigError(f"source classes are only used by the source-specific mode, not {self.mode!r}")
        if not _is_real(self.cover_rate) or not 0 <= self.cover_rate < 1:
            raise ConfigError(f"cover_rate must be a number in [0, 1); got {self.cover_rate!r}")
        if self.cover_rate and self.mode != "source-specific":
            raise ConfigError(f"cover_rate only applies to the source-specific mode, not {self.mode!r}")
        if not callable(getattr(self.trigger, "apply", None)) or not callable(getattr(self.trigger, "to_dict", None)):
            raise ConfigError(f"trigger must be a trigger (make_trigger(...)), got {type(self.trigger).__name__}")

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, *, num_classes: int, channels: int, image_size: int, trigger: str | None = None,
              trigger_options: dict[str, Any] | None = None, target: int = 0, mode: str = "all-to-one",
              sources: tuple[int, ...] = (), poison_rate: float = 0.1, injection: str = "append", seed: int = 0,
              cover_rate: float = 0.0) -> PoisoningAttack:
        """The attack from user-level parameters (what `make_attack` and the CLI pass); `num_classes`,
        `channels` and `image_size` come from the dataset. `trigger` defaults to the class's own."""
        trig = cls.make_trigger(trigger or cls.default_trigger, dict(trigger_options or {}), channels, image_size)
        return cls(trig, num_classes, target, mode, tuple(sources), poison_rate, injection, seed, cover_rate)

    @classmethod
    def make_trigger(cls, trigger: str, options: dict[str, Any], channels: int, image_size: int) -> Trigger:
        """The trigger of the user's choice (a registered kind, or `KIND:PATH`) with its options."""
        return make_trigger(trigger, channels, image_size, **options)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PoisoningAttack:
        """Rebuild the attack from its spec, validated by `spec_schema` (types, ranges, unknown keys refused),
        its trigger by the schema of its kind and a model-level attack's entry by that attack's schema.
        Every problem is one ConfigError starting "attack spec:" and naming the field."""
        s = validate(cls.spec_schema, json_form(spec), "attack spec")
        if cls.name and s.attack != cls.name:
            raise ConfigError(f"attack spec: attack: the spec describes {s.attack!r}, not {cls.name!r}")
        try:
            trigger = trigger_from_dict(s.trigger)
        except ConfigError as exc:
            raise ConfigError(f"attack spec: {exc}") from None
        if s.model_attack is not None:
            check_model_attack_entry(s.model_attack)
        try:
            return cls(trigger=trigger, num_classes=s.num_classes, target=s.target, mode=s.mode,
                       sources=tuple(s.sources), poison_rate=float(s.poison_rate), injection=s.injection,
                       seed=s.seed, cover_rate=float(s.cover_rate))
        except ConfigError as exc:
            raise ConfigError(f"attack spec: {exc}") from None

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
        """The attack spec (format version 1): what the evaluator needs to measure the backdoor."""
        return {
            "spec_version": SPEC_VERSION, "attack": self.name, "num_classes": self.num_classes,
            "target": self.target, "mode": self.mode, "sources": list(self.sources),
            "poison_rate": self.poison_rate, "injection": self.injection, "seed": self.seed,
            "cover_rate": self.cover_rate, "trigger": self.trigger.to_dict(),
        }

    def save_spec(self, path: str | Path, **extra: Any) -> Path:
        """Write the spec plus `extra` entries (model_sha256, results, history, model_attack) atomically, as
        strict JSON (a NaN or infinite value becomes null)."""
        return atomic_write_text(path, json.dumps(_finite({**self.to_spec(), **extra}), indent=1, allow_nan=False))


# Data-poisoning attack classes: `make_attack(name, **kw)` builds one (`cls.build`), `attack_from_spec`
# rebuilds one from a spec (`cls.from_spec`), dispatched on the spec's "attack" field.


@ATTACKS.register("badnets")
@dataclass(frozen=True)
class BadNets(PoisoningAttack):
    """BadNets (Gu et al. 2019): a small patch trigger (default: the 3x3 checkerboard) stamped on the
    poisoned samples, which are relabelled."""

    name: ClassVar[str] = "badnets"
    threat_model: ClassVar[str] = ("Data poisoning: controls a fraction of the training set (images and labels); "
                                    "knows nothing of the model or the training.")
    default_trigger: ClassVar[str] = "pattern"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PoisoningAttack.bad_params, ({"trigger": "squar"}, "square"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "The trigger kind: pattern (default, a checkerboard), square, pixel, image:PATH, or any "
                   "registered trigger.",
        **_COMMON_HELP,
    }


@ATTACKS.register("blended")
@dataclass(frozen=True)
class Blended(PoisoningAttack):
    """Blended injection (Chen et al. 2017): the whole image blended with a pattern (seeded uniform noise,
    or an image) at weight alpha. A blended attack always blends: `trigger` picks what is blended in."""

    name: ClassVar[str] = "blended"
    threat_model: ClassVar[str] = ("Data poisoning: controls a fraction of the training set (images and labels); "
                                    "knows nothing of the model or the training.")
    default_trigger: ClassVar[str] = "blend"
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        *PoisoningAttack.bad_params, ({"trigger": "square"}, "noise"),
        ({"trigger_options": {"alpha": 1.5}}, "alpha"))
    param_help: ClassVar[dict[str, str]] = {
        "trigger": "What is blended in: noise (default, seeded uniform noise) or image:PATH.",
        **_COMMON_HELP,
    }

    @classmethod
    def make_trigger(cls, trigger: str, options: dict[str, Any], channels: int, image_size: int) -> Trigger:
        if trigger.startswith("image:"):
            options = {**options, "path": trigger.split(":", 1)[1]}
        elif trigger not in ("blend", "noise"):
            raise ConfigError(f"the blended attack takes trigger 'noise' or 'image:PATH', not {trigger!r}")
        return make_trigger("blend", channels, image_size, **options)


def make_attack(name: str, **kwargs: Any) -> PoisoningAttack:
    """A registered poisoning attack from user-level parameters (`PoisoningAttack.build`'s keywords);
    a parameter it does not take is a ConfigError naming it."""
    cls = ATTACKS.get(name)
    try:
        return cls.build(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"attack {name!r}: bad parameter ({exc})") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _finite(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _json_kind(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(v), "a number")


def _registered_name(value: Any, key: str, known: list[str]) -> str:
    """A registry name from a spec: a short string (the registry says "did you mean")."""
    if not isinstance(value, str) or not 1 <= len(value) <= 200:
        shown_value = json.dumps(value, default=str)[:40] if not isinstance(value, (dict, list)) else _json_kind(value)
        raise ConfigError(f"attack spec: {key}: must be the name of a registered one ({', '.join(known)}); "
                          f"got {shown_value}")
    return value


def check_model_attack_entry(entry: dict[str, Any]) -> None:
    """Validate a spec's `model_attack` entry with the `spec_schema` of the model-level attack it names."""

    cls = _spec_class(MODEL_ATTACKS, entry, "name", "model_attack.name", "one of")
    schema = getattr(cls, "spec_schema", None)
    if schema is not None:
        validate(schema, entry, "attack spec: model_attack")


def attack_from_spec(spec: Any) -> PoisoningAttack:
    """Rebuild an attack from its JSON spec, through the registered class named by its "attack" field
    (validated by the class's `spec_schema`: one ConfigError, naming every field that is wrong). A model-level
    attack's spec rebuilds its poisoning (its `model_attack` entry is validated too)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"attack spec: must be a JSON object (with spec_version, attack, trigger, ...), "
                          f"got {_json_kind(spec)}")
    if "spec_version" not in spec:
        raise ConfigError(f"attack spec: spec_version: a required key is missing (this version reads spec_version "
                          f"{SPEC_VERSION}); regenerate the spec with `backdoor-arena attack`")
    version = spec["spec_version"]
    if not _is_int(version) or version != SPEC_VERSION:
        raise ConfigError(f"attack spec: spec_version {json.dumps(version, default=str)[:40]} is not supported "
                          f"(this version reads spec_version {SPEC_VERSION}); regenerate the spec with "
                          "`backdoor-arena attack`")
    return _spec_class(ATTACKS, spec, "attack", "attack", "the attack's name:").from_spec(spec)


def _spec_class(registry: Any, entry: dict[str, Any], key: str, field: str, known: str) -> Any:
    """The registered class a spec field names, or one ConfigError that names the field."""
    if key not in entry:
        raise ConfigError(f"attack spec: {field}: a required key is missing ({known} {', '.join(registry.names())})")
    try:
        return registry.get(_registered_name(entry[key], field, registry.names()))
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("attack spec") else f"attack spec: {field}: {message}") from None


def _named(message: str, what: str) -> str:
    """A message about "attack spec" retold about the spec file `what`."""
    return what + message[len("attack spec"):] if message.startswith("attack spec") else f"{what}: {message}"


def load_attack_spec(path: str | Path, num_classes: int | None = None, *,
                     model_hashes: Iterable[str] | None = None,
                     input_shape: tuple[int, int, int] | list[int] | None = None) -> PoisoningAttack:
    """The attack a spec file describes, validated (one ConfigError naming the file and the field).

    The file must be a regular file of at most 16 MiB of strict JSON. Given the model's facts, a spec that
    does not fit it is an IncompatibleError: `num_classes` (a spec for another class count would give
    meaningless ASR), `input_shape` [C, H, W] (the trigger must apply to the inputs), and `model_hashes`,
    the accepted tensor hashes (the model's own first, then those of the models it was repaired from): a
    spec that records the `model_sha256` of another model is refused (the CLI's `--force` skips this by
    passing None)."""
    what = f"attack spec {shown(path)}"
    text = read_text(path, "attack spec", ConfigError, MAX_SPEC_BYTES)
    if not text.strip():
        raise ConfigError(f"{what} is empty; it is written beside the model as F.attack.json by "
                          "`backdoor-arena attack`")
    spec = loads_json(text, what)
    try:
        attack = attack_from_spec(spec)
    except ArenaError as exc:
        try:
            error = type(exc)(_named(str(exc), what))
        except Exception:  # noqa: BLE001 - an error class with another constructor
            error = ConfigError(_named(str(exc), what))
        raise error from None
    recorded = spec.get("model_sha256")
    if model_hashes is not None and recorded is not None:
        accepted = list(dict.fromkeys(str(h) for h in model_hashes))
        if recorded not in accepted:
            mine = ", ".join(h[:12] for h in accepted[:3]) + (" ..." if len(accepted) > 3 else "") or "none"
            raise IncompatibleError(
                f"{what} was made for another model (tensors sha256 {recorded[:12]}; this model and its repair "
                f"lineage: {mine}); give the spec written with this model, or --force to evaluate anyway")
    if num_classes is not None and attack.num_classes != num_classes:
        raise IncompatibleError(
            f"{what} is for {attack.num_classes} classes but the model has {num_classes}; wrong spec file?"
        )
    if input_shape is not None:
        try:
            check_fits(attack.trigger, input_shape)
        except IncompatibleError as exc:
            raise IncompatibleError(f"{what}: {exc}; wrong spec file?") from None
    return attack
