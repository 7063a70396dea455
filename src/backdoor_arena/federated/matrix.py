"""Every attack against every aggregator: a scenario file with a [matrix] table runs one federated run per
(aggregator, attack, seed) cell and reports the final accuracies as records, a heatmap and a table with the
worst case per aggregator.

    [matrix]
    metric = "clean_accuracy"          # the heatmap's number: "clean_accuracy" (untargeted attacks: lower is
                                       # worse) or "attack_success_rate" (backdoors: higher is worse)
    seeds = [0]                        # repeats of every cell (the scenario's seed is replaced)
    attacks = [{ name = "none" }, { name = "alie" }, { label = "ipm 0.1", name = "ipm", epsilon = 0.1 }]
    aggregators = [{ name = "fedavg" }, { name = "krum", f = 2 }, { name = "mixtailor", f = 2 }]

The rest of the file is an ordinary scenario (its own [attack] and [aggregator] tables are replaced per cell).
An attack named "none" runs the round with every client honest. A cell whose attack cannot run against its
rule (a ConfigError, e.g. the adaptive attack against FLTrust, whose root data is private) is recorded with its
reason and no metrics, and the matrix goes on. By default cells run one after another in one process and
share a `FederationCache` (data, pre-training, engine choice); with a sweep executor (`--executor processes`
or `ray`) every cell is a sweep job (OUT/sweep/), run in parallel, each worker process keeping its own cache.
A cell whose record is already in out/matrix.jsonl (same run id) is skipped, so an interrupted matrix
resumes where it stopped.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..records import Record, read_jsonl, run_id, write_jsonl
from ..runtime import versions
from ..sweep import Executor, Job, JobContext, SweepResult, run_sweep, sweep_job
from .components import short_repr
from .config import Scenario, _parse_toml, _set_dotted, build_scenario, parse_overrides, read_toml, shown_source
from .pipeline import FederationCache, check_scenario_data
from .robust import rule_label

VERB = "fl-matrix"
METRICS = ("clean_accuracy", "attack_success_rate")
MAX_CELLS = 10_000


@dataclass(frozen=True)
class Cell:
    aggregator: str  # label
    attack: str  # label
    seed: int
    scenario: Scenario

    @property
    def config(self) -> dict[str, Any]:
        return {"scenario": self.scenario.to_dict(), "aggregator_label": self.aggregator, "attack_label": self.attack}

    @property
    def run_id(self) -> str:
        """From the cell's scenario and seed only: a label is presentation, renaming one reruns nothing."""
        return cell_key(self.scenario.to_dict(), self.seed)


def cell_key(scenario: dict[str, Any], seed: int) -> str:
    return run_id(VERB, {"scenario": scenario}, seed)


@dataclass(frozen=True)
class Matrix:
    base: Scenario
    metric: str
    seeds: tuple[int, ...]
    attacks: tuple[tuple[str, dict[str, Any]], ...]  # (label, component table)
    aggregators: tuple[tuple[str, dict[str, Any]], ...]
    source: str = ""
    overrides: tuple[str, ...] = ()  # applied to the file at `source` (sweep workers rebuild the cells from both)

    def cells(self) -> list[Cell]:
        out = []
        for agg_label, agg in self.aggregators:
            for att_label, att in self.attacks:
                for seed in self.seeds:
                    raw = copy.deepcopy(self.base.raw)
                    raw["aggregator"], raw["attack"], raw["seed"] = copy.deepcopy(agg), copy.deepcopy(att), seed
                    raw.pop("variants", None)
                    sc = build_scenario(raw, f"{self.source}#{agg_label}/{att_label}/seed{seed}")
                    out.append(Cell(agg_label, att_label, seed, sc))
        return out

    @property
    def worse_is_lower(self) -> bool:
        return self.metric == "clean_accuracy"


