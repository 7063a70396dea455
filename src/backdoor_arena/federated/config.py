"""Federated scenarios as TOML files: validated up front (every error reported at once), overridable with
dotted `key=value` pairs, naming registered components only (never import paths).

A scenario file has these tables (all optional; defaults are the paper's settings where it has one):

    name, seed, description, threads (read by the caller through `scenario_threads`)
    [data]        dataset ("mnist": its 539 writers; "leaf-femnist" | "tff-emnist": EMNIST's writers read from
                  train_path and test_path, digits_only), test_samples (0 = the whole test set),
                  partition ("writers": one client per writer; "by-class": `clients` clients, client i holding
                  only class i mod 10, as MixTailor's heterogeneous setting; "iid": `clients` equal random shares)
    [model]       architecture (a registered model id)
    [federation]  rounds, clients_per_round, local_epochs, local_steps (> 0: exactly that many SGD steps on
                  freshly drawn batches instead of epochs; 1 = gradient aggregation), batch_size, client_lr,
                  server_lr, engine (auto | sequential | vectorised), eval_every
    [warmup]      pretrain_epochs, pretrain_lr, pretrain_samples (0 = all) (centralised pre-training: a converged start), rounds
                  (benign federated rounds before the first attack)
    [backdoor]    tasks, source, target, attacker_clean_samples
    [attack]      name (none | a CLIENT_ATTACKS name) and its parameters
    [adversary]   name (an ADVERSARIES name) and its parameters
    [aggregator]  name (an AGGREGATORS name), its parameters, optionally [aggregator.inner] (composition)
    [variants.LABEL]  dotted overrides; `fl run` then runs every variant and plots them together

Every problem is one sentence in one ConfigError line (never a traceback): the file is read as a regular
UTF-8 file of at most 1 MiB; nesting deeper than 32 levels is refused before the TOML parser recurses;
every number anywhere in the document (component parameters and variants included) must be finite;
counts are bounded (rounds <= 100,000, local epochs <= 1,000, ...) so that a typo does not run for days,
and by the data where it is known without loading it (MNIST: 539 writers, 60,000 training and 10,000
test images). Bounds that need the data loaded (EMNIST writer files) are checked by
`pipeline.check_data_bounds` before any training. Nothing is clamped: a value over its bound is an error.
"""

from __future__ import annotations

import copy
import difflib
import json
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from ..errors import ConfigError
from ..models import MODELS
from ..safeio import MiB, read_text
from ..schemas import MAX_DEPTH
from .adversaries import ADVERSARIES
from .aggregators import make_aggregator
from .attacks import CLIENT_ATTACKS
from .components import make_component, short_repr
from .engines import engine_choices
from .leaf import WRITER_FILES
from .partition import PARTITIONS

Check = Callable[[Any], str | None]

MAX_FILE_BYTES = 1 * MiB  # a scenario is a few kB; anything this large is the wrong file
MAX_PROBLEMS = 20  # reported in full; the rest are counted
# Sane maxima: a value above one is a typo, not an experiment (it would run for days).
MAX_ROUNDS = 100_000
MAX_CLIENTS = 100_000
MAX_EPOCHS = 1_000
MAX_BATCH = 100_000
MAX_SAMPLES = 100_000_000
MAX_THREADS = 4_096
MAX_SEED = 2**63 - 1
MAX_VARIANTS = 100
MAX_TEXT = 10_000  # characters of a name, description or path


@dataclass(frozen=True)
class DataSizes:
    """What is known about a dataset's federated split without loading it."""

    writers: int
    train: int
    test: int


# Datasets whose sizes are fixed (writer-file datasets are only known once their files are read).
KNOWN_SIZES: dict[str, DataSizes] = {"mnist": DataSizes(writers=539, train=60_000, test=10_000)}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> str | None:
        if not _is_int(v) or v < lo or v > hi:
            return f"must be an integer in [{lo}, {hi}]"
        return None
    return check


def _num(lo: float, strict: bool = True) -> Check:
    def check(v: Any) -> str | None:
        if not _is_number(v) or not math.isfinite(v) or (v <= lo if strict else v < lo):
            return f"must be a finite number {'>' if strict else '>='} {lo}"
        return None
    return check


