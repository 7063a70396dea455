"""Federated scenarios as TOML files: validated up front (every error reported at once), overridable with
dotted `key=value` pairs, naming registered components only (never import paths).

A scenario file has these tables (all optional; defaults are the paper's settings where it has one):

    name, seed, description, threads
    [data]        dataset ("mnist": its 539 writers; "leaf-femnist" | "tff-emnist": EMNIST's writers read from
                  train_path and test_path, digits_only), test_samples (0 = the whole test set)
    [model]       architecture (a registered model id)
    [federation]  rounds, clients_per_round, local_epochs, batch_size, client_lr, server_lr,
                  engine (auto | sequential | vectorised), eval_every
    [warmup]      pretrain_epochs, pretrain_lr, pretrain_samples (0 = all) (centralised pre-training: a converged start), rounds
                  (benign federated rounds before the first attack)
    [backdoor]    tasks, source, target, attacker_clean_samples
    [attack]      name (none | a CLIENT_ATTACKS name) and its parameters
    [adversary]   name (an ADVERSARIES name) and its parameters
    [aggregator]  name (an AGGREGATORS name), its parameters, optionally [aggregator.inner] (composition)
    [variants.LABEL]  dotted overrides; `fl run` then runs every variant and plots them together
"""

from __future__ import annotations

import copy
import difflib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from ..errors import ConfigError
from ..models import MODELS
from .aggregators import make_aggregator
from .attacks import ADVERSARIES, CLIENT_ATTACKS, make_component
from .engines import ENGINE_CHOICES
from .leaf import WRITER_FILES

Check = Callable[[Any], str | None]


def _int(lo: int, hi: int | None = None) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            return f"must be an integer {rng}"
        return None
    return check


def _num(lo: float, strict: bool = True) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or (v <= lo if strict else v < lo):
            return f"must be a number {'>' if strict else '>='} {lo}"
        return None
    return check