def _entries(table: Any, key: str, problems: list[str]) -> tuple[tuple[str, dict[str, Any]], ...]:
    if not isinstance(table, list) or not table:
        problems.append(f"matrix.{key} must be a non-empty list of tables with a name, e.g. [{{ name = \"fedavg\" }}]")
        return ()
    out, seen = [], set()
    for i, entry in enumerate(table):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            problems.append(f"matrix.{key}[{i}] must be a table with a name, got {short_repr(entry)}")
            continue
        entry = dict(entry)
        label = entry.pop("label", None)
        label = label if isinstance(label, str) and label else rule_label(entry)
        if label in seen:
            problems.append(f"matrix.{key}[{i}]: label {label!r} is used twice; give one a `label`")
        seen.add(label)
        out.append((label, entry))
    return tuple(out)


def build_matrix(raw: dict[str, Any], source: str = "") -> Matrix:
    """Validate the [matrix] table and every cell's scenario (all problems in one ConfigError)."""
    raw = copy.deepcopy(raw)
    table = raw.pop("matrix", None)
    head = f"{shown_source(source)}: " if source else ""
    if not isinstance(table, dict):
        raise ConfigError(f"{head}a matrix file needs a [matrix] table with attacks and aggregators lists "
                          "(see configs/fl/mixtailor-matrix.toml)")
    problems: list[str] = []
    unknown = sorted(set(table) - {"metric", "seeds", "attacks", "aggregators"})
    if unknown:
        problems.append(f"matrix has no key(s) {', '.join(unknown)}; it takes metric, seeds, attacks, aggregators")
    metric = table.get("metric", "clean_accuracy")
    if metric not in METRICS:
        problems.append(f"matrix.metric must be one of {', '.join(METRICS)}, got {short_repr(metric)}")
    seeds = table.get("seeds", [raw.get("seed", 0)])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63
                                                      for s in seeds) and len(set(seeds)) == len(seeds)):
        problems.append(f"matrix.seeds must be a list of distinct non-negative integers, got {short_repr(seeds)}")
        seeds = [0]
    attacks = _entries(table.get("attacks"), "attacks", problems)
    aggregators = _entries(table.get("aggregators"), "aggregators", problems)
    if len(attacks) * len(aggregators) * len(seeds) > MAX_CELLS:
        problems.append(f"the matrix has more than {MAX_CELLS} cells; split it")
    if problems:
        raise ConfigError(head + "; ".join(problems))
    base = build_scenario(raw, source)
    matrix = Matrix(base, metric, tuple(seeds), attacks, aggregators, source)
    cell_problems = []
    for agg_label, agg in aggregators:  # each rule and attack once, so that a bad one is named once
        for att_label, att in attacks[:1] if agg_label != aggregators[0][0] else attacks:
            try:
                sub = copy.deepcopy(raw)
                sub["aggregator"], sub["attack"] = agg, att
                build_scenario(sub, "")
            except ConfigError as exc:
                cell_problems.append(f"cell {agg_label} x {att_label}: {exc}")
    if cell_problems:
        raise ConfigError(head + " | ".join(cell_problems))
    return matrix


def load_matrix(path: str | Path, overrides: list[str] | None = None) -> Matrix:
    raw = read_toml(path)
    for key, value in parse_overrides(list(overrides or [])).items():
        _set_dotted(raw, key, value)
    return dataclasses.replace(build_matrix(raw, str(path)), overrides=tuple(overrides or ()))


def loads_matrix(text: str, source: str = "matrix") -> Matrix:
    return build_matrix(_parse_toml(text, source), source)


def _cell_record(cell: Cell, summary: dict[str, Any], wall: float) -> Record:
    metrics = {
        "clean_accuracy": summary["final_clean_accuracy"], "attack_success_rate": summary["final_attack_success_rate"],
        "mean_attack_success_rate": summary["mean_attack_success_rate"],
        "start_clean_accuracy": summary["start_clean_accuracy"], "attacked_rounds": summary["attacked_rounds"],
        "wall_s": round(wall, 2),
    }
    subject = {"aggregator": cell.aggregator, "attack": cell.attack, "matrix_scenario": cell.scenario["name"],
               "rounds": summary["rounds"], "engine": summary.get("engine")}
    return Record(VERB, cell.config, cell.seed, metrics, subject, versions())


