"""Verbs of the federated simulator: `fl_validate` (check a scenario file) and `fl_run` (run it, and each of its
variants, into a folder: records.jsonl per run, plots, summary)."""

from __future__ import annotations

from pathlib import Path

from ..federated import config as fl_config
from ..federated import simulation
from ..federated.pipeline import FederationCache, check_scenario_data
from ..safeio import output_folder
from .outputs import check_folder_output


def fl_validate(scenario: str | Path, overrides: list[str] | None = None) -> fl_config.Scenario:
    """The scenario after overrides, validated; every problem is reported at once as one ConfigError."""
    return fl_config.validate_file(Path(scenario), list(overrides or []))


def fl_run(scenario: str | Path, out: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
           data_root: str | Path | None = None, overwrite: bool = False) -> dict[str, simulation.SimulationResult]:
    """Run a scenario file (and each of its variants) into `out`; returns the result per variant label
    ("" for a scenario without variants). An existing non-empty `out` is written into only with `overwrite`."""
    sc = fl_config.load_scenario(Path(scenario), list(overrides or []))
    out = check_folder_output(out, inputs=[scenario], overwrite=overwrite)
    cache = FederationCache()
    check_scenario_data(sc, data_root, cache)  # every variant's counts against the data, before any training
    with output_folder(out):
        return simulation.run_scenario(sc, out, progress=progress, data_root=data_root, cache=cache)
