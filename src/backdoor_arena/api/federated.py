"""Verbs of the federated simulator: `fl_validate` (check a scenario file), `fl_run` (run it, and each of its
variants, into a folder: records.jsonl per run, plots, summary) and `fl_matrix` (every attack against every
aggregator: records, heatmap, worst cases); `fl_run_seeds` runs a scenario over several seeds through a sweep
executor (local, processes, Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..federated import config as fl_config
from ..federated import matrix as fl_matrix_module
from ..federated import simulation
from ..federated.pipeline import FederationCache, check_scenario_data
from ..records import json_safe
from ..runtime import describe_device, run_device
from ..safeio import atomic_write_text, output_folder
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from .outputs import check_folder_output


def fl_validate(scenario: str | Path, overrides: list[str] | None = None) -> fl_config.Scenario:
    """The scenario after overrides, validated; every problem is reported at once as one ConfigError."""
    return fl_config.validate_file(Path(scenario), list(overrides or []))


# The federated simulator's engines train on the CPU so far (a vmap engine on a GPU is future work): an explicit
# GPU is refused with that reason rather than ignored.
FL_DEVICES = ("cpu",)


def _fl_device(device: str, what: str) -> dict[str, Any]:
    return describe_device(run_device(device, supported=FL_DEVICES, what=what))


def fl_run(scenario: str | Path, out: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
           data_root: str | Path | None = None, overwrite: bool = False,
           device: str = "auto") -> dict[str, simulation.SimulationResult]:
    """Run a scenario file (and each of its variants) into `out`; returns the result per variant label
    ("" for a scenario without variants). An existing non-empty `out` is written into only with `overwrite`.
    `device`: auto | cpu (the simulator trains on the CPU so far), recorded in OUT/device.json."""
    dev = _fl_device(device, "fl run")
    sc = fl_config.load_scenario(Path(scenario), list(overrides or []))
    out = check_folder_output(out, inputs=[scenario], overwrite=overwrite)
    cache = FederationCache()
    check_scenario_data(sc, data_root, cache)  # every variant's counts against the data, before any training
    with output_folder(out):
        atomic_write_text(out / "device.json", json.dumps(dev, indent=1, sort_keys=True))
        return simulation.run_scenario(sc, out, progress=progress, data_root=data_root, cache=cache)


def fl_matrix(scenario: str | Path, out: str | Path, overrides: list[str] | None = None, *, progress: bool = True,
              data_root: str | Path | None = None, resume: bool = False, overwrite: bool = False,
              device: str = "auto", executor: Executor | None = None) -> list[dict]:
    """Run a matrix file (a scenario with a [matrix] table) into `out`: out/matrix.jsonl (one record per cell),
    cells/*/records.jsonl, matrix.png, matrix.md. With `resume`, cells already recorded in `out` are kept and
    skipped; otherwise an existing non-empty `out` needs `overwrite`. `executor` (processes, ray) runs the
    cells in parallel, one sweep job each (OUT/sweep/); the default runs them one after another here.
    `device`: auto | cpu (the simulator trains on the CPU so far), recorded in OUT/device.json."""
    dev = _fl_device(device, "fl matrix")
    matrix = fl_matrix_module.load_matrix(Path(scenario), list(overrides or []))
    out = Path(out)
    if not (resume and (out / "matrix.jsonl").is_file()):
        out = check_folder_output(out, inputs=[scenario], overwrite=overwrite)
        if overwrite and (out / "matrix.jsonl").is_file():
            (out / "matrix.jsonl").unlink()
    with output_folder(out):
        atomic_write_text(out / "device.json", json.dumps(dev, indent=1, sort_keys=True))
        return fl_matrix_module.run_matrix(matrix, out, progress=progress, data_root=data_root, executor=executor)


@sweep_job("fl-seed")
def run_seed(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: the scenario (and each of its variants) with one seed, into its own folder."""
    sc = fl_config.load_scenario(Path(ctx.paths["scenario"]), [*ctx.config["overrides"], f"seed={ctx.seed}"])
    if json_safe({"scenario": sc.to_dict(), "variants": sc.variants}) != {
            "scenario": ctx.config["scenario"], "variants": ctx.config["variants"]}:
        raise ConfigError(f"the scenario file {ctx.paths['scenario']} changed since the run started; run it again")
    results = simulation.run_scenario(sc, Path(ctx.paths["out"]), progress=False, data_root=ctx.paths.get("data_root"))
    ctx.run.update(_fl_device(ctx.config.get("device", "cpu"), "fl run"))
    summaries = {}
    for label, r in results.items():
        summary = dict(r.summary)
        for key in ("wall_s", "engine_timing"):  # timings go to the record's run field, out of the comparison
            ctx.run[f"{label or 'run'}_{key}"] = summary.pop(key, None)
        summaries[label or "run"] = summary
    return {"summaries": summaries}


def fl_run_seeds(scenario: str | Path, out: str | Path, seeds: list[int], overrides: list[str] | None = None, *,
                 executor: Executor | None = None, progress: bool = True, data_root: str | Path | None = None,
                 overwrite: bool = False, device: str = "auto") -> dict[int, dict[str, dict[str, Any]]]:
    """Run a scenario file once per seed (`seed=N` overriding the file's), one sweep job per seed through
    `executor`, into OUT/seed-N/ (what `fl_run` writes for one run); OUT/sweep/ holds one record per seed, so
    the command run again skips the seeds already done. Returns {seed: {variant label or "run": summary}}.
    `device`: auto | cpu (the simulator trains on the CPU so far), in each record's per-run part."""
    _fl_device(device, "fl run")
    overrides = list(overrides or [])
    if not seeds or len(set(seeds)) != len(seeds) or any(not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be distinct non-negative integers, e.g. 0,1,2; got {seeds!r}")
    scenarios = {s: fl_config.load_scenario(Path(scenario), [*overrides, f"seed={s}"]) for s in seeds}
    out = Path(out)
    out = check_folder_output(out, inputs=[scenario], overwrite=overwrite, resumable=(out / "sweep" / "records").is_dir())
    cache = FederationCache()
    for sc in scenarios.values():  # every seed's counts against the data, before any training
        check_scenario_data(sc, data_root, cache)
    paths = {"scenario": str(Path(scenario).resolve())} | ({"data_root": str(Path(data_root).resolve())}
                                                            if data_root else {})
    jobs = [Job("fl-seed", {"scenario": sc.to_dict(), "variants": sc.variants, "overrides": overrides}, seed=s,
                label=f"seed-{s}", paths={**paths, "out": str((out / f"seed-{s}").resolve())})
            for s, sc in scenarios.items()]
    result = run_sweep(jobs, out / "sweep", executor, progress=progress, desc="fl seeds")
    result.raise_for_failures()
    records = result.by_id()
    return {job.seed: records[job.id]["summaries"] for job in jobs}  # type: ignore[misc]
