"""The job queue on PostgreSQL: concurrent workers claim with SELECT ... FOR UPDATE SKIP LOCKED and every job
is claimed exactly once. Needs a PostgreSQL URL in BACKDOOR_ARENA_GAME_PG_URL (CI starts Debian's
postgresql); skipped with that reason elsewhere, and never skipped when CI is set. The whole game suite runs
against PostgreSQL too with BACKDOOR_ARENA_GAME_DB set to the same URL."""

from __future__ import annotations

import os
import threading

import pytest

PG_URL = os.environ.get("BACKDOOR_ARENA_GAME_PG_URL")


@pytest.fixture()
def pg_game(tmp_path):
    if not PG_URL:
        if os.environ.get("CI"):
            pytest.fail("CI must set BACKDOOR_ARENA_GAME_PG_URL (start Debian's postgresql in .ci/run)")
        pytest.skip("no PostgreSQL: set BACKDOOR_ARENA_GAME_PG_URL=postgresql+psycopg://user@host:port/db "
                    "(apt-get install postgresql) to run the PostgreSQL queue test")
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install 'backdoor-arena[game]')")
    from sqlalchemy import create_engine

    from backdoor_arena.game.db import Base
    from backdoor_arena.game.service import open_game

    engine = create_engine(PG_URL)
    with engine.begin() as conn:  # a fresh schema: the migrations build it again
        Base.metadata.drop_all(conn)
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    engine.dispose()
    return open_game(tmp_path, PG_URL)


def test_concurrent_claims_take_each_job_once(pg_game):
    from sqlalchemy import select

    from backdoor_arena.game.db import Job
    from backdoor_arena.game.service import create_round, enqueue
    from backdoor_arena.game.worker import Worker
    from tests.game.conftest import round_toml

    with pg_game.sessions.begin() as s:
        r = create_round(s, round_toml("pg"))
        for i in range(60):
            enqueue(s, "reveal", r.id, {}, f"pg:{i}", 3)
        enqueue(s, "reveal", r.id, {}, "pg:0", 3)  # the same idempotency key again: not added
    claimed: list[tuple[str, int]] = []
    lock = threading.Lock()

    def claim_all(worker: Worker) -> None:
        while (job := worker.claim()) is not None:
            with lock:
                claimed.append((worker.id, job.id))

    workers = [Worker(pg_game, worker_id=f"w{i}") for i in range(6)]
    threads = [threading.Thread(target=claim_all, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [j for _, j in claimed]
    assert len(ids) == 60 and len(set(ids)) == 60  # nothing lost, nothing claimed twice
    assert len({w for w, _ in claimed}) > 1  # the claims really were concurrent
    with pg_game.sessions() as s:
        rows = list(s.scalars(select(Job)))
        assert all(j.state == "running" and j.attempts == 1 and j.claim_token for j in rows)
