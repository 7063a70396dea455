"""Options of the `attack <kind>` sub-commands that are generated from the registries: each data-poisoning
attack's own parameters (the keywords its `build` takes beyond the common ones, e.g. wanet's cross_ratio) and
every registered trigger's own parameters (the keywords of `TRIGGERS` classes' `build`, e.g. warp's strength),
with the help text of the class's `param_help`.

An option defaults to "not given", so only what the user typed reaches the class, which validates it (a bad
value is its one-line ConfigError) and applies its own default otherwise. A trigger parameter whose name an
option of the command already uses (`seed`, or label-consistent's own `epsilon`) is spelled `--trigger-NAME`.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from .. import registries
from .generate import plugin_parameters

# Trigger keywords that options every attack command has already set (--trigger-size, --color, --position,
# --margin, --alpha), or that `--trigger KIND:PATH` sets (path); the sizes of the image are the dataset's.
COVERED_TRIGGER_PARAMS = ("channels", "image_size", "size", "color", "position", "margin", "alpha", "path")
TRIGGER_PREFIX = "trigger_param_"  # Python names of the generated trigger options
ATTACK_PREFIX = "attack_param_"  # ... and of a data attack's own options


def _default_text(default: Any) -> str:
    if default is inspect.Parameter.empty:
        return "required"
    return f"{default:.4g}" if isinstance(default, float) else str(default)


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _option(python_name: str, flag: str, kind: type | None, help_text: str) -> inspect.Parameter:
    if kind is bool:
        annotation: Any = Annotated[bool | None, typer.Option(f"--{flag}/--no-{flag}", help=help_text,
                                                              show_default=False)]
    else:
        simple = kind if kind in (int, float, str) else str
        annotation = Annotated[simple | None, typer.Option(f"--{flag}", help=help_text, show_default=False)]
    return inspect.Parameter(python_name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def _common_build(cls: type) -> set[str]:
    """The keywords of the `build` every attack shares: that of the most basic class in `cls`'s MRO defining it."""
    base = [c for c in cls.__mro__ if "build" in vars(c)][-1]
    return set(inspect.signature(base.build).parameters)


def own_attack_params(name: str) -> list[tuple[str, type | None, Any]]:
    """(name, type, default) of the keywords data attack `name` takes beyond the common ones."""
    cls = registries.ATTACKS.get(name)
    return plugin_parameters(cls.build, skip=_common_build(cls))


def trigger_params() -> dict[str, tuple[type | None, list[tuple[str, Any, str]]]]:
    """Every trigger keyword not covered by the common options: name -> (type, [(kind, default, help)])."""
    out: dict[str, tuple[type | None, list[tuple[str, Any, str]]]] = {}
    for kind in registries.TRIGGERS.names():
        cls = registries.TRIGGERS.get(kind)
        helps = getattr(cls, "param_help", {}) or {}
        for pname, ptype, default in plugin_parameters(cls.build, skip=COVERED_TRIGGER_PARAMS):
            entry = out.setdefault(pname, (ptype, []))
            entry[1].append((kind, default, helps.get(pname, pname.replace("_", " "))))
    return out


def attack_option_parameters(name: str, taken: set[str]) -> list[inspect.Parameter]:
    """Options for data attack `name`'s own parameters (`taken`: Python names of the command's other options)."""
    helps = getattr(registries.ATTACKS.get(name), "param_help", {}) or {}
    params = []
    for pname, ptype, default in own_attack_params(name):
        flag = _flag(pname) if pname not in taken else f"attack-{_flag(pname)}"
        text = helps.get(pname, pname.replace("_", " "))
        if default is not None:  # None: the help says what happens without it
            text += f" (default: {_default_text(default)})"
        params.append(_option(ATTACK_PREFIX + pname, flag, ptype, text))
    return params


def model_attack_option_parameters(factory: Any, taken: set[str]) -> list[inspect.Parameter]:
    """Options for a model-level attack's own parameters (Python names `attack_NAME`, as `given_plugin_params`
    reads them); one whose name a common option already uses (pruning-aware's margin) is `--attack-NAME`."""
    helps = getattr(factory, "param_help", {}) or {}
    params = []
    for pname, ptype, default in plugin_parameters(factory, skip=("poisoning",)):
        flag = f"attack-{_flag(pname)}" if pname in taken else _flag(pname)
        text = helps.get(pname, pname.replace("_", " "))
        if default is not None:
            text += f" (default: {_default_text(default)})"
        params.append(_option("attack_" + pname, flag, ptype, text + (" (JSON)" if ptype is None else "")))
    return params


def trigger_option_parameters(taken: set[str]) -> list[inspect.Parameter]:
    """Options for the triggers' own parameters; `taken`: the parameter names of the command's other options."""
    params = []
    for pname, (ptype, uses) in sorted(trigger_params().items()):
        flag = f"trigger-{_flag(pname)}" if pname in taken else _flag(pname)
        if len({h for _k, _d, h in uses}) == 1:
            text = f"{uses[0][2].rstrip('.')} (" + "; ".join(
                f"{kind}: default {_default_text(default)}" for kind, default, _h in uses) + ")."
        else:  # the kinds mean different things by it
            text = "; ".join(f"{kind}: {h.rstrip('.')} (default {_default_text(d)})" for kind, d, h in uses) + "."
        params.append(_option(TRIGGER_PREFIX + pname, flag, ptype, f"Trigger option. {text}"))
    return params


def given_attack_params(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """The data attack's own parameters the user typed."""
    return {p: values[ATTACK_PREFIX + p] for p, _t, _d in own_attack_params(name)
            if values.get(ATTACK_PREFIX + p) is not None}


def given_trigger_options(values: dict[str, Any]) -> dict[str, Any]:
    """The trigger parameters the user typed (the trigger class refuses those its kind does not take)."""
    return {k[len(TRIGGER_PREFIX):]: v for k, v in values.items() if k.startswith(TRIGGER_PREFIX) and v is not None}
