"""The game server: a FastAPI app with a JSON API (OpenAPI at /docs and /openapi.json) and server-rendered
Jinja2 pages (rounds, boards with per-defense columns, a team's own submissions, ROC plots, admin).

API clients authenticate with `Authorization: Bearer TOKEN` (scoped, expiring tokens stored hashed); the
pages use a signed session cookie (SameSite=Strict) after a password login, and the admin forms carry a CSRF
token. Request bodies are capped while they stream in (`BodyLimit`), before any parsing.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which name closures.

import contextlib
import datetime as dt
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import crypto
from .db import PHASES, ApiToken, Round, Submission, Team, User
from .gates import GateFailure
from .service import (
    Game,
    ServiceError,
    advance,
    audit,
    authenticate,
    boards,
    create_round,
    create_team,
    create_user,
    forbidden,
    get_round,
    issue_token,
    login,
    not_found,
    pool_ids,
    round_config,
    scopes_for,
    submission_view,
    submit_attack,
    submit_predictions,
)

SESSION_COOKIE = "ba_session"
SESSION_TTL_S = 8 * 3600
CHUNK = 1 << 16


class BodyLimit:
    """Refuse request bodies over `limit` bytes with 413, from Content-Length or while they stream in."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await _too_large(send, self.limit)
        seen = 0
        started = False

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(send, self.limit)


