"""`backdoor-arena fl run|validate|matrix`: federated scenarios, thin over `api.fl_run` (`api.fl_run_seeds` with
--seeds), `api.fl_validate` and `api.fl_matrix`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .options import DataRoot, Device, ExecutorName, Jobs, Overwrite, Quiet, RayAddress, make_executor


def register(app: typer.Typer) -> None:
    fl = typer.Typer(name="fl", no_args_is_help=True, help="Federated learning under backdoor attack (Sun et al. 2019).")

    @fl.command("run")
    def run_cmd(
        scenario: Annotated[Path, typer.Argument(help="Scenario TOML file, e.g. configs/fl/quick.toml.")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: federation.rounds=5 ...")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (records.jsonl, plots, summary).")] = Path(
            "fl-run"),
        data_root: DataRoot = None,
        quiet: Quiet = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the summaries as JSON.")] = False,
        overwrite: Overwrite = False,
        seeds: Annotated[str | None, typer.Option("--seeds", help="Run once per seed (comma-separated, e.g. 0,1,2) "
                                                  "into OUT/seed-N/, one job per seed through --executor; a rerun "
                                                  "skips the seeds already done.")] = None,
        executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None, device: Device = "auto",
    ) -> None:
        """Run SCENARIO.toml: one JSONL record per round, PNG plots shaped like the paper's."""
        threads = api.fl_validate(scenario, overrides or [])["threads"]
        if threads:  # the scenario asks for a thread count: a process-wide setting, applied here at the entry
            api.set_threads(threads)
        if seeds is not None or executor != "local" or jobs is not None or address is not None:
            _run_seeds(scenario, overrides or [], out, seeds, make_executor(executor, jobs, address, threads or None),
                       quiet, json_out, data_root, overwrite, device)
            return
        results = api.fl_run(scenario, out, overrides or [], progress=not quiet, data_root=data_root,
                             overwrite=overwrite, device=device)
        summaries = {label or "run": r.summary for label, r in results.items()}
        if json_out:
            typer.echo(json.dumps(summaries, sort_keys=True, default=str))
            return
        for label, s in summaries.items():
            typer.echo(f"{label}: clean {s['final_clean_accuracy']:.3f}, attack success final "
                       f"{s['final_attack_success_rate']:.3f} mean {s['mean_attack_success_rate']:.3f}, attacked rounds {s['attacked_rounds']}, "
                       f"engine {s['engine']}, {s['wall_s']:.0f} s")
        typer.echo(f"wrote {out}/")

    @fl.command("matrix")
    def matrix_cmd(
        scenario: Annotated[Path, typer.Argument(help="Matrix file: a scenario with a \\[matrix] table, e.g. "
                                                      "configs/fl/mixtailor-matrix.toml.")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides: federation.rounds=5 ...")] = None,
        out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (matrix.jsonl, matrix.png, matrix.md).")
                       ] = Path("fl-matrix"),
        resume: Annotated[bool, typer.Option("--resume", help="Keep the cells already in OUT/matrix.jsonl.")] = False,
        data_root: DataRoot = None,
        quiet: Quiet = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the cell records as JSON lines.")] = False,
        overwrite: Overwrite = False, device: Device = "auto",
        executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None,
    ) -> None:
        # "\\[": Typer renders help as Rich markup, where a bare [matrix] is a style tag and vanishes
        """Run every attack against every aggregator of SCENARIO's \\[matrix] table; a heatmap and worst cases.
        With --executor processes|ray every cell is a parallel sweep job (OUT/sweep/)."""
        records = api.fl_matrix(scenario, out, overrides or [], progress=not quiet and not json_out,
                                data_root=data_root, resume=resume, overwrite=overwrite, device=device,
                                executor=make_executor(executor, jobs, address))
        if json_out:
            for r in records:
                typer.echo(json.dumps(r, sort_keys=True, default=str))
            return
        typer.echo((out / "matrix.md").read_text())
        typer.echo(f"wrote {out}/")

    @fl.command("validate")
    def validate_cmd(
        scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides to check too.")] = None,
    ) -> None:
        """Check SCENARIO.toml; every problem is reported at once (exit code 2)."""
        sc = api.fl_validate(scenario, overrides or [])
        variants = f", variants: {', '.join(sc.variants)}" if sc.variants else ""
        typer.echo(f"{scenario}: ok ({sc['name']}, {sc['federation.rounds']} rounds, attack {sc.attack['name']}, "
                   f"aggregator {sc.aggregator['name']}{variants})")

    app.add_typer(fl)


def _run_seeds(scenario: Path, overrides: list[str], out: Path, seeds: str | None, ex: object, quiet: bool,
               json_out: bool, data_root: Path | None, overwrite: bool, device: str = "auto") -> None:
    if seeds is None:
        raise api.ConfigError("--executor, --jobs and --address run one job per seed: give --seeds, e.g. --seeds 0,1,2")
    try:
        numbers = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise api.ConfigError(f"--seeds must be comma-separated integers, e.g. 0,1,2; got {seeds!r}") from None
    per_seed = api.fl_run_seeds(scenario, out, numbers, overrides, executor=ex, progress=not quiet,
                                data_root=data_root, overwrite=overwrite, device=device)
    if json_out:
        typer.echo(json.dumps({str(k): v for k, v in per_seed.items()}, sort_keys=True, default=str))
        return
    for seed, summaries in per_seed.items():
        for label, s in summaries.items():
            typer.echo(f"seed {seed} {label}: clean {s['final_clean_accuracy']:.3f}, attack success final "
                       f"{s['final_attack_success_rate']:.3f} mean {s['mean_attack_success_rate']:.3f}")
    typer.echo(f"wrote {out}/seed-{{{','.join(map(str, per_seed))}}}/")
