"""The evaluation worker: `backdoor-arena game worker` claims jobs from the job table and runs them.

A claim sets a lease (`limits.lease_s` of the round) renewed by a heartbeat thread while the job runs; a
worker that dies stops renewing, its lease expires, and the next claim by any worker takes the job over
(attempts count up; past `max_attempts` the job fails). Claims are atomic: on SQLite one
`UPDATE ... WHERE id = (SELECT ...)` inside a `BEGIN IMMEDIATE` transaction; on PostgreSQL
`SELECT ... FOR UPDATE SKIP LOCKED` so that concurrent workers never wait on each other. Work happens outside
any transaction; the job's outputs and its `done` mark are written in one transaction that first checks the
claim is still this worker's (a job taken over after a stall is never written twice).

Job kinds: train_clean (a fresh clean pool model), gate (clean accuracy and ASR of an upload), evaluate (every
defense of the round on one pool model, each within the per-model time budget) and reveal (decrypt the
round's specs once it is over).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import secrets
import signal
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from ..errors import ArenaError
from . import crypto
from .config import RoundConfig
from .db import Job, PoolModel, Result, Round, Submission, utcnow
from .gates import GateFailure, accuracy_and_asr, check_accuracy_and_asr, held_out_inputs
from .service import Game, _aad, audit

GATE_INPUT_SEED_OFFSET = 7919  # the gate inputs differ from anything else drawn from the round's seed


class TimeBudgetExceeded(Exception):
    pass


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise TimeBudgetExceeded in the block after `seconds` (SIGALRM; only in the main thread, where the
    worker runs; elsewhere the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _expired(_sig: int, _frame: Any) -> None:
        raise TimeBudgetExceeded()

    old = signal.signal(signal.SIGALRM, _expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@functools.lru_cache(maxsize=4)
def _dataset(name: str, split: str) -> Any:
    from ..data import load_dataset

    return load_dataset(name, split)


def defender_clean_set(cfg: RoundConfig) -> Any:
    """The defenses' clean set: a seeded slice of the training split, never used to train pool models."""
    train = _dataset(cfg.dataset, "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.pool.seed))
    return train.subset(order[: cfg.defense.clean_samples].sort().values)


def clean_training_set(cfg: RoundConfig, seed: int) -> Any:
    train = _dataset(cfg.dataset, "train")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.pool.seed))
    rest = order[cfg.defense.clean_samples:]
    pick = torch.randperm(len(rest), generator=torch.Generator().manual_seed(seed))[: cfg.pool.clean_train_samples]
    return train.subset(rest[pick].sort().values)


@functools.lru_cache(maxsize=4)
def _gate_inputs(dataset: str, n: int, seed: int) -> Any:
    return held_out_inputs(dataset, n, seed)


def gate_inputs(cfg: RoundConfig) -> Any:
    return _gate_inputs(cfg.dataset, cfg.gates.eval_samples, cfg.pool.seed + GATE_INPUT_SEED_OFFSET)