def _suggest(value: Any, options: Iterable[str]) -> str | None:
    """The closest option to `value` (case-insensitively), or None."""
    opts = list(options)
    folded = {o.lower(): o for o in opts}
    text = str(value)
    if text.lower() in folded:
        return folded[text.lower()]
    close = difflib.get_close_matches(text.lower(), list(folded), n=1)
    return folded[close[0]] if close else None


def _choice(options: Callable[[], Sequence[str]]) -> Check:
    def check(v: Any) -> str | None:
        opts = list(options())
        if not isinstance(v, str) or v not in opts:
            close = _suggest(v, opts) if isinstance(v, str) else None
            hint = f" (did you mean {close!r}?)" if close else ""
            return f"must be one of {', '.join(opts)}{hint}"
        return None
    return check


def _str(max_len: int = MAX_TEXT) -> Check:
    def check(v: Any) -> str | None:
        if not isinstance(v, str):
            return "must be a string"
        if len(v) > max_len:
            return f"must be a string of at most {max_len} characters (got {len(v)})"
        return None
    return check


def _bool(v: Any) -> str | None:
    return None if isinstance(v, bool) else "must be true or false"


# dotted key -> (default, check)
FIELDS: dict[str, tuple[Any, Check]] = {
    "name": ("scenario", _str(200)),
    "description": ("", _str()),
    "seed": (0, _int(0, MAX_SEED)),
    # 0 = every core this process may use; applied by the caller (scenario_threads)
    "threads": (0, _int(0, MAX_THREADS)),
    "data.dataset": ("mnist", _choice(lambda: ["mnist", *WRITER_FILES.names()])),
    # leaf-femnist / tff-emnist only: the files of each split (relative paths: from the current folder)
    "data.train_path": ("", _str()),
    "data.test_path": ("", _str()),
    # true (the paper's 3,383 digit writers): labels 0-9 only, so 10-class models and digit backdoor tasks fit
    "data.digits_only": (True, _bool),
    "data.test_samples": (0, _int(0, MAX_SAMPLES)),  # 0 = the whole test set; more than it has is an error
    "data.partition": ("writers", _choice(lambda: list(PARTITIONS))),
    "data.clients": (0, _int(0, MAX_CLIENTS)),  # by-class / iid: how many clients (writers: must stay 0)
    "model.architecture": ("emnist-cnn", _choice(MODELS.names)),
    "federation.rounds": (100, _int(1, MAX_ROUNDS)),
    "federation.clients_per_round": (30, _int(1, MAX_CLIENTS)),
    "federation.local_epochs": (5, _int(1, MAX_EPOCHS)),
    "federation.local_steps": (0, _int(0, MAX_EPOCHS * 1000)),  # 0 = local_epochs passes over the data
    "federation.batch_size": (20, _int(1, MAX_BATCH)),
    "federation.client_lr": (0.1, _num(0)),
    "federation.server_lr": (1.0, _num(0)),
    "federation.engine": ("auto", _choice(engine_choices)),
    "federation.eval_every": (1, _int(1, MAX_ROUNDS)),
    "warmup.pretrain_epochs": (0, _int(0, MAX_EPOCHS)),
    "warmup.pretrain_lr": (0.05, _num(0)),
    "warmup.pretrain_samples": (0, _int(0, MAX_SAMPLES)),  # 0 = the whole training set
    "warmup.rounds": (0, _int(0, MAX_ROUNDS)),
    "backdoor.tasks": (30, _int(1, MAX_CLIENTS)),
    "backdoor.source": (7, _int(0, 9)),
    "backdoor.target": (1, _int(0, 9)),
    "backdoor.attacker_clean_samples": (200, _int(0, MAX_SAMPLES)),
}
COMPONENT_TABLES = ("attack", "adversary", "aggregator")
DEFAULT_COMPONENTS = {"attack": {"name": "none"}, "adversary": {"name": "fixed-frequency"},
                      "aggregator": {"name": "fedavg"}}
