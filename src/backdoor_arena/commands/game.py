"""`backdoor-arena game ...`: host and play the security game (issue 15). The game extra (FastAPI, uvicorn,
SQLAlchemy, Alembic, argon2) is imported inside each command, so the base CLI works without it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .options import Json, emit

DataDir = Annotated[Path, typer.Option("--data-dir", help="The game's folder: keys, model files, the SQLite database.")]
DbUrl = Annotated[str | None, typer.Option("--db", help="Database URL (default: SQLite in --data-dir; "
                                           "postgresql+psycopg://user@host/db for several machines).")]
Server = Annotated[str, typer.Option("--server", envvar="BACKDOOR_ARENA_GAME_SERVER", help="The game server's URL.")]
Token = Annotated[str, typer.Option("--token", envvar="BACKDOOR_ARENA_GAME_TOKEN", help="Your team's API token.")]
RoundName = Annotated[str, typer.Option("--round", help="Round name.")]


def init(data_dir: DataDir, db: DbUrl = None,
         admin: Annotated[str, typer.Option(help="Admin user name.")] = "admin",
         password: Annotated[str | None, typer.Option(envvar="BACKDOOR_ARENA_GAME_ADMIN_PASSWORD",
                                                      help="Admin password (default: generated and printed).")] = None,
         json_out: Json = False) -> None:
    """Create a game (keys, database, admin user) and print an admin API token."""
    out = api.game_init(data_dir, db, admin, password)
    emit(out, json_out, [f"{k}: {v}" for k, v in out.items()])


def serve(data_dir: DataDir, db: DbUrl = None, host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="Port (0: any free port, printed).")] = 8000,
          max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB.")] = 64.0) -> None:
    """Run the game server (FastAPI + uvicorn): JSON API, OpenAPI at /docs, HTML boards."""
    api.game_serve(data_dir, db, host, port, int(max_body_mb * (1 << 20)))


def worker(data_dir: DataDir, db: DbUrl = None,
           once: Annotated[bool, typer.Option("--once", help="Exit when no job is left.")] = False,
           poll: Annotated[float, typer.Option(help="Seconds between polls of an empty queue.")] = 1.0,
           quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
           rounds: Annotated[list[str] | None, typer.Option("--round", help="Only this round's jobs (repeatable).")]
           = None) -> None:
    """Claim and run jobs (gates, clean models, defenses on the pool); start more for more throughput,
    on other machines with --db pointing at the same PostgreSQL (and the same --data-dir on shared storage)."""
    n = api.game_worker(data_dir, db, once, poll, quiet, rounds)
    if not quiet:
        typer.echo(f"worker ran {n} job(s)")


def submit(model: Annotated[Path, typer.Argument(help="Weights (.safetensors).")],
           spec: Annotated[Path, typer.Option("--spec", help="The secret attack spec (F.attack.json).")],
           round_name: RoundName, server: Server, token: Token,
           architecture: Annotated[str, typer.Option(help="Architecture id.")] = "badnet-mnist",
           idempotency_key: Annotated[str | None, typer.Option(help="Retry-safe key: the same key, one submission.")] = None,
           json_out: Json = False) -> None:
    """Upload a model and its attack spec to a round (attacker teams)."""
    r = api.game_client(server, token).submit(round_name, model, spec, architecture, idempotency_key)
    emit(r, json_out, [f"submission {r['id']}: {r['state']}"])


def predict(scores: Annotated[Path, typer.Argument(help='JSON {"scores": {pool_id: probability}}.')],
            round_name: RoundName, server: Server, token: Token, json_out: Json = False) -> None:
    """Submit a defender team's scores for every pool model of a round."""
    data = json.loads(api.read_text(scores, "predictions"))
    r = api.game_client(server, token).predict(round_name, data.get("scores", data))
    emit(r, json_out, [f"predictions {r['id']}: {r['state']}"])


def status(round_name: RoundName, server: Server, token: Token, json_out: Json = False) -> None:
    """Your team's submissions in a round: state, gate, aggregate numbers."""
    rows = api.game_client(server, token).status(round_name)
    emit({"submissions": rows}, json_out, [
        f"{x['id']}  {x['kind']:<11} {x['state']:<9} {x['gate'] or '':<12} {x['message'] or ''}" for x in rows]
        or ["no submissions"])


def board(round_name: RoundName, server: Server, json_out: Json = False) -> None:
    """A round's boards (attackers and defenders)."""
    b = api.game_client(server).board(round_name)
    lines = [f"round {b['round']} ({b['phase']}){'' if b.get('final') else ', provisional'}"]
    if not b["attackers"] and not b["defenders"]:
        lines.append(b.get("note", "no boards yet"))
    for a in b["attackers"]:
        lines.append(f"attacker #{a['rank']} {a['team']}: score {a['score']}, max AUROC' {a['max_auroc']}, "
                     f"survival {a['survival']}")
    for d in b["defenders"]:
        lines.append(f"defense #{d['rank']} {d['defense']}: macro-AUROC {d['macro_auroc']} "
                     f"[{d['ci_low']}, {d['ci_high']}]")
    emit(b, json_out, lines)


def demo(data_dir: Annotated[Path, typer.Option("--data-dir")] = Path("game-demo"),
         port: Annotated[int, typer.Option(help="Port (0: any free port).")] = 8000,
         exit_after: Annotated[bool, typer.Option("--exit", help="Stop the server when the round is revealed.")] = False,
         ) -> None:
    """A whole round on SQLite: server, worker, two attacker teams, a defender; prints the boards' URL."""
    api.game_demo(data_dir, port, exit_after, echo=typer.echo)


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="The security game: host rounds where attackers submit "
                        "backdoored models and defenses hunt them (server, worker, client).")
    for fn in (init, serve, worker, submit, predict, status, board, demo):
        group.command(fn.__name__)(fn)
    app.add_typer(group, name="game")

