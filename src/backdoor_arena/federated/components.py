"""Building a registered federated component (aggregator, client attack, adversary model, engine) from a
config table {"name": ..., params...}: a parameter the constructor does not take is a ConfigError that names
it (with the closest one it does take) and lists the ones it does take; a NaN, an infinity or an integer
beyond 64 bits anywhere in the parameters is a ConfigError naming the parameter before the constructor
sees it; the constructor validates the values (one sentence per problem).

Every registered class declares, for the conformance suite (`checks.py`) and the CLI's generated help:

    example_params: ClassVar[dict[str, Any]]                    small, fast constructor parameters
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] known-bad parameters -> ConfigError substring
    param_help: ClassVar[dict[str, str]]                         one sentence per constructor parameter
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..registry import Registry


def constructor_params(factory: Any) -> list[str]:
    """The keyword parameters a registered class (or factory function) takes."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in sig.parameters.values() if p.kind in kinds]


INT64 = 2**63


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() for a one-line message: control characters escaped, cut to `limit` characters."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def bad_numbers(params: Mapping[str, Any]) -> list[str]:
    """One sentence per NaN, infinity or integer beyond 64 bits in `params` (nested tables and lists too),
    walked without recursion (each container once, so a cycle ends too)."""
    problems: list[str] = []
    seen: set[int] = set()
    stack: list[tuple[str, Any]] = [(str(k), v) for k, v in params.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{path} = {value} is not a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
            problems.append(f"{path} = {short_repr(value)} is out of range (beyond 64 bits)")
        elif isinstance(value, (Mapping, list, tuple)) and id(value) not in seen:
            seen.add(id(value))
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            fmt = "{}.{}" if isinstance(value, Mapping) else "{}[{}]"
            stack.extend((fmt.format(path, k), v) for k, v in items)
    return sorted(problems)


def make_component(registry: Registry, spec: str | Mapping[str, Any], kind: str) -> Any:
    """Build a registered component from its name or a table {"name": ..., params...}."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(f"{kind} must be a registered name or a table with a 'name' key, got {short_repr(spec)}")
    params = {k: v for k, v in spec.items() if k != "name"}
    factory = registry.get(spec["name"])
    name = short_repr(spec["name"])
    known = constructor_params(factory)
    unknown = sorted(set(map(str, params)) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        shown = ", ".join(short_repr(u, 40).strip("'") for u in unknown[:10])
        raise ConfigError(f"{kind} {name} has no parameter(s) {shown}{hint}; "
                          f"it takes {', '.join(sorted(known)) or 'none'}")
    numbers = bad_numbers(params)
    if numbers:
        raise ConfigError(f"{kind} {name}: " + "; ".join(numbers))
    try:
        return factory(**params)
    except TypeError as exc:  # e.g. a positional-only parameter; never a traceback for a config mistake
        raise ConfigError(f"{kind} {name}: bad parameter ({' '.join(str(exc).split())})") from None


def public_scalars(obj: Any, names: list[str], private: tuple[str, ...] = ()) -> dict[str, Any]:
    """{name: value} for the constructor parameters of `obj` that are JSON scalars and not private."""
    out = {}
    for name in names:
        value = getattr(obj, name, None)
        if name not in private and isinstance(value, (bool, int, float, str)):
            out[name] = value
    return out
