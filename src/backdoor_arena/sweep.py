"""Sweeps: many independent jobs (zoo models, detector scans, seeds) run by one executor, resumable.

    from backdoor_arena.sweep import Executor, Job, run_sweep
    jobs = [Job("zoo-model", {"entry": e, ...}, seed=e["seed"], label=e["name"]) for e in plan]
    result = run_sweep(jobs, "zoo/specs/sweep", Executor("processes", jobs=2))
    result.raise_for_failures()

A job is a registered, module-level function (`@sweep_job("name")`) called with a `JobContext` (its
config, seed, label, paths and a `log`), returning a JSON-safe mapping. A job is named by its kind, its
config and its seed, never by an import path from a config: its id is `records.run_id(kind, config, seed)`,
a hash of canonical JSON, so the same job has the same id in every run, on every machine.

The sweep folder:

    FOLDER/records/<id>.json   one complete Record per finished job, written atomically by the driver
    FOLDER/logs/<id>.log       what the job printed and logged, with the traceback when it failed
    FOLDER/records.jsonl       every record of the sweep in job order, merged at the end
    FOLDER/failures.jsonl      the jobs that failed in the last run and their one-line errors (if any)

A sweep run again skips the jobs whose record exists and is complete (a killed sweep resumes where it
stopped); failed jobs have no record and run again. `paths` (where a job reads and writes) is not part of
a job's id, so a folder can move without losing its records.

Executors: `local` (in this process, one job at a time; the default), `processes` (a pool of N worker
processes started by forkserver or spawn, never fork, each with torch threads = threads // N so cores are
not oversubscribed; they leave when the driver dies, however it was killed) and `ray` (Ray tasks with `cpus_per_job`/`gpus_per_job` each and `max_retries` on
worker failure; Ray is imported only when asked for). Job results travel back to the driver, which writes
every record and log itself, so only files the jobs write themselves (model files) need a shared file
system on a cluster. Records from every executor are identical except their `run` field (executor, host,
pid, wall and CPU time): compare them with `stable_record`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .errors import ArenaError, ConfigError
from .records import Record, json_safe, run_id
from .registry import Registry
from .runtime import available_cores, set_threads, versions
from .safeio import atomic_write_text, shown

EXECUTORS = ("local", "processes", "ray")
JobFn = Callable[["JobContext"], Mapping[str, Any]]
JOBS: Registry[JobFn] = Registry("sweep job")
RUN_FIELD = "run"  # the per-run, per-machine part of a record (executor, host, pid, wall time)
RAY_INSTALL = ("--executor ray needs Ray, which is not installed here: pip install 'ray>=2.9' (or "
               "pip install 'backdoor-arena[ray]'), or use --executor processes")


def sweep_job(name: str) -> Callable[[JobFn], JobFn]:
    """Register a job function under `name`. It must be defined at module level in an importable module:
    worker processes import that module to find it (by the registry's own record, never from a config)."""

    def add(fn: JobFn) -> JobFn:
        if "<locals>" in getattr(fn, "__qualname__", "<locals>"):
            raise ValueError(f"sweep job {name!r} must be a module-level function, got {fn!r}")
        return JOBS.register(name)(fn)

    return add


class SweepError(ArenaError):
    """Some jobs of a sweep failed; the others are kept and a rerun retries only the failed ones."""

    exit_code = 1


@dataclass(frozen=True)
class Job:
    """One unit of a sweep: a registered job `kind`, its JSON-safe `config` and `seed` (together its id), a
    human `label` for progress and failure lines, and `paths` (where it reads and writes; not in the id)."""

    kind: str
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int | None = None
    label: str = ""
    paths: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config", json_safe(dict(self.config)))
        object.__setattr__(self, "paths", {str(k): str(v) for k, v in dict(self.paths).items()})
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sweep job {self.label or self.kind!r}: config is not JSON ({exc})") from None

    @property
    def id(self) -> str:
        return run_id(self.kind, self.config, self.seed)

    @property
    def name(self) -> str:
        return self.label or self.id


@dataclass(frozen=True)
class JobContext:
    """What a job function receives. `log(message)` goes to the job's log file (as does anything printed);
    what the job puts in `run` (timings, the device it used) goes to the record's `run` field, which
    `stable_record` leaves out, so that records stay comparable across runs."""

    config: Mapping[str, Any]
    seed: int | None
    label: str
    paths: Mapping[str, str]
    log: Callable[[str], None]
    run: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Executor:
    """How a sweep runs: `name` local | processes | ray; `jobs` worker processes (processes) or the CPUs of
    the Ray instance started here (ray without `address`); `address` a Ray cluster ("auto", "HOST:PORT";
    None starts a local instance); per-job Ray resources; Ray's retries of a job whose worker died."""

    name: str = "local"
    jobs: int | None = None
    address: str | None = None
    cpus_per_job: float = 1.0
    gpus_per_job: float = 0.0
    max_retries: int = 3
    threads: int | None = None  # the threads the sweep may use in all (default: base_threads())

    def __post_init__(self) -> None:
        problems = []
        if self.name not in EXECUTORS:
            problems.append(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.name!r}")
        if self.jobs is not None and (not isinstance(self.jobs, int) or isinstance(self.jobs, bool) or self.jobs < 1):
            problems.append(f"--jobs must be a positive integer, got {self.jobs!r}")
        if self.address is not None and self.name != "ray":
            problems.append(f"--address names a Ray cluster; it needs --executor ray (got --executor {self.name})")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            problems.append(f"--address must be 'auto' or HOST:PORT, got {self.address!r}")
        if not isinstance(self.cpus_per_job, (int, float)) or isinstance(self.cpus_per_job, bool) or \
                not 0 < self.cpus_per_job <= 1024:
            problems.append(f"cpus_per_job must be a positive number, got {self.cpus_per_job!r}")
        if not isinstance(self.gpus_per_job, (int, float)) or isinstance(self.gpus_per_job, bool) or \
                not 0 <= self.gpus_per_job <= 64:
            problems.append(f"gpus_per_job must be a number >= 0, got {self.gpus_per_job!r}")
        if not isinstance(self.max_retries, int) or isinstance(self.max_retries, bool) or self.max_retries < 0:
            problems.append(f"max_retries must be an integer >= 0, got {self.max_retries!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads < 1):
            problems.append(f"threads must be a positive integer, got {self.threads!r}")
        if problems:
            raise ConfigError("; ".join(problems))

    def budget(self) -> int:
        """The threads the sweep may use in all: `threads`, else $BACKDOOR_ARENA_THREADS, else every core."""
        return self.threads or base_threads()

    def workers(self) -> int:
        """Processes in the pool: --jobs, else one per thread of the budget (each with one thread)."""
        return self.jobs or self.budget()

    def describe(self) -> dict[str, Any]:
        return {"executor": self.name, "jobs": self.jobs, "address": self.address}


def base_threads() -> int:
    """The threads this machine offers the sweep: $BACKDOOR_ARENA_THREADS, else every core we may use."""
    from .runtime import _threads_from_env

    return _threads_from_env() or available_cores()


@dataclass(frozen=True)
class Failure:
    job_id: str
    label: str
    error: str  # one line: ErrorClass: message


@dataclass
class SweepResult:
    """Every record of the sweep in job order (resumed and new), what ran, what was skipped, what failed."""

    folder: Path
    records: list[dict[str, Any]]
    ran: int
    skipped: int
    failures: list[Failure]
    wall_s: float
    executor: str

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {r["run_id"]: r for r in self.records}

    def failure_summary(self, limit: int = 5) -> str:
        shown_ = "; ".join(f"{f.label}: {f.error}" for f in self.failures[:limit])
        more = f"; and {len(self.failures) - limit} more" if len(self.failures) > limit else ""
        return (f"{len(self.failures)} of {len(self.records) + len(self.failures)} sweep jobs failed ({shown_}{more}); "
                f"logs in {shown(self.folder / 'logs')}; run the same command again to retry them (finished jobs "
                "are kept)")

    def raise_for_failures(self) -> None:
        if self.failures:
            raise SweepError(self.failure_summary())


def stable_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without its per-run part: equal across executors, machines and resumed runs."""
    return {k: v for k, v in record.items() if k != RUN_FIELD}


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text}"[:500]


# ---- the worker side: the same function runs a job in this process, a pool worker or a Ray worker --------


def _worker_init(threads: int, driver_pid: int | None = None) -> None:
    """A pool or Ray worker's start: its share of the threads (the worker process is its own, so this
    process-wide setting is the worker's to make), also for code that reads the variable later. A pool
    worker also watches its sweep's driver and leaves when it is gone."""
    os.environ["BACKDOOR_ARENA_THREADS"] = str(threads)
    set_threads(threads)
    if driver_pid is not None:
        threading.Thread(target=_exit_with_driver, args=(driver_pid,), name="driver-watch", daemon=True).start()


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill(0) is all there is
        return True


def _exit_with_driver(driver_pid: int, every_s: float = 0.5) -> None:
    # A pool worker is the forkserver's child, not the driver's, and a driver killed by a signal runs no
    # clean-up: without this watch its workers (and the forkserver, which waits for them) live on, orphans
    # holding their memory and finishing jobs nobody will record.
    while process_alive(driver_pid):
        time.sleep(every_s)
    os._exit(1)


def execute(kind: str, module: str, config: Mapping[str, Any], seed: int | None, label: str,
            paths: Mapping[str, str]) -> dict[str, Any]:
    """Run one job; never raises for the job's own errors (they come back as {"ok": False, "error": ...})."""
    if module and module != "__main__":
        importlib.import_module(module)  # registers the job in a fresh worker
    buf = io.StringIO()

    def log(message: str) -> None:
        buf.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")

    started, cpu_started = time.perf_counter(), time.process_time()
    # the job's torch threads: they set the order of float sums, and with the executor they say how it ran
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "threads": torch.get_num_threads()}
    try:
        fn = JOBS.get(kind)
        ctx = JobContext(config, seed, label, paths, log)
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            result = fn(ctx)
        result, extra = json_safe(dict(result)), json_safe(ctx.run)
        json.dumps([result, extra], allow_nan=False)  # a record must be standard JSON
        out.update(ok=True, result=result, run=extra)
    except Exception as exc:
        buf.write(traceback.format_exc())
        out.update(ok=False, error=one_line(exc))
    # CPU seconds of the worker process (all its threads) during the job: what the job costs on a free core
    out.update(wall_s=round(time.perf_counter() - started, 3), cpu_s=round(time.process_time() - cpu_started, 3),
               log=buf.getvalue())
    return out


def _ray_execute(threads: int, kind: str, module: str, config: Mapping[str, Any], seed: int | None, label: str,
                 paths: Mapping[str, str]) -> dict[str, Any]:
    _worker_init(threads)
    return execute(kind, module, config, seed, label, paths)


# ---- the driver side ---------------------------------------------------------------------------------------


def _module_of(kind: str) -> str:
    return getattr(JOBS.get(kind), "__module__", "") or ""


def _read_complete(path: Path, job: Job) -> dict[str, Any] | None:
    """The record at `path` if it is a complete record of `job` (written atomically, so normally it is)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("run_id") != job.id or RUN_FIELD not in record:
        return None
    return record


class _Driver:
    def __init__(self, folder: Path, executor: Executor, progress: bool, desc: str, total: int, skipped: int):
        self.folder, self.executor = folder, executor
        self.records: dict[str, dict[str, Any]] = {}
        self.failures: list[Failure] = []
        self.running = 0
        self.bar = tqdm(total=total, initial=skipped, desc=desc, unit="job", disable=not progress,
                        dynamic_ncols=True, smoothing=0.1)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(f"running {self.running}, failed {len(self.failures)}", refresh=False)

    def started(self, n: int) -> None:
        if n != self.running:  # redraw on a change only: the Ray loop polls every second
            self.running = n
            self._postfix()
            self.bar.refresh()

    def finish(self, job: Job, outcome: dict[str, Any]) -> None:
        """Write the job's log and, if it succeeded, its record (atomically); update the bar."""
        log = outcome.get("log", "")
        atomic_write_text(self.folder / "logs" / f"{job.id}.log", f"# {job.name} ({job.kind}, seed {job.seed})\n{log}"
                          + ("" if outcome.get("ok") else f"\nFAILED: {outcome.get('error')}\n"))
        if outcome.get("ok"):
            try:
                record = Record(verb=job.kind, config=job.config, seed=job.seed, metrics=outcome["result"],
                                subject={"job": job.name, RUN_FIELD: {
                                    **outcome.get("run", {}), "executor": self.executor.name,
                                    "host": outcome.get("host"), "pid": outcome.get("pid"),
                                    "threads": outcome.get("threads"),
                                    "wall_s": outcome.get("wall_s"), "cpu_s": outcome.get("cpu_s")}},
                                versions=versions(), run_id=job.id).to_dict()
            except ValueError as exc:  # the result shadows a reserved field
                outcome = {"ok": False, "error": one_line(exc)}
            else:
                atomic_write_text(self.folder / "records" / f"{job.id}.json",
                                  json.dumps(record, sort_keys=True, allow_nan=False))
                self.records[job.id] = record
        if not outcome.get("ok"):
            self.failures.append(Failure(job.id, job.name, str(outcome.get("error"))))
        self.bar.update(1)
        self._postfix()

    def close(self) -> None:
        self.bar.close()


def run_sweep(jobs: Sequence[Job], folder: str | Path, executor: Executor | None = None, *, progress: bool = True,
              desc: str = "sweep") -> SweepResult:
    """Run every job of `jobs` not already complete in `folder` through `executor`; merge all their records into
    FOLDER/records.jsonl (job order). Failed jobs are listed in the result (and FOLDER/failures.jsonl), not
    raised: call `raise_for_failures()` for one error that names them."""
    executor = executor or Executor()
    folder = Path(folder)
    ids = [j.id for j in jobs]
    twice = sorted({j.name for j in jobs if ids.count(j.id) > 1})
    if twice:
        raise ConfigError(f"sweep jobs {twice} are the same job (same kind, config and seed) given twice")
    for kind in {j.kind for j in jobs}:
        JOBS.get(kind)  # an unknown kind is a ConfigError before anything starts
        if executor.name != "local" and _module_of(kind) in ("", "__main__"):
            raise ConfigError(f"sweep job {kind!r} is defined in __main__; define it in an importable module so that "
                              f"--executor {executor.name} workers can find it")
    (folder / "records").mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(parents=True, exist_ok=True)
    done = {j.id: r for j in jobs if (r := _read_complete(folder / "records" / f"{j.id}.json", j)) is not None}
    pending = [j for j in jobs if j.id not in done]
    started = time.perf_counter()
    driver = _Driver(folder, executor, progress, desc, len(jobs), len(done))
    try:
        if pending:
            {"local": _run_local, "processes": _run_processes, "ray": _run_ray}[executor.name](pending, driver)
    finally:
        driver.close()
    done.update(driver.records)
    records = [done[j.id] for j in jobs if j.id in done]
    atomic_write_text(folder / "records.jsonl",
                      "".join(json.dumps(r, sort_keys=True, allow_nan=False) + "\n" for r in records))
    failures_path = folder / "failures.jsonl"
    if driver.failures:
        atomic_write_text(failures_path, "".join(json.dumps(f.__dict__, sort_keys=True) + "\n" for f in driver.failures))
    elif failures_path.exists():
        failures_path.unlink()
    result = SweepResult(folder, records, len(pending), len(done) - len(driver.records), driver.failures,
                         round(time.perf_counter() - started, 3), executor.name)
    if driver.failures and progress:  # the end-of-sweep summary: one line per failed job
        tqdm.write(f"{len(driver.failures)} of {len(jobs)} jobs failed (logs in {folder / 'logs'}):", file=sys.stderr)
        for f in driver.failures:
            tqdm.write(f"  {f.label}: {f.error}", file=sys.stderr)
    return result


def _args(job: Job) -> tuple[Any, ...]:
    return (job.kind, _module_of(job.kind), job.config, job.seed, job.name, job.paths)


def _run_local(pending: list[Job], driver: _Driver) -> None:
    for job in pending:
        driver.started(1)
        driver.finish(job, execute(*_args(job)))
    driver.started(0)


def start_method() -> str:
    """forkserver where there is one (Linux), else spawn: never fork, which copies the parent's threads and locks."""
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _run_processes(pending: list[Job], driver: _Driver) -> None:
    from concurrent.futures.process import BrokenProcessPool

    # cores // N for the N asked for, even when fewer jobs are left: a job's thread count changes the order of
    # float sums, so a resumed sweep must run its last jobs as the uninterrupted one would have
    threads = max(1, driver.executor.budget() // driver.executor.workers())
    workers = min(driver.executor.workers(), len(pending))
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(start_method()),
                               initializer=_worker_init, initargs=(threads, os.getpid()))
    try:
        futures = {pool.submit(execute, *_args(job)): job for job in pending}
        remaining = set(futures)
        driver.started(min(workers, len(remaining)))
        while remaining:
            finished, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for fut in finished:
                try:
                    outcome = fut.result()
                except BrokenProcessPool as exc:  # a worker died (killed, out of memory): its jobs fail, rerun resumes
                    outcome = {"ok": False, "error": f"worker process died ({one_line(exc)})"}
                driver.finish(futures[fut], outcome)
            driver.started(min(workers, len(remaining)))
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_INSTALL) from None
    return ray


