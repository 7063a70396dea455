"""Fixtures of the game tests: real servers (uvicorn in a subprocess on a free port), real workers, a real
database (SQLite unless BACKDOOR_ARENA_GAME_DB names a PostgreSQL URL), and small backdoored MNIST models
trained once per session."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the game extra is not installed: pip install 'backdoor-arena[game]'")
pytest.importorskip("sqlalchemy", reason="the game extra is not installed")
pytest.importorskip("argon2", reason="the game extra is not installed")

ROUND_TOML = """name = "{name}"
dataset = "mnist"
architectures = ["badnet-mnist"]
[gates]
max_upload_bytes = 2000000
max_accuracy_drop = 0.15
min_asr = 0.7
eval_samples = 300
[pool]
clean_models = {clean_models}
clean_train_samples = {clean_train_samples}
seed = 3
[defense]
clean_samples = 100
time_budget_s = 60
[defense.detectors.neural-cleanse]
steps = 6
n_samples = 30
batch_size = 8
check_every = 3
patience = 1
[defense.mitigations.fine-tuning]
epochs = 1
[limits]
daily_quota = {quota}
lease_s = {lease_s}
max_attempts = 3
"""


def round_toml(name: str, clean_models: int = 3, clean_train_samples: int = 2000, quota: int = 10,
               lease_s: float = 30) -> str:
    return ROUND_TOML.format(name=name, clean_models=clean_models, clean_train_samples=clean_train_samples,
                             quota=quota, lease_s=lease_s)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "BACKDOOR_ARENA_THREADS": "1"}


def db_args() -> list[str]:
    url = os.environ.get("BACKDOOR_ARENA_GAME_DB")
    return ["--db", url] if url else []


class Server:
    """`backdoor-arena game serve` in a subprocess on a free port; its output goes to a log in the data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log = data_dir / f"server-{time.time_ns()}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backdoor_arena", "game", "serve", "--data-dir", str(data_dir), "--port", "0",
             "--max-body-mb", "4", *db_args()], stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env=_env())
        deadline = time.monotonic() + 120
        m = None
        while m is None and time.monotonic() < deadline and self.proc.poll() is None:
            m = re.search(r"serving on (http://\S+)", self.log.read_text())
            time.sleep(0.1)
        if m is None:
            self.proc.kill()
            raise RuntimeError(f"the server did not start: {self.log.read_text()[-2000:]}")
        self.url = m.group(1)
        import httpx

        for _ in range(200):
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(20)


def start_worker(data_dir: Path, log: Path, round_name: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "backdoor_arena", "game", "worker", "--data-dir", str(data_dir),
                             "--poll", "0.2", "--round", round_name, *db_args()], stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            env=_env())


@pytest.fixture(scope="session")
def game_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A fresh game (keys, database, admin) and its admin token."""
    from backdoor_arena.game.service import init_admin, open_game

    d = tmp_path_factory.mktemp("game")
    url = os.environ.get("BACKDOOR_ARENA_GAME_DB")
    if url:  # a PostgreSQL run starts from an empty schema
        from sqlalchemy import create_engine

        from backdoor_arena.game.db import Base

        engine = create_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    game = open_game(d, url)
    return d, init_admin(game, "admin", "admin-password-1")


@pytest.fixture(scope="session")
def server(game_dir: tuple[Path, str]):
    s = Server(game_dir[0])
    yield s
    s.stop()


@pytest.fixture(scope="session")
def attack_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[Path, Path]]]:
    """One small backdoored model per attacker team (blended noise triggers, different seeds and targets)."""
    from backdoor_arena.game.demo import train_attack_model

    d = tmp_path_factory.mktemp("models")
    return {"red": [train_attack_model(d, "blended", 1, target=1, n_train=3000, epochs=3, alpha=0.2)],
            "blue": [train_attack_model(d, "blended", 2, target=3, n_train=3000, epochs=3, alpha=0.2)]}
