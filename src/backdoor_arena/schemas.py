"""Typed validation of external inputs with pydantic: attack specs, trigger descriptions, zoo truth records,
and the checks TOML scenarios share. Strict types (a "7" is not an int), finite numbers only, ranges and
lengths bounded, unknown keys refused; `validate(model, data, what)` turns pydantic's report into one
ConfigError line that names every field that is wrong.
"""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError, field_validator

from .errors import ArenaError, ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_DEPTH = 32  # JSON nesting deeper than this is refused before parsing (a RecursionError otherwise)


class Strict(BaseModel):
    """Base of every schema: strict types, no unknown keys, finite floats, frozen."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)


def _part(p: Any) -> str:
    """One part of a field's location, safe for a one-line message (a key may hold a newline)."""
    text = str(p)
    if not text.isprintable() or len(text) > 60:
        text = repr(text[:60])
    return text


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(_part(p) for p in loc) or "(top level)"


def _shown(got: Any) -> str:
    if isinstance(got, dict):
        return "an object"
    if isinstance(got, (list, tuple)) and len(got) > 4:
        return f"a list of {len(got)} items"
    return json.dumps(got, default=str)[:40]


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """The keys the (nested) schema at `loc` takes, where `loc` leads through schema-typed fields."""
    current: Any = model
    for part in loc:
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        nested = [a for a in (*getattr(ann, "__args__", ()), ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not nested:
            return None
        current = nested[0]
    return sorted(current.model_fields)


def _problem(model: type[BaseModel], e: Any) -> str:
    where = _location(e["loc"])
    kind = e.get("type")
    if kind == "missing":
        return f"{where}: a required key is missing"
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, tuple(e["loc"][:-1]))
        return f"{where}: unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "; remove it")
    msg = e["msg"].rstrip(".")
    msg = re.sub(r"^(Value error|Assertion failed), ", "", msg)
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{where}: {msg} (got {_shown(e.get('input'))})"


def validate(model: type[M], data: Any, what: str, error: type[ArenaError] = ConfigError) -> M:
    """`data` as a `model`, or one `error` listing every problem: `what: field: message; ...`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [_problem(model, e) for e in exc.errors(include_url=False)[:8]]
        more = f"; and {exc.error_count() - 8} more" if exc.error_count() > 8 else ""
        raise error(f"{what}: " + "; ".join(problems) + more) from None


def check_depth(text: str, what: str, error: type[ArenaError] = ConfigError, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON/TOML text nested deeper than `limit` (brackets outside strings), before any parser
    recurses into it."""
    depth = deepest = 0
    in_string = escape = False
    for ch in text:
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                raise error(f"{what} is nested more than {limit} levels deep; is it the right file?")
        elif ch in "]}":
            depth -= 1


_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.){1,60})"\s*:[\[\]\s\d.,eE+-]*$')


def _where_constant(text: str, name: str) -> str:
    """Best effort: " (key 'alpha', line 3)" for the first bare NaN/Infinity in `text`."""
    match = re.search(r"(?<![\w\"])-?" + re.escape(name.lstrip("-")) + r"(?![\w\"])", text)
    if match is None:
        return ""
    line = text.count("\n", 0, match.start()) + 1
    key = _KEY_BEFORE.search(text[max(0, match.start() - 400):match.start()])
    return f" (key {key.group(1)!r}, line {line})" if key else f" (line {line})"