def _choice(options: Callable[[], Sequence[str]]) -> Check:
    def check(v: Any) -> str | None:
        opts = list(options())
        if v not in opts:
            close = difflib.get_close_matches(str(v), opts, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"must be one of {', '.join(opts)}{hint}"
        return None
    return check


def _str(v: Any) -> str | None:
    return None if isinstance(v, str) else "must be a string"


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


# dotted key -> (default, check)
FIELDS: dict[str, tuple[Any, Check]] = {
    "name": ("scenario", _str),
    "description": ("", _str),
    "seed": (0, _int(0)),
    "threads": (0, _int(0)),  # 0 = every core this process may use
    "data.dataset": ("mnist", _choice(lambda: ["mnist", *WRITER_FILES.names()])),
    # leaf-femnist / tff-emnist only: the files of each split (relative paths: from the current folder)
    "data.train_path": ("", _str),
    "data.test_path": ("", _str),
    # true (the paper's 3,383 digit writers): labels 0-9 only, so 10-class models and digit backdoor tasks fit
    "data.digits_only": (True, _bool),
    "data.test_samples": (0, _int(0)),
    "model.architecture": ("emnist-cnn", _choice(MODELS.names)),
    "federation.rounds": (100, _int(1)),
    "federation.clients_per_round": (30, _int(1)),
    "federation.local_epochs": (5, _int(1)),
    "federation.batch_size": (20, _int(1)),
    "federation.client_lr": (0.1, _num(0)),
    "federation.server_lr": (1.0, _num(0)),
    "federation.engine": ("auto", _choice(lambda: ENGINE_CHOICES)),
    "federation.eval_every": (1, _int(1)),
    "warmup.pretrain_epochs": (0, _int(0)),
    "warmup.pretrain_lr": (0.05, _num(0)),
    "warmup.pretrain_samples": (0, _int(0)),  # 0 = the whole training set
    "warmup.rounds": (0, _int(0)),
    "backdoor.tasks": (30, _int(1)),
    "backdoor.source": (7, _int(0, 9)),
    "backdoor.target": (1, _int(0, 9)),
    "backdoor.attacker_clean_samples": (200, _int(0)),
}
COMPONENT_TABLES = ("attack", "adversary", "aggregator")
DEFAULT_COMPONENTS = {"attack": {"name": "none"}, "adversary": {"name": "fixed-frequency"},
                      "aggregator": {"name": "fedavg"}}


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: `values` (dotted key -> value, defaults filled in), component tables and variants."""

    values: dict[str, Any]
    attack: dict[str, Any]
    adversary: dict[str, Any]
    aggregator: dict[str, Any]
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the nested table it was built from
    source: str = ""

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def to_dict(self) -> dict[str, Any]:
        return {**self.values, "attack": self.attack, "adversary": self.adversary, "aggregator": self.aggregator}

    def variant(self, label: str) -> Scenario:
        """The scenario with one variant's overrides applied (without the variants table)."""
        raw = copy.deepcopy(self.raw)
        raw.pop("variants", None)
        for key, value in self.variants[label].items():
            _set_dotted(raw, key, value)
        sc = build_scenario(raw, self.source)
        return Scenario(sc.values, sc.attack, sc.adversary, sc.aggregator, {}, sc.raw, f"{self.source}#{label}")


def _set_dotted(table: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = table.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is a value, not a table")
        table = nxt
    table[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["federation.rounds=10", "aggregator.name=\"norm-clip\"", "attack.name=none"] -> dotted dict.
    Values are TOML literals (numbers, booleans, quoted strings, arrays); anything else is a string."""
    out: dict[str, Any] = {}
    bad = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            bad.append(f"override {item!r} must look like section.key=value")
            continue
        try:
            out[key] = tomllib.loads(f"v = {text.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = text.strip()
    if bad:
        raise ConfigError("; ".join(bad))
    return out


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in COMPONENT_TABLES and key != "variants":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check(raw: dict[str, Any], errors: list[str], where: str = "") -> dict[str, Any]:
    flat = _flatten(raw)
    values = {k: d for k, (d, _) in FIELDS.items()}
    for key, value in flat.items():
        if key in COMPONENT_TABLES or key == "variants":
            continue
        if key not in FIELDS:
            close = difflib.get_close_matches(key, list(FIELDS) + list(COMPONENT_TABLES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            errors.append(f"{where}unknown key {key!r}{hint}")
            continue
        problem = FIELDS[key][1](value)
        if problem:
            errors.append(f"{where}{key} = {value!r} {problem}")
        else:
            values[key] = value
    _check_data_paths(values, errors, where)
    if values["backdoor.source"] == values["backdoor.target"]:
        errors.append(f"{where}backdoor.source and backdoor.target must differ, both are {values['backdoor.source']}")
    return values


def _check_data_paths(values: dict[str, Any], errors: list[str], where: str) -> None:
    """Writer files are named up front and must exist, so `fl validate` catches a wrong path before a run."""
    dataset, keys = values["data.dataset"], ("data.train_path", "data.test_path")
    if dataset not in WRITER_FILES:
        given = [k for k in keys if values[k]]
        if given:
            errors.append(f"{where}{' and '.join(given)} only apply to data.dataset = "
                          f"{' or '.join(WRITER_FILES.names())}, not {dataset!r}; remove them")
        return
    for key in keys:
        if not values[key]:
            errors.append(f"{where}{key} is required with data.dataset = {dataset!r}: the path of that split's files")
        elif not Path(values[key]).expanduser().exists():
            errors.append(f"{where}{key} = {values[key]!r} does not exist (relative paths start at the current folder)")


def _component(raw: dict[str, Any], kind: str, errors: list[str], where: str = "") -> dict[str, Any]:
    spec = raw.get(kind, DEFAULT_COMPONENTS[kind])
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        errors.append(f"{where}[{kind}] must be a table with a 'name' key, got {spec!r}")
        return dict(DEFAULT_COMPONENTS[kind])
    try:
        if kind == "aggregator":
            make_aggregator(spec)
        elif kind == "attack":
            if spec["name"] != "none":
                make_component(CLIENT_ATTACKS, spec, "attack")
            elif len(spec) > 1:
                errors.append(f"{where}[attack] name = 'none' takes no parameters, got {sorted(set(spec) - {'name'})}")
        else:
            make_component(ADVERSARIES, spec, "adversary")
    except ConfigError as exc:
        msg = str(exc)
        if kind == "attack" and "unknown" in msg:
            msg += " (or 'none')"
        errors.append(f"{where}[{kind}] {msg}")
    except TypeError as exc:
        errors.append(f"{where}[{kind}] {exc}")
    return copy.deepcopy(spec)


def _collect(raw: dict[str, Any], errors: list[str], where: str = "") -> tuple[dict, dict, dict, dict]:
    values = _check(raw, errors, where)
    comps = {k: _component(raw, k, errors, where) for k in COMPONENT_TABLES}
    return values, comps["attack"], comps["adversary"], comps["aggregator"]


def build_scenario(raw: dict[str, Any], source: str = "") -> Scenario:
    """Validate a nested table (as read from TOML); raise one ConfigError listing every problem."""
    errors: list[str] = []
    values, attack, adversary, aggregator = _collect(raw, errors)
    variants = raw.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        errors.append("[variants] must hold one table of dotted overrides per label")
        variants = {}
    clean_variants: dict[str, dict[str, Any]] = {}
    for label, table in variants.items():
        flat = _flatten(table)  # accept nested or dotted-string keys
        clean_variants[label] = flat
        sub = copy.deepcopy(raw)
        sub.pop("variants", None)
        try:
            for k, v in flat.items():
                _set_dotted(sub, k, v)
        except ConfigError as exc:
            errors.append(f"variant {label!r}: {exc}")
            continue
        sub_errors: list[str] = []
        _collect(sub, sub_errors)
        base = set(errors)
        errors.extend(f"variant {label!r}: {e}" for e in sub_errors if e not in base)  # only its own problems
    if errors:
        head = f"{source}: " if source else ""
        raise ConfigError(f"{head}{len(errors)} problem(s): " + " | ".join(errors))
    return Scenario(values, attack, adversary, aggregator, clean_variants, copy.deepcopy(raw), source)


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"scenario file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_scenario(path: str | Path, overrides: Sequence[str] | dict[str, Any] = ()) -> Scenario:
    """Read, apply dotted overrides, validate."""
    raw = read_toml(path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for key, value in extra.items():
        _set_dotted(raw, key, value)
    return build_scenario(raw, str(path))


def validate_file(path: str | Path, overrides: Sequence[str] = ()) -> Scenario:
    """The `fl validate` check: raises ConfigError listing every problem, else returns the scenario."""
    return load_scenario(path, overrides)


def dumps(scenario: Scenario) -> str:
    return json.dumps(scenario.to_dict(), sort_keys=True, indent=1)
