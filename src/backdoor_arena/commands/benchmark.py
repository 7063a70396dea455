"""`benchmark`: every registered attack against every registered mitigation and detector, per dataset and seed,
through the sweep executor; writes the leaderboard (records, Markdown, heatmaps). Thin over `api.benchmark`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from ..api.benchmark import AUTO
from .options import DataRoot, ExecutorName, Jobs, Json, Quiet, RayAddress, emit, make_executor


def _names(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(x.strip() for x in text.split(",") if x.strip())


def _seeds(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, got {text!r}") from None


def _count(option: str, text: str, allow_all: bool = False) -> int | str | None:
    """auto, all (where allowed: None, the whole split) or an integer; the config checks its range."""
    word = text.strip().lower()
    if word == AUTO:
        return word
    if allow_all and word == "all":
        return None
    try:
        return int(word)
    except ValueError:
        raise typer.BadParameter(f"{option} takes an integer, {'all or ' if allow_all else ''}auto; got {text!r}") \
            from None


def register(app: typer.Typer) -> None:
    @app.command("benchmark")
    def benchmark(
        out: Annotated[Path, typer.Option("--out", "-o", help="Run folder (resumes when run again).")],
        datasets: Annotated[str, typer.Option(help="Comma-separated datasets.")] = "mnist,gtsrb",
        seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
        attacks: Annotated[str | None, typer.Option(help="Comma-separated attacks (default: every registered).")] = None,
        mitigations: Annotated[str | None, typer.Option(
            help="Comma-separated mitigations (default: every registered).")] = None,
        detectors: Annotated[str | None, typer.Option(
            help="Comma-separated detectors of any kind (default: every registered).")] = None,
        train_size: Annotated[str, typer.Option(help=(
            "Each model trains on a seeded subset this large, or all (the whole split). Default auto: each "
            "dataset's budget (MNIST 20,000 images, at which badnets, blended, invisible and trojannn are learned "
            "at their defaults; GTSRB all)."))] = "auto",
        epochs: Annotated[str, typer.Option(help="Training epochs per model (auto: MNIST 2, GTSRB 3).")] = "auto",
        quick: Annotated[bool, typer.Option(help="Defenses at their example (smoke-test) parameters.")] = False,
        docs: Annotated[Path | None, typer.Option(
            help="Docs folder: also write DOCS/leaderboard.md, DOCS/records/leaderboard.jsonl and the figures.")] = None,
        executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None,
        data_root: DataRoot = None, json_out: Json = False, quiet: Quiet = False,
    ) -> None:
        """The arena's leaderboard: clean accuracy, ASR after each mitigation, detection AUROC."""
        config = api.BenchmarkConfig(datasets=_names(datasets) or (), seeds=_seeds(seeds), attacks=_names(attacks),
                                     mitigations=_names(mitigations), detectors=_names(detectors),
                                     train_size=_count("--train-size", train_size, allow_all=True),
                                     epochs=_count("--epochs", epochs), quick=quick)
        s = api.benchmark(out, config, data_root=data_root, executor=make_executor(executor, jobs, address),
                          progress=not quiet, docs=docs)
        emit(s, json_out, [f"{s['models']} models, {s['defenses']} repairs, {s['detections']} detections in "
                           f"{s['wall_time_s']:.0f} s; leaderboard in {out / 'leaderboard.md'}"
                           + (f"; {len(s['failures'])} jobs failed (see the page)" if s["failures"] else "")])