TABLES = tuple(sorted({k.split(".")[0] for k in FIELDS if "." in k} | set(COMPONENT_TABLES) | {"variants"}))
# Integer component parameters with a conventional meaning get the bounds of their scenario counterparts.
COMPONENT_MAXIMA = {"epochs": MAX_EPOCHS, "batch_size": MAX_BATCH, "frequency": MAX_ROUNDS,
                    "attackers": MAX_CLIENTS}


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


def scenario_threads(sc: Scenario) -> int | None:
    """The CPU threads a scenario asks for (None: the caller's default). The library never applies it: the
    verbs layer calls `runtime.set_threads(scenario_threads(sc))` before a run."""
    return sc["threads"] or None


def shown_source(source: str) -> str:
    """A file name as it appears in a one-line message (quoted only when it holds control characters)."""
    return source if source.isprintable() else repr(source)


# ---- nesting and numbers, before anything recurses ------------------------------------------------------

# TOML tokens that may hold brackets without nesting anything (strings, comments), and the brackets. A
# string token runs to its end or, unterminated, to the end of its line (or text): a token that starts
# always matches, so the scan stays linear whatever the text (no retries from inside an unclosed string).
_TOML_TOKEN = re.compile(
    r'"""(?:[^\\"]|\\.|\\\Z|"(?!""))*(?:"""|\Z)'  # multi-line basic string
    r"|'''(?:[^']|'(?!''))*(?:'''|\Z)"  # multi-line literal string
    r'|"(?:[^"\\\n]|\\[^\n])*"?'  # basic string (one line)
    r"|'[^'\n]*'?"  # literal string
    r"|#[^\n]*"  # comment
    r"|[\[\]{}]",
    re.S,
)


def check_toml_depth(text: str, what: str, limit: int = MAX_DEPTH, hint: str = "; is it the right file?") -> None:
    """Refuse TOML text whose arrays and inline tables nest deeper than `limit` (brackets outside strings
    and comments), before tomllib recurses into it (a RecursionError otherwise)."""
    depth = 0
    for m in _TOML_TOKEN.finditer(text):
        ch = m.group()
        if ch in "[{":
            depth += 1
            if depth > limit:
                line = text.count("\n", 0, m.start()) + 1
                raise ConfigError(f"{what} is nested more than {limit} levels deep (line {line}){hint}")
        elif ch in "]}":
            depth = max(0, depth - 1)


def nesting_depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """How deep tables and arrays nest in `obj` (a scalar: 0), without recursion; stops counting past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        stack.extend((c, depth) for c in children)
    return deepest


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def nonfinite_numbers(obj: Any, prefix: str = "") -> list[tuple[str, float]]:
    """(dotted path, value) of every NaN or infinite float in a (depth-checked) nested table."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(prefix, obj)]
    out: list[tuple[str, float]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.extend(nonfinite_numbers(v, _join(prefix, k)))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.extend(nonfinite_numbers(v, f"{prefix}[{i}]"))
    return out


def _parse_toml(text: str, what: str) -> dict[str, Any]:
    check_toml_depth(text, what)
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what}: not valid TOML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # a last resort: check_toml_depth should have refused it
        raise ConfigError(f"{what} is nested too deeply; is it the right file?") from None


# ---- overrides ------------------------------------------------------------------------------------------