class _TooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the cap. An HTTPException, so that FastAPI's body
    parsing passes it on (it turns other exceptions into 400) and the handler answers 413."""

    def __init__(self) -> None:
        super().__init__(413, "size gate: the request body is too large")


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps({"detail": f"size gate: the request is larger than {limit} bytes", "gate": "size"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class LoginBody(BaseModel):
    username: str
    password: str


class TeamBody(BaseModel):
    name: str
    role: str


class UserBody(BaseModel):
    username: str
    password: str
    team: str | None = None


class TokenBody(BaseModel):
    team: str | None = None
    scopes: list[str]
    ttl_s: float = 30 * 86400


class AdvanceBody(BaseModel):
    to: str


def create_app(game: Game, max_body_bytes: int = 64 << 20) -> Any:
    app = FastAPI(title="backdoor-arena game", version="1",
                  description="Attackers submit backdoored models, defenses try to find them; boards rank both.")
    templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
    secret = game.session_secret

    def db() -> Iterator[Session]:
        with game.sessions.begin() as s:
            yield s

    # scope="function": the transaction commits before the response is sent, so a 201 is always durable
    DB = Annotated[Session, Depends(db, scope="function")]

    def bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
        if authorization and authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return None

    def token_with(scope: str) -> Any:
        def dep(s: DB, request: Request, token: Annotated[str | None, Depends(bearer)]) -> ApiToken:
            row = authenticate(s, token, scope)
            audit(s, row.prefix, f"api {request.method} {request.url.path}"[:64], row.team_id,
                  request.client.host if request.client else None)
            return row
        return dep

    @app.exception_handler(ServiceError)
    async def _service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(_TooLarge)
    async def _too_large_error(_request: Request, _exc: _TooLarge) -> JSONResponse:
        # a body without Content-Length that grew past the cap while the route was reading it
        return JSONResponse({"detail": f"size gate: the request is larger than {max_body_bytes} bytes",
                             "gate": "size"}, status_code=413)

    @app.exception_handler(GateFailure)
    async def _gate_error(_request: Request, exc: GateFailure) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "gate": exc.gate}, status_code=413 if exc.gate == "size" else 422)

    def team_of(s: Session, tok: ApiToken) -> Team:
        team = s.get(Team, tok.team_id) if tok.team_id else None
        if team is None:
            raise forbidden("this token belongs to no team")
        return team

    def round_view(s: Session, r: Round) -> dict[str, Any]:
        cfg = round_config(r)
        out: dict[str, Any] = {"name": r.name, "phase": r.phase, "phases": list(PHASES), "dataset": cfg.dataset,
                               "architectures": cfg.architectures, "detectors": sorted(cfg.defense.detectors),
                               "mitigations": sorted(cfg.defense.mitigations),
                               "phase_changed_at": r.phase_changed_at.isoformat() + "Z"}
        if PHASES.index(r.phase) >= PHASES.index("frozen"):  # sealed: the commitments are public
            out["commitments"] = sorted(c for c in s.scalars(select(Submission.spec_commitment).where(
                Submission.round_id == r.id, Submission.kind == "attack", Submission.state == "accepted")) if c)
        if r.phase == "revealed":
            teams = {t.id: t.name for t in s.scalars(select(Team))}
            out["reveal"] = [{"team": teams[x.team_id], "commitment": x.spec_commitment,
                              "salt": x.spec_salt.hex() if x.spec_salt else None, "spec": x.spec_revealed}
                             for x in s.scalars(select(Submission).where(
                                 Submission.round_id == r.id, Submission.kind == "attack",
                                 Submission.state == "accepted"))]
        return out

    # -- JSON API -----------------------------------------------------------------------------------
    @app.post("/api/login")
    def api_login(body: LoginBody, s: DB) -> dict[str, Any]:
        user = login(s, body.username, body.password)
        scopes = scopes_for(s, user)
        token = issue_token(s, scopes, team_id=user.team_id, user_id=user.id, ttl_s=SESSION_TTL_S,
                            actor=user.username)
        return {"token": token, "scopes": scopes}

    @app.post("/api/teams", status_code=201)
    def api_team(body: TeamBody, s: DB, tok: Annotated[ApiToken, Depends(token_with("admin"))]) -> dict[str, Any]:
        t = create_team(s, body.name, body.role, tok.prefix)
        return {"id": t.id, "name": t.name, "role": t.role}

    @app.post("/api/users", status_code=201)
    def api_user(body: UserBody, s: DB, tok: Annotated[ApiToken, Depends(token_with("admin"))]) -> dict[str, Any]:
        team = s.scalar(select(Team).where(Team.name == body.team)) if body.team else None
        if body.team and team is None:
            raise not_found(f"no team {body.team!r}")
        u = create_user(s, body.username, body.password, team.id if team else None, actor=tok.prefix)
        return {"id": u.id, "username": u.username, "team": body.team}

    @app.post("/api/tokens", status_code=201)
    def api_token(body: TokenBody, s: DB, tok: Annotated[ApiToken, Depends(token_with("admin"))]) -> dict[str, Any]:
        team = s.scalar(select(Team).where(Team.name == body.team)) if body.team else None
        if body.team and team is None:
            raise not_found(f"no team {body.team!r}")
        token = issue_token(s, body.scopes, team_id=team.id if team else None, ttl_s=body.ttl_s, actor=tok.prefix)
        return {"token": token, "team": body.team, "scopes": body.scopes}

    @app.post("/api/rounds", status_code=201)
    async def api_create_round(request: Request, s: DB,
                               tok: Annotated[ApiToken, Depends(token_with("admin"))]) -> dict:
        # one session per request (the token check's): a second one would wait on SQLite's write lock forever
        text = (await request.body()).decode("utf-8", "replace")
        return round_view(s, create_round(s, text, tok.prefix))

    @app.post("/api/rounds/{name}/advance")
    def api_advance(name: str, body: AdvanceBody, s: DB,
                    tok: Annotated[ApiToken, Depends(token_with("admin"))]) -> dict[str, Any]:
        r = advance(game, s, get_round(s, name), body.to, tok.prefix)
        return round_view(s, r)

    @app.get("/api/rounds")
    def api_rounds(s: DB) -> list[dict[str, Any]]:
        return [round_view(s, r) for r in s.scalars(select(Round).order_by(Round.id))]

    @app.get("/api/rounds/{name}")
    def api_round(name: str, s: DB) -> dict[str, Any]:
        return round_view(s, get_round(s, name))

    @app.post("/api/rounds/{name}/submissions", status_code=201)
    def api_submit(name: str, request: Request, s: DB, tok: Annotated[ApiToken, Depends(token_with("attack:submit"))],
                   model: Annotated[UploadFile, File(description="weights (safetensors)")],
                   spec: Annotated[UploadFile, File(description="the secret attack spec (JSON)")],
                   architecture: Annotated[str, Form()],
                   idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        r = get_round(s, name)
        cfg = round_config(r)
        team = team_of(s, tok)
        incoming = game.folder("incoming")
        tmp = incoming / f"{secrets.token_hex(12)}.part"
        try:
            size = 0
            with tmp.open("wb") as fh:
                while chunk := model.file.read(CHUNK):
                    size += len(chunk)
                    if size > cfg.gates.max_upload_bytes:
                        raise GateFailure("size", f"the model file is larger than the round's "
                                          f"{cfg.gates.max_upload_bytes} bytes")
                    fh.write(chunk)
            spec_bytes = spec.file.read(cfg.gates.max_spec_bytes + 1)
            sub = submit_attack(game, s, r, team, tmp, filename=model.filename or "", architecture=architecture,
                                spec_bytes=spec_bytes, idempotency_key=idempotency_key, actor=tok.prefix,
                                ip=request.client.host if request.client else None)
            return submission_view(sub, r.phase)
        finally:
            tmp.unlink(missing_ok=True)

    @app.get("/api/rounds/{name}/submissions")
    def api_my_submissions(name: str, s: DB,
                           tok: Annotated[ApiToken, Depends(token_with("results:read"))]) -> list[dict[str, Any]]:
        r = get_round(s, name)
        team = team_of(s, tok)
        return [submission_view(x, r.phase) for x in s.scalars(select(Submission).where(
            Submission.round_id == r.id, Submission.team_id == team.id).order_by(Submission.id))]

    @app.get("/api/submissions/{opaque}")
    def api_submission(opaque: str, s: DB,
                       tok: Annotated[ApiToken, Depends(token_with("results:read"))]) -> dict[str, Any]:
        sub = s.scalar(select(Submission).where(Submission.opaque_id == opaque))
        if sub is None:
            raise not_found("no such submission")
        if "admin" not in tok.scopes.split() and sub.team_id != tok.team_id:
            raise forbidden("this submission belongs to another team")
        return submission_view(sub, s.get(Round, sub.round_id).phase)

    def _pool_open(r: Round) -> None:
        if PHASES.index(r.phase) < PHASES.index("defense"):
            raise ServiceError(f"the pool opens in the defense phase; round {r.name!r} is in {r.phase!r}", 409)

    @app.get("/api/rounds/{name}/pool")
    def api_pool(name: str, s: DB, tok: Annotated[ApiToken, Depends(token_with("defense:submit"))]) -> list[str]:
        r = get_round(s, name)
        _pool_open(r)
        return pool_ids(s, r)

    @app.get("/api/rounds/{name}/pool/{pool_id}")
    def api_pool_model(name: str, pool_id: str, s: DB,
                       tok: Annotated[ApiToken, Depends(token_with("defense:submit"))]) -> FileResponse:
        r = get_round(s, name)
        _pool_open(r)
        if pool_id not in set(pool_ids(s, r)):
            raise not_found("no such pool model")
        return FileResponse(game.folder("pool") / f"{pool_id}.safetensors", media_type="application/octet-stream",
                            filename=f"{pool_id}.safetensors")

    @app.post("/api/rounds/{name}/predictions", status_code=201)
    async def api_predictions(name: str, request: Request, s: DB,
                              tok: Annotated[ApiToken, Depends(token_with("defense:submit"))],
                              idempotency_key: Annotated[str | None, Header()] = None) -> dict[str, Any]:
        body = await request.body()
        r = get_round(s, name)
        sub = submit_predictions(s, r, team_of(s, tok), body, idempotency_key, tok.prefix)
        return submission_view(sub, r.phase)

    @app.get("/api/rounds/{name}/board")
    def api_board(name: str, s: DB) -> dict[str, Any]:
        return boards(s, get_round(s, name))

    @app.get("/api/rounds/{name}/roc.png")
    def api_roc(name: str, s: DB) -> Response:
        from .scoring import roc_png
        from .service import board_inputs

        r = get_round(s, name)
        if PHASES.index(r.phase) < PHASES.index("scoring"):
            raise ServiceError("the ROC plot opens in the scoring phase", 409)
        entries, defenses, *_ = board_inputs(s, r)
        return Response(roc_png(entries, defenses, f"round {r.name}: pooled ROC"), media_type="image/png")

    # -- pages --------------------------------------------------------------------------------------
    def session_user(s: Session, request: Request) -> User | None:
        raw = request.cookies.get(SESSION_COOKIE, "")
        parts = raw.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        if not secrets.compare_digest(parts[2], crypto.sign(secret, f"{parts[0]}.{parts[1]}")):
            return None
        if int(parts[1]) < time.time():
            return None
        return s.get(User, int(parts[0]))

    def csrf_for(request: Request) -> str:
        return crypto.sign(secret, "csrf:" + request.cookies.get(SESSION_COOKIE, ""))

    def page(request: Request, name: str, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx)

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request, s: DB) -> HTMLResponse:
        return page(request, "index.html", rounds=[round_view(s, r) for r in s.scalars(select(Round).order_by(Round.id))],
                    user=session_user(s, request))

    @app.get("/rounds/{name}", response_class=HTMLResponse)
    def round_page(name: str, request: Request, s: DB) -> HTMLResponse:
        r = get_round(s, name)
        return page(request, "round.html", round=round_view(s, r), board=boards(s, r), user=session_user(s, request))

    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request) -> HTMLResponse:
        return page(request, "login.html", error=None, user=None)

    @app.post("/login")
    def login_form(request: Request, s: DB, username: Annotated[str, Form()], password: Annotated[str, Form()]) -> Any:
        try:
            user = login(s, username, password)
        except ServiceError:
            return page(request, "login.html", error="wrong user name or password", user=None)
        expires = int(time.time()) + SESSION_TTL_S
        value = f"{user.id}.{expires}"
        response = RedirectResponse("/admin" if user.is_admin else "/me", status_code=303)
        response.set_cookie(SESSION_COOKIE, f"{value}.{crypto.sign(secret, value)}", max_age=SESSION_TTL_S,
                            httponly=True, samesite="strict")
        audit(s, user.username, "login", user.team_id, request.client.host if request.client else None)
        return response

    @app.get("/me", response_class=HTMLResponse)
    def me(request: Request, s: DB) -> Any:
        user = session_user(s, request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        team = s.get(Team, user.team_id) if user.team_id else None
        subs = []
        if team is not None:
            rounds = {r.id: r for r in s.scalars(select(Round))}
            subs = [{"round": rounds[x.round_id].name, **submission_view(x, rounds[x.round_id].phase)}
                    for x in s.scalars(select(Submission).where(Submission.team_id == team.id).order_by(Submission.id))]
        return page(request, "me.html", user=user, team=team, submissions=subs)

    def admin_user(s: Session, request: Request, csrf: str | None = None) -> User:
        user = session_user(s, request)
        if user is None or not user.is_admin:
            raise forbidden("log in as an admin first (/login)")
        if csrf is not None and not secrets.compare_digest(csrf, csrf_for(request)):
            raise forbidden("the form's CSRF token is wrong; reload the page")
        return user

    @app.get("/admin", response_class=HTMLResponse)
    def admin(request: Request, s: DB) -> Any:
        if session_user(s, request) is None:
            return RedirectResponse("/login", status_code=303)
        user = admin_user(s, request)
        return page(request, "admin.html", user=user, csrf=csrf_for(request), message=request.query_params.get("m"),
                    teams=list(s.scalars(select(Team).order_by(Team.id))),
                    rounds=[round_view(s, r) for r in s.scalars(select(Round).order_by(Round.id))],
                    next_phase={p: PHASES[i + 1] for i, p in enumerate(PHASES[:-1])})

    def _back(message: str) -> RedirectResponse:
        from urllib.parse import quote

        return RedirectResponse(f"/admin?m={quote(message)}", status_code=303)

    @app.post("/admin/teams")
    def admin_team(request: Request, s: DB, name: Annotated[str, Form()], role: Annotated[str, Form()],
                   csrf: Annotated[str, Form()]) -> Any:
        user = admin_user(s, request, csrf)
        with contextlib.suppress(ServiceError):
            create_team(s, name, role, user.username)
            return _back(f"team {name} created")
        return _back(f"team {name} not created (name taken or invalid)")

    @app.post("/admin/tokens")
    def admin_token(request: Request, s: DB, team: Annotated[str, Form()], ttl_days: Annotated[float, Form()],
                    csrf: Annotated[str, Form()]) -> Any:
        user = admin_user(s, request, csrf)
        t = s.scalar(select(Team).where(Team.name == team))
        if t is None:
            raise not_found(f"no team {team!r}")
        scopes = ["results:read", "attack:submit" if t.role == "attacker" else "defense:submit"]
        token = issue_token(s, scopes, team_id=t.id, ttl_s=ttl_days * 86400, actor=user.username)
        return _back(f"token for {team} (shown once): {token}")

    @app.post("/admin/rounds")
    def admin_round(request: Request, s: DB, config: Annotated[str, Form()], csrf: Annotated[str, Form()]) -> Any:
        user = admin_user(s, request, csrf)
        r = create_round(s, config, user.username)
        return _back(f"round {r.name} created")

    @app.post("/admin/rounds/{name}/advance")
    def admin_advance(name: str, request: Request, s: DB, to: Annotated[str, Form()],
                      csrf: Annotated[str, Form()]) -> Any:
        user = admin_user(s, request, csrf)
        advance(game, s, get_round(s, name), to, user.username)
        return _back(f"round {name} is now {to}")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "time": dt.datetime.now(dt.timezone.utc).isoformat()}

    return BodyLimit(app, max_body_bytes), app


def serve(game: Game, host: str, port: int, max_body_bytes: int = 64 << 20, log_level: str = "warning",
          ready: Any = None) -> None:
    """Run the server with uvicorn until interrupted. With port 0 the OS picks a free port; `ready(port)` is
    called with the bound port (and the server prints it)."""
    import socket

    import uvicorn

    wrapped, _ = create_app(game, max_body_bytes)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    print(f"serving on http://{host}:{bound}", flush=True)
    if ready is not None:
        ready(bound)
    uvicorn.Server(uvicorn.Config(wrapped, log_level=log_level, access_log=False)).run(sockets=[sock])
