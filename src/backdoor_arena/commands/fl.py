"""`backdoor-arena fl run|validate`: federated backdoor scenarios (Sun et al. 2019), thin over
`backdoor_arena.federated` (`run_scenario`, `validate_file`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..federated import config as fl_config
from ..federated import simulation
from .options import DataRoot, Quiet


def run(scenario: Path, overrides: list[str], out: Path, progress: bool = True,
        data_root: Path | None = None) -> dict[str, simulation.SimulationResult]:
    """Run a scenario file (and each of its variants) into `out`."""
    sc = fl_config.load_scenario(scenario, overrides)
    return simulation.run_scenario(sc, out, progress=progress, data_root=data_root)


def validate(scenario: Path, overrides: list[str]) -> fl_config.Scenario:
    return fl_config.validate_file(scenario, overrides)


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
    ) -> None:
        """Run SCENARIO.toml: one JSONL record per round, PNG plots shaped like the paper's."""
        results = run(scenario, overrides or [], out, progress=not quiet, data_root=data_root)
        summaries = {label or "run": r.summary for label, r in results.items()}
        if json_out:
            typer.echo(json.dumps(summaries, sort_keys=True, default=str))
            return
        for label, s in summaries.items():
            typer.echo(f"{label}: main {s['final_main_accuracy']:.3f}, backdoor final {s['final_backdoor_accuracy']:.3f} "
                       f"mean {s['mean_backdoor_accuracy']:.3f}, attacked rounds {s['attacked_rounds']}, "
                       f"engine {s['engine']}, {s['wall_time_s']:.0f} s")
        typer.echo(f"wrote {out}/")

    @fl.command("validate")
    def validate_cmd(
        scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
        overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides to check too.")] = None,
    ) -> None:
        """Check SCENARIO.toml; every problem is reported at once (exit code 2)."""
        sc = validate(scenario, overrides or [])
        variants = f", variants: {', '.join(sc.variants)}" if sc.variants else ""
        typer.echo(f"{scenario}: ok ({sc['name']}, {sc['federation.rounds']} rounds, attack {sc.attack['name']}, "
                   f"aggregator {sc.aggregator['name']}{variants})")

    app.add_typer(fl)