def _set_dotted(table: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = table.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {short_repr(key)}: {short_repr(p)} is a value, not a table")
        table = nxt
    table[parts[-1]] = value


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """["federation.rounds=10", "aggregator.name=\"norm-clip\"", "attack.name=none"] -> dotted dict.
    Values are TOML literals (numbers, booleans, quoted strings, arrays, inline tables); anything else is a
    string. Every malformed item is reported at once."""
    out: dict[str, Any] = {}
    bad = []
    for item in items:
        if not isinstance(item, str):
            bad.append(f"override {short_repr(item)} must be a string like section.key=value")
            continue
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        parts = key.split(".")
        if not sep or not key or any(not p for p in parts):
            bad.append(f"override {short_repr(item)} must look like section.key=value")
            continue
        if len(parts) > MAX_DEPTH:
            bad.append(f"override {short_repr(key)} is nested more than {MAX_DEPTH} levels deep")
            continue
        what = f"override {short_repr(key)}"
        try:
            check_toml_depth(text, what, hint="")
            parsed = tomllib.loads(f"v = {text}")
        except ConfigError as exc:
            bad.append(str(exc))
            continue
        except tomllib.TOMLDecodeError:
            parsed = {"v": text}  # a bare word: a string
        except RecursionError:
            bad.append(f"{what} is nested too deeply")
            continue
        if set(parsed) != {"v"}:
            bad.append(f"{what} must hold one value, got {short_repr(text)}")
            continue
        out[key] = parsed["v"]
    if bad:
        raise ConfigError(f"{len(bad)} bad override(s): " + " | ".join(bad))
    return out


# ---- validation -----------------------------------------------------------------------------------------

def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in COMPONENT_TABLES and key != "variants":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _unknown(key: str, value: Any, seen_tables: set[str]) -> str | None:
    """The sentence for a key FIELDS does not know (None: its table was reported already)."""
    head, dot, _ = key.partition(".")
    if dot and head not in TABLES:
        if head in seen_tables:
            return None
        seen_tables.add(head)
        close = _suggest(head, TABLES)
        hint = f"; did you mean [{close}]?" if close else f"; the tables are {', '.join(TABLES)}"
        if head == "matrix":
            hint = "; a file with a [matrix] table runs with `backdoor-arena fl matrix FILE`"
        return f"unknown table [{head}]{hint}"
    if not dot and head in TABLES:
        return f"{key} must be a table ([{key}] or {key}.KEY = ...), got {short_repr(value)}"
    close = _suggest(key, list(FIELDS) + list(COMPONENT_TABLES))
    hint = f"; did you mean {close!r}?" if close else ""
    return f"unknown key {short_repr(key)}{hint}"


def _check(raw: dict[str, Any], errors: list[str], where: str, skip: set[str]) -> dict[str, Any]:
    flat = _flatten(raw)
    values = {k: d for k, (d, _) in FIELDS.items()}
    invalid: set[str] = set()
    seen_tables: set[str] = set()
    for key, value in flat.items():
        if key in COMPONENT_TABLES or key == "variants":
            continue
        if key in skip:  # a NaN or infinity, reported already
            invalid.add(key)
            continue
        if key not in FIELDS:
            problem = _unknown(key, value, seen_tables)
            if problem:
                errors.append(f"{where}{problem}")
            continue
        problem = FIELDS[key][1](value)
        if problem:
            shown = str(value).lower() if isinstance(value, bool) else short_repr(value)  # as TOML writes it
            errors.append(f"{where}{key} = {shown} {problem}")
            invalid.add(key)
        else:
            values[key] = value
    _check_data_paths(values, errors, where)
    _check_known_sizes(values, invalid, errors, where)
    if values["backdoor.source"] == values["backdoor.target"]:
        errors.append(f"{where}backdoor.source and backdoor.target must differ, both are {values['backdoor.source']}")
    return values


def _check_known_sizes(values: dict[str, Any], invalid: set[str], errors: list[str], where: str) -> None:
    """Bounds set by a dataset whose size is known without loading it (MNIST); the others are checked by
    `pipeline.check_data_bounds` once the data is loaded."""
    name = values["data.dataset"]
    partition, clients = values.get("data.partition"), values.get("data.clients")
    if partition == "writers" and clients:
        errors.append(f"{where}data.clients = {clients} only applies to data.partition = \"by-class\" or \"iid\" "
                      f"(with \"writers\" every writer is a client); remove it")
    elif partition in ("by-class", "iid") and not clients:
        errors.append(f"{where}data.partition = \"{partition}\" needs data.clients (how many clients), e.g. 12")
    sizes = KNOWN_SIZES.get(name)
    if sizes is None or "data.dataset" in invalid:
        return
    if partition in ("by-class", "iid") and clients:
        sizes = DataSizes(writers=clients, train=sizes.train, test=sizes.test)
    checks = [
        ("federation.clients_per_round", sizes.writers,
         f"the {sizes.writers} clients{' (writers)' if partition == 'writers' else ''} of"),
        ("data.test_samples", sizes.test, f"the {sizes.test} test images of"),
        ("warmup.pretrain_samples", sizes.train, f"the {sizes.train} training images of"),
        ("backdoor.attacker_clean_samples", sizes.train, f"the {sizes.train} training images of"),
    ]
    for key, limit, what in checks:
        if key not in invalid and values[key] > limit:
            errors.append(f"{where}{key} = {values[key]} is more than {what} data.dataset = {name!r}; "
                          f"at most {limit}")
    if "backdoor.tasks" not in invalid and values["backdoor.tasks"] >= sizes.writers:
        errors.append(f"{where}backdoor.tasks = {values['backdoor.tasks']} must be less than the {sizes.writers} "
                      f"writers of data.dataset = {name!r} (the target clients are writers, and the attackers "
                      f"need others); at most {sizes.writers - 1}")


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
        path = values[key]
        if not path:
            errors.append(f"{where}{key} is required with data.dataset = {dataset!r}: the path of that split's files")
            continue
        try:
            p = Path(path).expanduser()
            exists = p.exists()
            kind_ok = p.is_file() or p.is_dir()
        except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, an unknown ~user, a too long name
            errors.append(f"{where}{key} = {short_repr(path)} is not a usable path ({' '.join(str(exc).split())})")
            continue
        if not exists:
            errors.append(f"{where}{key} = {short_repr(path)} does not exist (relative paths start at the current "
                          "folder)")
        elif not kind_ok:
            errors.append(f"{where}{key} = {short_repr(path)} is not a regular file or folder (a FIFO, device or "
                          "socket?)")


def _component_bounds(spec: dict[str, Any], kind: str, errors: list[str], where: str) -> bool:
    """Sane maxima for integer parameters with a conventional meaning (epochs, batch_size, ...), in the
    table and its nested tables (an aggregator's `inner`). False when one is exceeded."""
    ok = True
    stack: list[tuple[str, dict[str, Any]]] = [(kind, spec)]
    while stack:
        path, table = stack.pop()
        for key, value in table.items():
            if isinstance(value, dict):
                stack.append((f"{path}.{key}", value))
            elif key in COMPONENT_MAXIMA and _is_int(value) and value > COMPONENT_MAXIMA[key]:
                errors.append(f"{where}{path}.{key} = {value} is more than {COMPONENT_MAXIMA[key]}; is it a typo?")
                ok = False
    return ok


def _component(raw: dict[str, Any], kind: str, errors: list[str], where: str, skip: set[str]) -> dict[str, Any]:
    spec = raw.get(kind, DEFAULT_COMPONENTS[kind])
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict) or "name" not in spec:
        errors.append(f"{where}[{kind}] must be a table with a 'name' key, got {short_repr(spec)}")
        return dict(DEFAULT_COMPONENTS[kind])
    if any(p == kind or p.startswith(f"{kind}.") for p in skip):  # a NaN or infinity, reported already
        return copy.deepcopy(spec)
    if not _component_bounds(spec, kind, errors, where):
        return copy.deepcopy(spec)
    try:
        if kind == "aggregator":
            make_aggregator(spec)
        elif kind == "attack":
            if spec["name"] != "none":
                make_component(CLIENT_ATTACKS, spec, "attack")
            elif len(spec) > 1:
                extra = sorted(map(str, set(spec) - {"name"}))
                errors.append(f"{where}[attack] name = 'none' takes no parameters, got {short_repr(extra)}")
        else:
            make_component(ADVERSARIES, spec, "adversary")
    except ConfigError as exc:
        msg = " ".join(str(exc).split())
        if kind == "attack" and "unknown" in msg:
            msg += " (or 'none')"
        errors.append(f"{where}[{kind}] {msg}")
    except (TypeError, ValueError, ArithmeticError) as exc:  # a constructor that did not say it nicely
        errors.append(f"{where}[{kind}] bad parameter ({' '.join(str(exc).split())})")
    return copy.deepcopy(spec)


