"""`backdoor-arena fl run|validate`: federated scenarios, thin over `api.fl_run` and `api.fl_validate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .options import DataRoot, Overwrite, Quiet


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
    ) -> None:
        """Run SCENARIO.toml: one JSONL record per round, PNG plots shaped like the paper's."""
        threads = api.fl_validate(scenario, overrides or [])["threads"]
        if threads:  # the scenario asks for a thread count: a process-wide setting, applied here at the entry
            api.set_threads(threads)
        results = api.fl_run(scenario, out, overrides or [], progress=not quiet, data_root=data_root,
                             overwrite=overwrite)
        summaries = {label or "run": r.summary for label, r in results.items()}
        if json_out:
            typer.echo(json.dumps(summaries, sort_keys=True, default=str))
            return
        for label, s in summaries.items():
            typer.echo(f"{label}: clean {s['final_clean_accuracy']:.3f}, attack success final "
                       f"{s['final_attack_success_rate']:.3f} mean {s['mean_attack_success_rate']:.3f}, attacked rounds {s['attacked_rounds']}, "
                       f"engine {s['engine']}, {s['wall_s']:.0f} s")
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