class Worker:
    def __init__(self, game: Game, worker_id: str | None = None, poll_s: float = 1.0, log: Any = None,
                 rounds: list[str] | None = None) -> None:
        self.game = game
        self.rounds = rounds  # claim only these rounds' jobs (None: every round)
        self.id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{secrets.token_hex(3)}"
        self.poll_s = poll_s
        self.log = log or (lambda msg: None)
        self._private_key: bytes | None = None

    @property
    def private_key(self) -> bytes:
        if self._private_key is None:
            self._private_key = self.game.private_key_path.read_bytes()
        return self._private_key

    # -- the queue ----------------------------------------------------------------------------------
    def claim(self) -> Job | None:
        now = utcnow()
        token = secrets.token_hex(16)
        with self.game.sessions.begin() as s:
            s.execute(update(Job).where(Job.state == "running", Job.lease_until < now,
                                        Job.attempts >= Job.max_attempts)
                      .values(state="failed", finished_at=now, error="the lease expired on the last allowed attempt"))
            claimable = ((Job.state == "queued") & (Job.run_after <= now)) | \
                        ((Job.state == "running") & (Job.lease_until < now))
            if self.rounds is not None:
                claimable = claimable & Job.round_id.in_(select(Round.id).where(Round.name.in_(self.rounds)))
            if s.bind.dialect.name == "postgresql":
                job_id = s.scalar(select(Job.id).where(claimable).order_by(Job.id).limit(1)
                                  .with_for_update(skip_locked=True))
            else:  # SQLite: the transaction holds the write lock since BEGIN IMMEDIATE
                job_id = s.scalar(select(Job.id).where(claimable).order_by(Job.id).limit(1))
            if job_id is None:
                return None
            job = s.get(Job, job_id)
            lease = RoundConfig.model_validate(s.get(Round, job.round_id).config).limits.lease_s
            s.execute(update(Job).where(Job.id == job_id, claimable).values(
                state="running", worker_id=self.id, claim_token=token, attempts=Job.attempts + 1,
                lease_until=now + dt.timedelta(seconds=lease)))
        with self.game.sessions() as s:
            job = s.scalar(select(Job).where(Job.id == job_id, Job.claim_token == token))
            if job is not None:
                s.expunge(job)
            return job

    @contextlib.contextmanager
    def heartbeat(self, job: Job, lease_s: float) -> Iterator[threading.Event]:
        """Renew the lease every lease/3 seconds while the block runs; `lost` is set if the claim is gone."""
        stop, lost = threading.Event(), threading.Event()

        def beat() -> None:
            while not stop.wait(lease_s / 3):
                try:
                    with self.game.sessions.begin() as s:
                        n = s.execute(update(Job).where(Job.id == job.id, Job.claim_token == job.claim_token,
                                                        Job.state == "running")
                                      .values(lease_until=utcnow() + dt.timedelta(seconds=lease_s))).rowcount
                    if n != 1:
                        lost.set()
                        return
                except Exception:  # noqa: BLE001 - a missed beat only shortens the lease
                    pass

        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield lost
        finally:
            stop.set()
            thread.join()

    def _finish(self, s: Session, job: Job, state: str = "done", error: str | None = None) -> bool:
        """Mark the job finished if this worker still holds it (in the caller's transaction)."""
        n = s.execute(update(Job).where(Job.id == job.id, Job.claim_token == job.claim_token, Job.state == "running")
                      .values(state=state, finished_at=utcnow(), error=error, lease_until=None)).rowcount
        return n == 1

    def _release(self, job: Job, delay_s: float, error: str | None = None, count_attempt: bool = True) -> None:
        with self.game.sessions.begin() as s:
            values: dict[str, Any] = {"state": "queued", "run_after": utcnow() + dt.timedelta(seconds=delay_s),
                                      "lease_until": None, "error": error}
            if not count_attempt:
                values["attempts"] = Job.attempts - 1
            s.execute(update(Job).where(Job.id == job.id, Job.claim_token == job.claim_token,
                                        Job.state == "running").values(**values))

    def run_one(self) -> bool:
        job = self.claim()
        if job is None:
            return False
        with self.game.sessions() as s:
            r = s.get(Round, job.round_id)
            cfg = RoundConfig.model_validate(r.config)
        self.log(f"worker {self.id}: job {job.id} {job.kind} (attempt {job.attempts})")
        started = time.perf_counter()
        try:
            with self.heartbeat(job, cfg.limits.lease_s):
                getattr(self, f"do_{job.kind}")(job, cfg)
        except Deferred as d:
            self._release(job, d.delay_s, count_attempt=False)
        except Exception as exc:  # noqa: BLE001 - a job's failure must not stop the worker
            message = f"{type(exc).__name__}: {str(exc)[:300]}"
            self.log(f"worker {self.id}: job {job.id} failed: {message}\n{traceback.format_exc()}")
            if job.attempts >= job.max_attempts:
                with self.game.sessions.begin() as s:
                    self._finish(s, job, "failed", message)
            else:
                self._release(job, min(30.0, 2.0 ** job.attempts), message)
        self.log(f"worker {self.id}: job {job.id} {job.kind} took {time.perf_counter() - started:.2f} s")
        return True

    def run(self, once: bool = False, max_jobs: int | None = None, stop: threading.Event | None = None) -> int:
        """Run jobs until none is left (`once`), `max_jobs` were run, or `stop` is set."""
        done = 0
        while not (stop is not None and stop.is_set()):
            if self.run_one():
                done += 1
                if max_jobs is not None and done >= max_jobs:
                    break
            elif once:
                break
            else:
                time.sleep(self.poll_s)
        return done

    # -- the jobs -----------------------------------------------------------------------------------
    def do_train_clean(self, job: Job, cfg: RoundConfig) -> None:
        from ..data import dataset_info
        from ..modelfile import Manifest, save_model
        from ..train import TrainConfig, create_model, fit

        index, seed = job.payload["index"], job.payload["seed"]
        model, args = create_model(cfg.architectures[0], dataset_info(cfg.dataset), seed)
        fit(model, clean_training_set(cfg, seed), TrainConfig(epochs=cfg.pool.clean_epochs, seed=seed, progress=False))
        accuracy, _ = accuracy_and_asr(model, gate_inputs(cfg), None)
        opaque = secrets.token_hex(8)
        info = dataset_info(cfg.dataset)
        path = self.game.folder("pool") / f"{opaque}.safetensors"
        save_model(path, model, Manifest(architecture=cfg.architectures[0], arch_args=args, dataset=cfg.dataset,
                                         input_shape=list(info.input_shape), num_classes=info.num_classes,
                                         class_names=list(info.class_names), training={}))
        with self.game.sessions.begin() as s:
            if not self._finish(s, job):  # taken over after a stall: the other worker's model counts
                path.unlink(missing_ok=True)
                return
            s.add(PoolModel(opaque_id=opaque, round_id=job.round_id, is_trojan=False, clean_index=index,
                            clean_accuracy=accuracy))
            s.flush()
            accs = list(s.scalars(select(PoolModel.clean_accuracy).where(PoolModel.round_id == job.round_id,
                                                                         PoolModel.is_trojan.is_(False))))
            if len(accs) >= cfg.pool.clean_models:
                s.get(Round, job.round_id).reference_accuracy = sum(accs) / len(accs)
            audit(s, f"worker:{self.id}", "job.train_clean", index=index)

    def _attack_of(self, sub: Submission) -> Any:
        from ..attacks.poisoning import attack_from_spec
        from ..schemas import loads_json

        plain = crypto.unseal(self.private_key, sub.spec_sealed, _aad(sub.round_id, sub.opaque_id))
        return attack_from_spec(loads_json(plain.decode(), "attack spec")), plain

    def do_gate(self, job: Job, cfg: RoundConfig) -> None:
        from ..modelfile import load_model

        with self.game.sessions() as s:
            r = s.get(Round, job.round_id)
            sub = s.get(Submission, job.payload["submission_id"])
            reference = r.reference_accuracy
            s.expunge(sub)
        if sub.state != "queued":  # already decided (a retry after the result was written)
            with self.game.sessions.begin() as s:
                self._finish(s, job)
            return
        if reference is None:
            raise Deferred(2.0)  # the clean models that set the reference are still training
        path = self.game.folder("submissions") / f"{sub.opaque_id}.safetensors"
        attack, _ = self._attack_of(sub)
        model = load_model(path).model
        accuracy, asr = accuracy_and_asr(model, gate_inputs(cfg), attack)
        metrics = {"clean_accuracy": accuracy, "attack_success_rate": asr, "reference_accuracy": reference}
        state, gate, message = "accepted", None, None
        try:
            check_accuracy_and_asr(accuracy, asr, reference, cfg.gates.max_accuracy_drop, cfg.gates.min_asr)
        except GateFailure as exc:
            state, gate, message = "rejected", exc.gate, exc.detail
        with self.game.sessions.begin() as s:
            if not self._finish(s, job):  # taken over after a stall: write nothing
                return
            row = s.get(Submission, sub.id)
            row.state, row.gate, row.gate_message, row.metrics = state, gate, message, metrics
            audit(s, f"worker:{self.id}", "job.gate", row.team_id, submission=sub.opaque_id, state=state, gate=gate)
        if state == "rejected":
            path.unlink(missing_ok=True)

    def do_evaluate(self, job: Job, cfg: RoundConfig) -> None:
        from ..modelfile import load_model
        from ..registries import MITIGATIONS, MODEL_DETECTORS

        with self.game.sessions() as s:
            pm = s.get(PoolModel, job.payload["pool_model_id"])
            sub = s.get(Submission, pm.submission_id) if pm.submission_id else None
            opaque, is_trojan = pm.opaque_id, pm.is_trojan
        attack = self._attack_of(sub)[0] if is_trojan else None
        model = load_model(self.game.folder("pool") / f"{opaque}.safetensors").model
        clean = defender_clean_set(cfg)
        test = gate_inputs(cfg)
        rows: list[dict[str, Any]] = []
        for name, params in cfg.defense.detectors.items():
            row: dict[str, Any] = {"defense": f"detector:{name}"}
            started = time.perf_counter()
            try:
                with time_budget(cfg.defense.time_budget_s):
                    verdict = MODEL_DETECTORS.create(name, **params).inspect(model, clean)
                row["score"] = float(verdict.score)
            except TimeBudgetExceeded:
                row["timed_out"] = True
            except ArenaError as exc:
                row["error"] = str(exc)[:300]
            row["runtime_s"] = time.perf_counter() - started
            rows.append(row)
        for name, params in cfg.defense.mitigations.items():
            row = {"defense": f"mitigation:{name}"}
            started = time.perf_counter()
            try:
                with time_budget(cfg.defense.time_budget_s):
                    repaired = MITIGATIONS.create(name, **params).repair(model, clean).model
                acc, asr = accuracy_and_asr(repaired, test, attack)
                row.update(clean_accuracy_after=acc, asr_after=asr)
            except TimeBudgetExceeded:
                row["timed_out"] = True
            except ArenaError as exc:
                row["error"] = str(exc)[:300]
            row["runtime_s"] = time.perf_counter() - started
            rows.append(row)
        with self.game.sessions.begin() as s:
            if not self._finish(s, job):  # taken over after a stall: write nothing
                return
            for row in rows:
                s.add(Result(round_id=job.round_id, pool_model_id=job.payload["pool_model_id"], **row))
            audit(s, f"worker:{self.id}", "job.evaluate", pool_model=opaque)

    def do_reveal(self, job: Job, cfg: RoundConfig) -> None:
        import json

        with self.game.sessions.begin() as s:
            if not self._finish(s, job):  # taken over after a stall: write nothing
                return
            for sub in s.scalars(select(Submission).where(Submission.round_id == job.round_id,
                                                          Submission.kind == "attack",
                                                          Submission.spec_sealed.is_not(None))):
                sub.spec_revealed = json.loads(self._attack_of(sub)[1])
            audit(s, f"worker:{self.id}", "job.reveal")


class Deferred(Exception):
    """A job that cannot run yet: back to the queue after `delay_s`, without counting an attempt."""

    def __init__(self, delay_s: float) -> None:
        super().__init__(f"deferred for {delay_s} s")
        self.delay_s = delay_s


def wait_for_jobs(game: Game, round_id: int, timeout_s: float) -> None:
    """Block until the round has no queued or running job (tests, the demo)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with game.sessions() as s:
            left = s.execute(text("SELECT count(*) FROM jobs WHERE round_id = :r AND state IN ('queued', 'running')"),
                             {"r": round_id}).scalar()
        if not left:
            return
        time.sleep(0.3)
    raise TimeoutError(f"round {round_id}: jobs still pending after {timeout_s} s")


def worker_main(data_dir: str | Path, url: str | None, once: bool, poll_s: float, quiet: bool,
                rounds: list[str] | None = None) -> int:
    from .service import open_game

    game = open_game(data_dir, url)
    log = (lambda m: None) if quiet else (lambda m: print(m, flush=True))
    return Worker(game, poll_s=poll_s, log=log, rounds=rounds or None).run(once=once)