def _collect(raw: dict[str, Any], errors: list[str], where: str = "") -> tuple[dict, dict, dict, dict]:
    body = {k: v for k, v in raw.items() if k != "variants"}
    bad_numbers = nonfinite_numbers(body)
    errors.extend(f"{where}{path} = {value} must be a finite number (NaN and infinity are not allowed)"
                  for path, value in bad_numbers)
    skip = {path for path, _ in bad_numbers}
    values = _check(raw, errors, where, skip)
    comps = {k: _component(raw, k, errors, where, skip) for k in COMPONENT_TABLES}
    cpr = values["federation.clients_per_round"]
    try:  # a rule's bound on the round size (e.g. Byzantine: n > 2f + 2), before any run
        problems = make_aggregator(comps["aggregator"]).round_problems(cpr)
    except (ConfigError, TypeError, ValueError, ArithmeticError):  # a bad [aggregator] table is reported once, above
        problems = []
    errors.extend(f"{where}[aggregator] {p} (federation.clients_per_round = {cpr})" for p in problems)
    attackers = comps["adversary"].get("attackers")
    if _is_int(attackers) and attackers > cpr:
        errors.append(f"{where}adversary.attackers = {attackers} is more than federation.clients_per_round = {cpr}: "
                      "attackers replace sampled clients")
    if comps["attack"].get("name") != "none" and values["warmup.rounds"] >= values["federation.rounds"]:
        errors.append(f"{where}warmup.rounds = {values['warmup.rounds']} leaves no attack round in "
                      f"federation.rounds = {values['federation.rounds']}: the attack would never start "
                      "(attack.name = 'none' runs without one)")
    return values, comps["attack"], comps["adversary"], comps["aggregator"]