def run_cell(cell: Cell, folder: Path, data_root: str | Path | None, cache: FederationCache) -> dict[str, Any]:
    """One cell's federated run into `folder`, as its matrix record; a cell whose attack cannot run against
    its rule (a ConfigError, e.g. it needs the server's private data) is a record with the reason, no metrics."""
    from .simulation import simulate

    started = time.perf_counter()
    try:
        res = simulate(cell.scenario, folder, progress=False, data_root=data_root,
                       label=f"{cell.aggregator} x {cell.attack}", cache=cache)
    except ConfigError as exc:
        record = Record(VERB, cell.config, cell.seed, {"clean_accuracy": None, "attack_success_rate": None,
                                                        "wall_s": round(time.perf_counter() - started, 2)},
                        {"aggregator": cell.aggregator, "attack": cell.attack, "error": str(exc)}, versions())
    else:
        record = _cell_record(cell, {**res.summary, "engine": res.engine}, time.perf_counter() - started)
    return {**record.to_dict(), "run_id": cell.run_id}


def _cell_folder(out: Path, cell: Cell) -> Path:
    from .simulation import variant_dir

    return out / "cells" / variant_dir(f"{cell.aggregator}__{cell.attack}__seed{cell.seed}")


def _progress_line(i: int, n: int, cell: Cell, record: dict[str, Any]) -> str:
    if record.get("error"):
        return f"[{i + 1}/{n}] {cell.aggregator} x {cell.attack}: not applicable ({record['error']})"
    return (f"[{i + 1}/{n}] {cell.aggregator} x {cell.attack} seed {cell.seed}: clean {record['clean_accuracy']:.3f} "
            f"asr {record['attack_success_rate']:.3f} ({record['wall_s']:.0f} s)")


def run_matrix(matrix: Matrix, out: str | Path, *, progress: bool = True, data_root: str | Path | None = None,
               on_cell: Callable[[Cell, dict[str, Any]], None] | None = None,
               executor: Executor | None = None) -> list[dict[str, Any]]:
    """Run every cell not yet in out/matrix.jsonl; write the records, cells/<n>/records.jsonl (rounds), the
    heatmap (matrix.png) and the table (matrix.md). Returns every cell's record dict. `executor` (processes,
    ray) runs the cells as parallel sweep jobs (OUT/sweep/); a matrix loaded from a file only, since the
    workers rebuild their cells from it. `on_cell(cell, record)` is called for each new cell, in cell order."""
    from . import plots

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records_path = out / "matrix.jsonl"
    done = {cell_key(r["config"]["scenario"], r["seed"]): r for r in read_jsonl(records_path)} \
        if records_path.is_file() else {}
    cache = FederationCache()
    check_scenario_data(matrix.base, data_root, cache)
    cells = matrix.cells()
    pending = [c for c in cells if c.run_id not in done]
    parallel = executor is not None and executor.name != "local"
    new, sweep = _run_as_sweep(matrix, pending, out, executor, progress, data_root) if parallel and pending \
        else ({}, None)
    results: list[dict[str, Any]] = []
    for i, cell in enumerate(cells):
        if cell.run_id in done:  # labels as this matrix file names them now
            results.append({**done[cell.run_id], "run_id": cell.run_id, "aggregator": cell.aggregator,
                            "attack": cell.attack})
            continue
        if parallel:
            if cell.run_id not in new:  # its job failed: the sweep says why once every cell is in
                continue
            record = new[cell.run_id]
        else:
            record = run_cell(cell, _cell_folder(out, cell), data_root, cache)
        results.append(record)
        write_jsonl(records_path, [record], append=True)
        if on_cell is not None:
            on_cell(cell, record)
        elif progress and not parallel:
            print(_progress_line(i, len(cells), cell, record), flush=True)
    aggregators, attacks = [a for a, _ in matrix.aggregators], [a for a, _ in matrix.attacks]
    means = cell_means(results, matrix.metric)
    worst = worst_cases(results, matrix.metric, aggregators, attacks)
    plots.plot_matrix(out / "matrix.png", means, worst, matrix.metric, aggregators, attacks, title=matrix.base["name"])
    (out / "matrix.md").write_text(plots.matrix_markdown(means, worst, matrix.metric, aggregators, attacks))
    if sweep is not None:  # after the finished cells are recorded: a rerun retries only the failed ones
        sweep.raise_for_failures()
    return results


