"""Option types and output helpers shared by every `backdoor-arena` command (cli.py and the groups here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Dataset folder (overrides $BACKDOOR_ARENA_DATA).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]
Force = Annotated[bool, typer.Option("--force", help="Use an attack spec even if it was made for another model "
                                     "(its model_sha256 names neither this model nor one it was repaired from).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output file (or write into a "
                                         "non-empty output folder); without it the command refuses, before any work.")]


def emit(obj: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """One JSON object on stdout, or the human-readable lines."""
    if as_json:
        typer.echo(json.dumps(obj, sort_keys=True))
    else:
        for line in lines:
            typer.echo(line)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def parse_params(items: list[str] | None, flag: str = "--param") -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON where they parse (numbers, true/false, null, objects)."""
    from .. import api

    params: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise api.ConfigError(f"{flag} {item!r} must look like key=value, e.g. steps=200")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if not key:
            raise api.ConfigError(f"{flag} {item!r} has an empty key; write key=value, e.g. steps=200")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


# Sweeps (zoo build, zoo evaluate, ...): how the jobs run, and the device each job uses.
ExecutorName = Annotated[str, typer.Option("--executor", help="How the jobs run: local (one at a time, in this "
                                           "process), processes (a pool of --jobs worker processes, threads split "
                                           "among them) or ray (Ray tasks; --address joins a cluster).")]
Jobs = Annotated[int | None, typer.Option("--jobs", "-j", help="Parallel jobs: worker processes (processes) or CPUs "
                                          "of the Ray instance started here (ray). Default: one per core.")]
RayAddress = Annotated[str | None, typer.Option("--address", help="Ray cluster for --executor ray: auto (the one "
                                                "`ray start` made here) or HOST:PORT. Default: a local instance.")]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N] | mps; recorded in the run records.")]


def parse_numbers(text: str | None, flag: str, kind: type = float) -> tuple[Any, ...] | None:
    """A comma-separated list of numbers (None stays None), or one line naming the flag and the fix."""
    if text is None:
        return None
    try:
        values = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        values = ()
    if not values:
        what = "integers" if kind is int else "numbers"
        raise typer.BadParameter(f"{flag} takes comma-separated {what}, e.g. {'4,6' if kind is int else '0.05,0.1'}; "
                                 f"got {text!r}")
    return values


def make_executor(name: str, jobs: int | None, address: str | None, threads: int | None = None) -> Any:
    """The sweep executor the options name (api.Executor validates them: one line per problem)."""
    from .. import api

    return api.Executor(name=name, jobs=jobs, address=address, threads=threads)
