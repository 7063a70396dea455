"""Verbs of the security game (`backdoor_arena.game`): create a game, serve it, run a worker, talk to a server
as a team, play the demo. The game's dependencies (the `game` extra: FastAPI, SQLAlchemy, Alembic, argon2,
uvicorn) are imported only when one of these runs, so the rest of the project works without them."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError


def require_game_extra() -> None:
    """One line naming the missing package when the game extra is not installed."""
    try:
        import alembic  # noqa: F401
        import argon2  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"the game needs the game extra ({exc.name} is missing): "
                          "pip install 'backdoor-arena[game]'") from None


def game_init(data_dir: str | Path, db: str | None = None, admin: str = "admin",
              password: str | None = None) -> dict[str, Any]:
    """Create a game (keys, database, admin user); returns the admin's API token (and the password when one
    was generated here)."""
    require_game_extra()
    from ..game.service import init_admin, open_game

    generated = password is None
    password = password or secrets.token_urlsafe(12)
    game = open_game(data_dir, db)
    out = {"data_dir": str(game.data_dir), "admin": admin, "admin_token": init_admin(game, admin, password)}
    if generated:
        out["admin_password"] = password
    return out


def game_serve(data_dir: str | Path, db: str | None = None, host: str = "127.0.0.1", port: int = 8000,
               max_body_bytes: int = 64 << 20) -> None:
    """Run the game server (FastAPI + uvicorn) until stopped."""
    require_game_extra()
    from ..game.server import serve
    from ..game.service import open_game

    serve(open_game(data_dir, db), host, port, max_body_bytes)


def game_worker(data_dir: str | Path, db: str | None = None, once: bool = False, poll: float = 1.0,
                quiet: bool = False, rounds: list[str] | None = None) -> int:
    """Claim and run jobs until stopped (or, with `once`, until none is left); returns how many ran."""
    require_game_extra()
    from ..game.worker import worker_main

    return worker_main(data_dir, db, once, poll, quiet, rounds)


def game_client(server: str, token: str | None = None) -> Any:
    """A team's client of a game server (`game.client.Client`: submit, predict, status, board)."""
    from ..game.client import Client

    return Client(server, token) if token is not None else Client(server)


def game_demo(data_dir: str | Path, port: int = 8000, exit_after: bool = False,
              echo: Callable[[str], None] = print) -> Any:
    """A whole round on SQLite: server, worker, two attacker teams, a defender; reports the boards' URL."""
    require_game_extra()
    from ..game.demo import run_demo

    return run_demo(data_dir, port, exit_after, echo=echo)