def loads_json(text: str, what: str, error: type[ArenaError] = ConfigError) -> Any:
    """Strict JSON: no NaN/Infinity literals, no duplicate keys, bounded nesting."""
    check_depth(text, what, error)

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise error(f"{what}: key(s) {dup} appear twice; remove the duplicates")
        return dict(pairs)

    def no_constants(name: str) -> Any:
        raise error(f"{what}: {name} is not a JSON number{_where_constant(text, name)}; write a finite number "
                    "or null")

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except json.JSONDecodeError as exc:
        raise error(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply; is it the right file?") from None


def json_form(obj: Any) -> Any:
    """`obj` as JSON would give it back (tuples become lists), for validating Python-built data strictly."""
    if isinstance(obj, dict):
        return {k: json_form(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_form(v) for v in obj]
    return obj


# ---- shared field types ---------------------------------------------------------------------------------
NonNegInt = Annotated[int, Field(ge=0, le=2**31 - 1)]
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Name = Annotated[str, Field(min_length=1, max_length=200)]
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class TruthRecord(Strict):
    """One line of a zoo's specs/truth.jsonl: the model's file stem (confined to DIR/models/) and the truth."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, allow_inf_nan=False)

    name: Name
    backdoored: bool
    seed: Seed | None = None
    target: NonNegInt | None = None
    trigger: str | None = None
    size: NonNegInt | None = None
    position: str | list[int] | None = None
    poison_rate: Fraction | None = None
    clean_accuracy: Fraction | None = None
    attack_success_rate: Fraction | None = None
    train_time_s: float | None = None

    @field_validator("name")
    @classmethod
    def _confined(cls, v: str) -> str:
        if not SAFE_NAME.match(v):
            raise ValueError("a model name is letters, digits, '.', '_' and '-' only (no path), starting with a "
                             "letter or digit")
        return v


Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
PositiveDim = Annotated[int, Field(ge=1, le=4096)]


class ManifestSchema(Strict):
    """The manifest of a model file (modelfile.py); free-form only where it must be (training record)."""

    architecture: Name
    arch_args: dict[str, Any]
    dataset: Name
    input_shape: Annotated[list[PositiveDim], Field(min_length=3, max_length=3)]
    num_classes: Annotated[int, Field(ge=1, le=100_000)]
    class_names: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=100_000)]
    training: dict[str, Any]
    pixel_range: Annotated[list[float], Field(min_length=2, max_length=2)]
    tensors_sha256: Hex64
    format_version: int
    manifest_sha256: Hex64

    @field_validator("pixel_range")
    @classmethod
    def _unit_range(cls, v: list[float]) -> list[float]:
        if v != [0.0, 1.0]:
            raise ValueError("pixel_range must be [0.0, 1.0] (models take pixels in [0, 1])")
        return v


# ---- attack specs and trigger descriptions (attacks/, triggers.py) -------------------------------------
# One schema per shape: the common fields of a data-poisoning spec (`PoisoningSpec`), the JSON form of each
# trigger family (`PatchTriggerSpec`, `BlendTriggerSpec`; a trigger class names its own as `spec_schema`)
# and the extra entry of each model-level attack (`PruningAwareSpec`). Ranges that depend on other fields
# (a target below num_classes, shapes that agree) are checked where the objects are built.
ATTACK_MODES = ("all-to-one", "all-to-all", "source-specific")
INJECTIONS = ("append", "substitute")
NAMED_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "bottom-center", "center")
MAX_SIDE = 4096  # the largest trigger/image side, in pixels
MAX_CHANNELS = 16
MAX_CLASSES = 100_000
SHA256 = re.compile(r"^[0-9a-f]{64}$")

Unit = Annotated[float, Field(ge=0.0, le=1.0)]  # a pixel or mask value
Row = Annotated[list[Unit], Field(min_length=1, max_length=MAX_SIDE)]
Plane = Annotated[list[Row], Field(min_length=1, max_length=MAX_SIDE)]
Planes = Annotated[list[Plane], Field(min_length=1, max_length=MAX_CHANNELS)]
ClassIndex = Annotated[int, Field(ge=0, lt=MAX_CLASSES)]
SmallCount = Annotated[int, Field(ge=1, le=2**31 - 1)]
FiniteFloat = float  # finite by the base config (allow_inf_nan=False)


def _position(v: Any) -> Any:
    if isinstance(v, str) and v in NAMED_POSITIONS:
        return v
    if (isinstance(v, list) and len(v) == 2
            and all(isinstance(i, int) and not isinstance(i, bool) and abs(i) <= MAX_SIDE for i in v)):
        return v
    raise ValueError(f"must be one of {', '.join(NAMED_POSITIONS)} or two integers [ROW, COL] within "
                     f"+-{MAX_SIDE}")


class TriggerSpec(Strict):
    """What every trigger's JSON form has: its registered kind."""

    kind: Name


class PatchTriggerSpec(TriggerSpec):
    """A patch pasted through a mask (kinds pixel, square, pattern, image): patch [C][h][w] and mask [h][w],
    values in [0, 1]; a named position or [ROW, COL]; a margin in pixels."""

    patch: Planes
    mask: Plane
    position: Any = "bottom-right"
    margin: Annotated[int, Field(ge=0, le=MAX_SIDE)] = 1

    @field_validator("position")
    @classmethod
    def _check_position(cls, v: Any) -> Any:
        return _position(v)


class BlendTriggerSpec(TriggerSpec):
    """A full-size pattern [C][H][W] (values in [0, 1]) blended in with weight alpha in (0, 1]."""

    pattern: Planes
    alpha: Annotated[float, Field(gt=0.0, le=1.0)]


class PoisoningSpec(Strict):
    """An attack spec (format version 1): the fields of `PoisoningAttack.to_spec`, the trigger's JSON form,
    and what the `attack` verb adds (the model's tensor hash, results, history, a model-level attack's entry)."""

    spec_version: Annotated[int, Field(ge=1, le=1)]
    attack: Name
    num_classes: Annotated[int, Field(ge=2, le=MAX_CLASSES)]
    target: ClassIndex
    mode: Literal[ATTACK_MODES]  # type: ignore[valid-type]
    sources: Annotated[list[ClassIndex], Field(max_length=MAX_CLASSES)] = []
    poison_rate: Annotated[float, Field(gt=0.0, le=1.0)]
    injection: Literal[INJECTIONS]  # type: ignore[valid-type]
    seed: Seed
    cover_rate: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    trigger: dict[str, Any]  # validated by the schema of its kind (`trigger_from_dict`)
    model_sha256: str | None = None
    results: dict[Name, JsonValue] | None = None
    history: Annotated[list[dict[Name, JsonValue]], Field(max_length=100_000)] | None = None
    model_attack: dict[Name, JsonValue] | None = None  # validated by the model attack's own schema

    @field_validator("model_sha256")
    @classmethod
    def _sha(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.match(v):
            raise ValueError("must be a sha256 (64 lower-case hex digits), as the attack verb writes it")
        return v


class RetrainSpec(Strict):
    """A `TrainConfig` as `to_dict` writes it (the pruning-aware attack's retraining)."""

    epochs: SmallCount
    batch_size: SmallCount
    optimizer: Name
    lr: Annotated[float, Field(gt=0.0)]
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)]
    weight_decay: Annotated[float, Field(ge=0.0)]
    schedule: Name
    seed: Seed
    threads: Annotated[int, Field(ge=1, le=4096)] | None = None


class PruningAwareSpec(Strict):
    """The `model_attack` entry of a pruning-aware attack spec: its settings, and the record its training
    adds (which channels were pruned, how dormant the restored ones are, the time taken)."""

    name: Literal["pruning-aware"]
    max_accuracy_drop: Fraction
    clean_samples: SmallCount
    margin: Annotated[float, Field(ge=0.0)]
    retrain: RetrainSpec | None = None
    pruned_channels: Annotated[list[NonNegInt], Field(max_length=1_000_000)] | None = None
    channels: NonNegInt | None = None
    fraction_pruned: Fraction | None = None
    restored_max_clean_activation: float | None = None
    wall_time_s: Annotated[float, Field(ge=0.0)] | None = None


class _AdaptiveSpec(Strict):
    wall_time_s: Annotated[float, Field(ge=0.0)] | None = None


class NCEvasiveSpec(_AdaptiveSpec):
    """The `model_attack` entry of an nc-evasive attack spec (attacks/adaptive.py)."""

    name: Literal["nc-evasive"]
    weight: Annotated[float, Field(ge=0.0)]
    refresh: SmallCount
    reverse_steps: SmallCount
    cost: Annotated[float, Field(ge=0.0)]
    reverse_lr: Annotated[float, Field(gt=0.0)]
    retrain: RetrainSpec | None = None
    reversals: NonNegInt | None = None
    last_reversed_l1: Annotated[float, Field(ge=0.0)] | None = None
    trigger_l1: Annotated[float, Field(ge=0.0)] | None = None
    unlearned: NonNegInt | None = None


class STRIPEvasiveSpec(_AdaptiveSpec):
    """The `model_attack` entry of a strip-evasive attack spec (attacks/adaptive.py)."""

    name: Literal["strip-evasive"]
    weight: Annotated[float, Field(ge=0.0)]
    blend: Annotated[float, Field(ge=0.0, lt=1.0)]
    retrain: RetrainSpec | None = None


class TDCEvasiveSpec(_AdaptiveSpec):
    """The `model_attack` entry of a tdc-evasive attack spec (attacks/adaptive.py)."""

    name: Literal["tdc-evasive"]
    trojan_batch: SmallCount
    negatives: NonNegInt
    logit_weight: Annotated[float, Field(ge=0.0)]
    param_weight: Annotated[float, Field(ge=0.0)]
    negative_sides: Annotated[list[SmallCount], Field(min_length=2, max_length=2)]
    finetune: RetrainSpec | None = None