def _report(errors: list[str], source: str) -> ConfigError:
    head = f"{shown_source(source)}: " if source else ""
    shown = errors[:MAX_PROBLEMS]
    more = f" | and {len(errors) - MAX_PROBLEMS} more" if len(errors) > MAX_PROBLEMS else ""
    return ConfigError(f"{head}{len(errors)} problem(s): " + " | ".join(shown) + more)


def build_scenario(raw: dict[str, Any], source: str = "") -> Scenario:
    """Validate a nested table (as read from TOML); raise one ConfigError listing every problem."""
    head = f"{shown_source(source)}: " if source else ""
    if not isinstance(raw, dict):
        raise ConfigError(f"{head}a scenario is a table of settings, got {type(raw).__name__}")
    if nesting_depth(raw) > MAX_DEPTH:
        raise ConfigError(f"{head}the scenario is nested more than {MAX_DEPTH} levels deep; is it the right file?")
    errors: list[str] = []
    values, attack, adversary, aggregator = _collect(raw, errors)
    variants = raw.get("variants", {})
    if not isinstance(variants, dict) or not all(isinstance(v, dict) for v in variants.values()):
        errors.append("[variants] must hold one table of dotted overrides per label")
        variants = {}
    if len(variants) > MAX_VARIANTS:
        errors.append(f"[variants] holds {len(variants)} variants, more than {MAX_VARIANTS}; split the scenario")
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
            errors.append(f"variant {short_repr(label)}: {exc}")
            continue
        sub_errors: list[str] = []
        if nesting_depth(sub) > MAX_DEPTH:
            sub_errors.append(f"nested more than {MAX_DEPTH} levels deep")
        else:
            _collect(sub, sub_errors)
        base = set(errors)
        errors.extend(f"variant {short_repr(label)}: {e}" for e in sub_errors if e not in base)  # only its own
    if errors:
        raise _report(errors, source)
    return Scenario(values, attack, adversary, aggregator, clean_variants, copy.deepcopy(raw), source)


def read_toml(path: str | Path) -> dict[str, Any]:
    """The table of a scenario file: a regular UTF-8 file of at most 1 MiB, nested at most 32 levels."""
    if "\x00" in str(path):
        raise ConfigError(f"scenario file {short_repr(str(path))} is not a usable path (it holds a NUL byte)")
    text = read_text(path, "scenario file", ConfigError, max_bytes=MAX_FILE_BYTES)
    return _parse_toml(text.removeprefix("\ufeff"), shown_source(str(path)))


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
