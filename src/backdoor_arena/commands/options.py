"""Option types and output helpers shared by every `backdoor-arena` command (cli.py and the groups here)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

DataRoot = Annotated[Path | None, typer.Option("--data-root", help="Dataset folder (overrides $BACKDOOR_ARENA_DATA).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]


def emit(obj: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    """One JSON object on stdout, or the human-readable lines."""
    if as_json:
        typer.echo(json.dumps(obj, sort_keys=True))
    else:
        for line in lines:
            typer.echo(line)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
