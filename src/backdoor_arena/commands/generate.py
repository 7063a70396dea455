"""Sub-commands generated from the registries: one command per registered plugin, its options read from the
plugin's constructor signature (names, types, defaults) and its `param_help` (one sentence per parameter).

A generated option defaults to "not given", so that only what the user typed reaches the plugin and the
plugin's own default applies otherwise (shown in --help). Values that are not int, float, str or bool (e.g. a
nested dict of a detector's parameters) are given as JSON.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from .. import api

_SIMPLE = (int, float, str, bool)


def _simple_type(hint: Any) -> type | None:
    """int/float/str/bool for `int`, `int | None`, `Optional[float]`...; None for anything else."""
    if hint in _SIMPLE:
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in _SIMPLE:
        return args[0]
    return None


def plugin_parameters(factory: Callable[..., Any], skip: Iterable[str] = ()) -> list[tuple[str, type | None, Any]]:
    """(name, simple type or None for JSON, default) of each keyword a plugin's constructor takes."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to JSON values
        hints = {}
    out = []
    skipped = set(skip)
    for name, p in inspect.signature(factory).parameters.items():
        if name in skipped or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        out.append((name, _simple_type(hints.get(name, p.annotation)), p.default))
    return out


def _default_text(default: Any) -> str:
    if default is inspect.Parameter.empty:
        return "required"
    return json.dumps(default) if not isinstance(default, str) else default


def option_parameters(factory: Callable[..., Any], skip: Iterable[str] = (), prefix: str = "") -> list[inspect.Parameter]:
    """typer options for a plugin's constructor parameters; the Python name of each is `prefix + name`."""
    helps = getattr(factory, "param_help", {}) or {}
    params = []
    for name, kind, default in plugin_parameters(factory, skip):
        flag = "--" + name.replace("_", "-")
        text = f"{helps.get(name, name.replace('_', ' '))} (default: {_default_text(default)})"
        if kind is bool:
            option = typer.Option(f"{flag}/--no-{name.replace('_', '-')}", help=text, show_default=False)
            annotation: Any = Annotated[bool | None, option]
        elif kind is None:
            annotation = Annotated[str | None, typer.Option(flag, help=text + " (JSON)", show_default=False)]
        else:
            annotation = Annotated[kind | None, typer.Option(flag, help=text, show_default=False)]
        params.append(inspect.Parameter(prefix + name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation=annotation))
    return params


def given_plugin_params(factory: Callable[..., Any], values: dict[str, Any], skip: Iterable[str] = (),
                        prefix: str = "") -> dict[str, Any]:
    """The plugin parameters the user typed (JSON ones decoded), from a generated command's keyword values."""
    out = {}
    for name, kind, _default in plugin_parameters(factory, skip):
        value = values.get(prefix + name)
        if value is None:
            continue
        if kind is None:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise api.ConfigError(f"--{name.replace('_', '-')} takes a JSON value, got {value!r} ({exc.msg}); "
                                      "e.g. '{\"steps\": 200}'") from None
        out[name] = value
    return out


def make_command(body: Callable[..., None], parameters: list[inspect.Parameter], doc: str) -> Callable[..., None]:
    """A function typer can register: `body(**values)` behind an explicit signature."""

    def command(**values: Any) -> None:
        body(**values)

    # typer reads names, types and options from the signature, positional arguments first
    ordered = sorted(parameters, key=lambda p: p.kind)
    command.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command


def first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()