def _run_as_sweep(matrix: Matrix, pending: list[Cell], out: Path, executor: Executor, progress: bool,
                  data_root: str | Path | None) -> tuple[dict[str, dict[str, Any]], SweepResult]:
    """The pending cells as sweep jobs: {run id: matrix record} of those that finished, and the sweep."""
    source = Path(matrix.source) if matrix.source else None
    if source is None or not source.is_file():
        raise ConfigError(f"--executor {executor.name} runs each cell in a worker that reads the matrix file again; "
                          f"load the matrix from a file (got {matrix.source or 'text'!r}), or use --executor local")
    paths = {"matrix": str(source.resolve())} | ({"data_root": str(Path(data_root).resolve())} if data_root else {})
    jobs = [Job(CELL_JOB, {"cell": c.run_id, "scenario": c.scenario.to_dict(), "overrides": list(matrix.overrides)},
                seed=c.seed, label=f"{c.aggregator} x {c.attack} seed {c.seed}",
                paths={**paths, "folder": str(_cell_folder(out, c).resolve())}) for c in pending]
    result = run_sweep(jobs, out / "sweep", executor, progress=progress, desc="fl matrix")
    by_job = result.by_id()
    return {c.run_id: by_job[j.id]["cell"] for c, j in zip(pending, jobs, strict=True) if j.id in by_job}, result


CELL_JOB = "fl-matrix-cell"


class MatrixWorker:
    """What a sweep worker process keeps between the matrix cells it runs: the data and pre-training
    (`FederationCache`, as the cells of a local run share one) and the cells of the matrix file it read last.
    One `MATRIX_WORKER` per process, used by the sweep job only; the driver and the rest of the package never
    touch it (cf. flower.ClientProcess)."""

    def __init__(self) -> None:
        self.cache = FederationCache()
        self.file: tuple | None = None  # (path, overrides, bytes) of the matrix file read last
        self.cells: dict[str, Cell] = {}

    def cell(self, path: Path, overrides: list[str], cell_id: str) -> Cell | None:
        key = (str(path), tuple(overrides), path.read_bytes())
        if key != self.file:
            self.file, self.cells = key, {c.run_id: c for c in load_matrix(path, overrides).cells()}
        return self.cells.get(cell_id)


MATRIX_WORKER = MatrixWorker()


@sweep_job(CELL_JOB)
def run_cell_job(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: one matrix cell, rebuilt from the matrix file and its overrides (never from the job's config,
    which only names it), run into its folder."""
    path = Path(ctx.paths["matrix"])
    cell = MATRIX_WORKER.cell(path, list(ctx.config["overrides"]), ctx.config["cell"])
    if cell is None:
        raise ConfigError(f"the matrix file {path} changed since the run started and has no cell {ctx.label} now; "
                          "run the command again")
    return {"cell": run_cell(cell, Path(ctx.paths["folder"]), ctx.paths.get("data_root"), MATRIX_WORKER.cache)}


def cell_means(records: list[dict[str, Any]], metric: str) -> dict[tuple[str, str], tuple[float, float, float, int]]:
    """(aggregator, attack) -> (mean, min, max, seeds) of `metric` over the seeds run."""
    groups: dict[tuple[str, str], list[float]] = {}
    for r in records:
        value = r.get(metric)
        if value is not None:
            groups.setdefault((r["aggregator"], r["attack"]), []).append(float(value))
    return {k: (sum(v) / len(v), min(v), max(v), len(v)) for k, v in groups.items()}


def worst_cases(records: list[dict[str, Any]], metric: str, aggregators: list[str], attacks: list[str]
                ) -> dict[str, tuple[str, float]]:
    """Per aggregator, the attack (other than "none") that did the most harm and its mean metric."""
    means = cell_means(records, metric)
    lower = metric == "clean_accuracy"
    out = {}
    for agg in aggregators:
        cands = [(att, means[(agg, att)][0]) for att in attacks if att != "none" and (agg, att) in means]
        if cands:
            out[agg] = (min if lower else max)(cands, key=lambda c: c[1])
    return out