@contextlib.contextmanager
def ray_session(executor: Executor) -> Iterator[Any]:
    """Ray, connected: to `executor.address`, to the instance this process already joined, or to a local one
    started here (with `executor.jobs` CPUs) and shut down at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if executor.address is not None:
        kwargs["address"] = executor.address
    else:
        kwargs["num_cpus"] = executor.jobs or executor.budget()
    try:
        ray.init(**kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at --address {executor.address!r} ({exc}); start one with "
                          "`ray start --head` or check HOST:PORT") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _run_ray(pending: list[Job], driver: _Driver) -> None:
    ex = driver.executor
    with ray_session(ex) as ray:
        threads = max(1, int(ex.cpus_per_job))
        task = ray.remote(num_cpus=ex.cpus_per_job, num_gpus=ex.gpus_per_job, max_retries=ex.max_retries,
                          retry_exceptions=False)(_ray_execute)
        refs = {task.remote(threads, *_args(job)): job for job in pending}
        capacity = max(1, int(ray.cluster_resources().get("CPU", 1) // ex.cpus_per_job))
        remaining = list(refs)
        driver.started(min(capacity, len(remaining)))
        try:
            while remaining:
                finished, remaining = ray.wait(remaining, num_returns=1, timeout=1.0)
                for ref in finished:
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died more often than max_retries, ...
                        outcome = {"ok": False, "error": one_line(exc)}
                    driver.finish(refs[ref], outcome)
                driver.started(min(capacity, len(remaining)))
        except BaseException:
            for ref in remaining:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
            raise
