"""Verbs of the federated simulator: `fl_validate` (check a scenario file), `fl_run` (run it, and each of its
variants, into a folder: records.jsonl per run, plots, summary) and `fl_matrix` (every attack against every
aggregator: records, heatmap, worst cases)."""

from __future__ import annotations

from pathlib import Path

from ..federated import config as fl_config
from ..federated import matrix as fl_matrix_module
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


def fl_matrix(scenario: str | Path, out: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
              data_root: str | Path | None = None, resume: bool = False, overwrite: bool = False) -> list[dict]:
    """Run a matrix file (a scenario with a [matrix] table) into `out`: out/matrix.jsonl (one record per cell),
    cells/*/records.jsonl, matrix.png, matrix.md. With `resume`, cells already recorded in `out` are kept and
    skipped; otherwise an existing non-empty `out` needs `overwrite`."""
    matrix = fl_matrix_module.load_matrix(Path(scenario), list(overrides or []))
    out = Path(out)
    if not (resume and (out / "matrix.jsonl").is_file()):
        out = check_folder_output(out, inputs=[scenario], overwrite=overwrite)
        if overwrite and (out / "matrix.jsonl").is_file():
            (out / "matrix.jsonl").unlink()
    with output_folder(out):
        return fl_matrix_module.run_matrix(matrix, out, progress=progress, data_root=data_root)
