"""What the game server does, independent of HTTP: accounts and tokens, rounds and their phases, uploads
through the gates, the job queue's producer side and the audit log. The FastAPI layer (server.py) maps the
errors here to status codes (`ServiceError.status`) and does nothing else of substance.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..errors import ArenaError
from . import crypto
from .config import RoundConfig, loads_round_config
from .db import (
    NEXT_PHASE,
    PHASES,
    SCOPES,
    ApiToken,
    AuditEvent,
    Job,
    PoolModel,
    Round,
    Submission,
    Team,
    User,
    open_database,
    utcnow,
)
from .gates import GateFailure, canonicalise, check_architecture, check_format, reference_shapes

FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.safetensors$")
IDEMPOTENCY = re.compile(r"^[A-Za-z0-9._:-]{1,80}$")
MAX_PREDICTIONS_BYTES = 1 << 20


class ServiceError(ArenaError):
    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def unauthorized(msg: str) -> ServiceError:
    return ServiceError(msg, 401)


def forbidden(msg: str) -> ServiceError:
    return ServiceError(msg, 403)


def not_found(msg: str) -> ServiceError:
    return ServiceError(msg, 404)


def conflict(msg: str) -> ServiceError:
    return ServiceError(msg, 409)


@dataclass
class Game:
    """One game's state on disk and in the database: `data_dir` holds the keys, the canonical files and the
    SQLite database (unless `url` names another database)."""

    data_dir: Path
    url: str
    sessions: sessionmaker

    @property
    def public_key(self) -> bytes:
        return (self.data_dir / "keys" / "spec.pub").read_bytes()

    @property
    def private_key_path(self) -> Path:
        return self.data_dir / "keys" / "spec.key"

    @property
    def session_secret(self) -> bytes:
        return (self.data_dir / "keys" / "session.key").read_bytes()

    def folder(self, name: str) -> Path:
        p = self.data_dir / name
        p.mkdir(parents=True, exist_ok=True)
        return p


def open_game(data_dir: str | Path, url: str | None = None) -> Game:
    """Open (creating and migrating where needed) the game in `data_dir`."""
    from .db import default_url

    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    keys = data_dir / "keys"
    crypto.keygen(keys)
    session_key = keys / "session.key"
    if not session_key.exists():
        fd = os.open(session_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    url = url or default_url(data_dir)
    _, sessions = open_database(url)
    return Game(data_dir, url, sessions)


def audit(s: Session, actor: str, action: str, team_id: int | None = None, ip: str | None = None,
          **detail: Any) -> None:
    s.add(AuditEvent(actor=actor[:80], action=action, team_id=team_id, ip=ip, detail=detail))


# -- accounts -------------------------------------------------------------------------------------------
def create_team(s: Session, name: str, role: str, actor: str = "admin") -> Team:
    if role not in ("attacker", "defender"):
        raise ServiceError(f"role must be attacker or defender, got {role!r}", 422)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$", name or ""):
        raise ServiceError("team name: 1-64 letters, digits, spaces, '.', '_' or '-'", 422)
    if s.scalar(select(Team).where(Team.name == name)) is not None:
        raise conflict(f"team {name!r} exists")
    team = Team(name=name, role=role)
    s.add(team)
    s.flush()
    audit(s, actor, "team.create", team.id, name=name, role=role)
    return team


def create_user(s: Session, username: str, password: str, team_id: int | None, is_admin: bool = False,
                actor: str = "admin") -> User:
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", username or ""):
        raise ServiceError("user name: 1-64 letters, digits, '.', '_' or '-'", 422)
    if len(password) < 8:
        raise ServiceError("password: at least 8 characters", 422)
    if s.scalar(select(User).where(User.username == username)) is not None:
        raise conflict(f"user {username!r} exists")
    user = User(username=username, password_hash=crypto.hash_password(password), team_id=team_id, is_admin=is_admin)
    s.add(user)
    s.flush()
    audit(s, actor, "user.create", team_id, username=username, is_admin=is_admin)
    return user


def issue_token(s: Session, scopes: list[str], *, team_id: int | None = None, user_id: int | None = None,
                ttl_s: float = 30 * 86400, actor: str = "admin") -> str:
    unknown = [x for x in scopes if x not in SCOPES]
    if unknown or not scopes:
        raise ServiceError(f"scopes must be among {', '.join(SCOPES)}; got {', '.join(scopes) or 'none'}", 422)
    if "admin" not in scopes and team_id is None:
        raise ServiceError("a team token needs a team", 422)
    token = crypto.new_token()
    s.add(ApiToken(token_hash=crypto.token_hash(token), prefix=token[:10], team_id=team_id, user_id=user_id,
                   scopes=" ".join(sorted(set(scopes))), expires_at=utcnow() + dt.timedelta(seconds=ttl_s)))
    audit(s, actor, "token.issue", team_id, prefix=token[:10], scopes=sorted(set(scopes)), ttl_s=ttl_s)
    return token


def login(s: Session, username: str, password: str) -> User:
    user = s.scalar(select(User).where(User.username == username))
    if user is None or not crypto.verify_password(user.password_hash, password):
        raise unauthorized("wrong user name or password")
    return user


def scopes_for(s: Session, user: User) -> list[str]:
    if user.is_admin:
        return ["admin", "results:read"]
    team = s.get(Team, user.team_id) if user.team_id else None
    if team is None:
        raise forbidden("the user belongs to no team")
    return ["results:read", "attack:submit" if team.role == "attacker" else "defense:submit"]


def authenticate(s: Session, token: str | None, scope: str) -> ApiToken:
    """The token row for a bearer token holding `scope`: 401 when missing, unknown, revoked or expired;
    403 when it lacks the scope."""
    if not token:
        raise unauthorized("no API token; send Authorization: Bearer TOKEN")
    row = s.scalar(select(ApiToken).where(ApiToken.token_hash == crypto.token_hash(token)))
    if row is None or row.revoked:
        raise unauthorized("unknown or revoked API token")
    if row.expires_at <= utcnow():
        raise unauthorized("the API token has expired; ask the organisers for a new one")
    held = row.scopes.split()
    if scope not in held and "admin" not in held:
        raise forbidden(f"the token lacks the {scope!r} scope")
    return row


# -- rounds ---------------------------------------------------------------------------------------------
def round_config(r: Round) -> RoundConfig:
    return RoundConfig.model_validate(r.config)


def get_round(s: Session, name: str) -> Round:
    r = s.scalar(select(Round).where(Round.name == name))
    if r is None:
        raise not_found(f"no round {name!r}")
    return r


def create_round(s: Session, toml_text: str, actor: str = "admin") -> Round:
    cfg = loads_round_config(toml_text)
    if s.scalar(select(Round).where(Round.name == cfg.name)) is not None:
        raise conflict(f"round {cfg.name!r} exists")
    r = Round(name=cfg.name, phase="draft", config=cfg.model_dump(mode="json"), config_toml=toml_text)
    s.add(r)
    s.flush()
    audit(s, actor, "round.create", name=cfg.name)
    return r


def enqueue(s: Session, kind: str, round_id: int, payload: dict[str, Any], key: str, max_attempts: int) -> None:
    """Add a job unless one with the same idempotency key exists (so a repeated transition adds nothing)."""
    if s.scalar(select(Job.id).where(Job.idempotency_key == key)) is None:
        s.add(Job(kind=kind, round_id=round_id, payload=payload, idempotency_key=key, max_attempts=max_attempts))


def pending_jobs(s: Session, round_id: int, kinds: tuple[str, ...]) -> int:
    return s.scalar(select(func.count(Job.id)).where(Job.round_id == round_id, Job.kind.in_(kinds),
                                                      Job.state.in_(("queued", "running")))) or 0


def advance(game: Game, s: Session, r: Round, to: str, actor: str = "admin") -> Round:
    """Move a round one phase forward; each move does its work (queue clean models, build the pool, queue
    evaluations, queue the reveal) in the same transaction."""
    if to not in PHASES:
        raise ServiceError(f"unknown phase {to!r}; phases: {', '.join(PHASES)}", 422)
    if NEXT_PHASE.get(r.phase) != to:
        raise conflict(f"round {r.name!r} is in phase {r.phase!r}; the next phase is "
                       f"{NEXT_PHASE.get(r.phase, 'none (the round is over)')!r}")
    cfg = round_config(r)
    attempts = cfg.limits.max_attempts
    if to == "attack_open":
        for i in range(cfg.pool.clean_models):
            enqueue(s, "train_clean", r.id, {"index": i, "seed": cfg.pool.seed * 1000 + i}, f"r{r.id}:clean:{i}",
                    attempts)
    elif to == "defense":
        waiting = pending_jobs(s, r.id, ("train_clean", "gate"))
        if waiting:
            raise conflict(f"{waiting} clean-model or gate job(s) still pending; run a worker and try again")
        pool_dir = game.folder("pool")
        for sub in s.scalars(select(Submission).where(Submission.round_id == r.id, Submission.kind == "attack",
                                                      Submission.state == "accepted")):
            if s.scalar(select(PoolModel.id).where(PoolModel.submission_id == sub.id)) is None:
                opaque = secrets.token_hex(8)
                shutil.copyfile(game.folder("submissions") / f"{sub.opaque_id}.safetensors",
                                pool_dir / f"{opaque}.safetensors")
                s.add(PoolModel(opaque_id=opaque, round_id=r.id, submission_id=sub.id, is_trojan=True,
                                clean_accuracy=sub.metrics["clean_accuracy"],
                                attack_success_rate=sub.metrics["attack_success_rate"]))
        s.flush()
        for pm in s.scalars(select(PoolModel).where(PoolModel.round_id == r.id)):
            pm.in_pool = True
            enqueue(s, "evaluate", r.id, {"pool_model_id": pm.id}, f"r{r.id}:evaluate:{pm.id}", attempts)
    elif to == "scoring":
        waiting = pending_jobs(s, r.id, ("evaluate",))
        if waiting:
            raise conflict(f"{waiting} evaluation job(s) still pending; run a worker and try again")
    elif to == "revealed":
        enqueue(s, "reveal", r.id, {}, f"r{r.id}:reveal", attempts)
    r.phase = to
    r.phase_changed_at = utcnow()
    audit(s, actor, "round.advance", to=to, round=r.name)
    return r


# -- submissions ----------------------------------------------------------------------------------------
def _check_filename(filename: str) -> None:
    if not FILENAME.match(filename or "") or ".." in filename:
        raise GateFailure("filename", "the file name must be a plain name like model.safetensors (letters, digits, "
                          "'.', '_', '-'; no folders)")


def _check_spec(spec_bytes: bytes, cfg: RoundConfig) -> dict[str, Any]:
    from ..attacks.poisoning import attack_from_spec
    from ..data import dataset_info
    from ..schemas import loads_json

    if len(spec_bytes) > cfg.gates.max_spec_bytes:
        raise GateFailure("spec", f"the attack spec has {len(spec_bytes)} bytes; at most {cfg.gates.max_spec_bytes}")
    try:
        spec = loads_json(spec_bytes.decode("utf-8"), "attack spec")
        atk = attack_from_spec(spec)
    except UnicodeDecodeError:
        raise GateFailure("spec", "the attack spec is not UTF-8 JSON") from None
    except ArenaError as exc:
        raise GateFailure("spec", str(exc)) from None
    info = dataset_info(cfg.dataset)
    if atk.num_classes != info.num_classes:
        raise GateFailure("spec", f"the spec is for {atk.num_classes} classes; {cfg.dataset} has {info.num_classes}")
    import torch

    try:
        atk.apply_trigger(torch.zeros(1, *info.input_shape))
    except (ArenaError, RuntimeError, ValueError) as exc:
        raise GateFailure("spec", f"the trigger does not apply to {cfg.dataset} inputs ({str(exc)[:100]})") from None
    return spec


def submit_attack(game: Game, s: Session, r: Round, team: Team, upload: Path, *, filename: str, architecture: str,
                  spec_bytes: bytes, idempotency_key: str | None, actor: str, ip: str | None = None) -> Submission:
    """Gate an uploaded file (size was capped while streaming): file name, phase, quota, format,
    architecture and spec here; accuracy and ASR in the worker. Nothing is stored unless all pass."""
    cfg = round_config(r)
    if team.role != "attacker":
        raise forbidden("only attacker teams submit models")
    if r.phase != "attack_open":
        raise conflict(f"round {r.name!r} is in phase {r.phase!r}; models are accepted in attack_open")
    _check_filename(filename)
    key = idempotency_key or secrets.token_hex(16)
    if not IDEMPOTENCY.match(key):
        raise ServiceError("Idempotency-Key: 1-80 letters, digits, '.', '_', ':' or '-'", 422)
    existing = s.scalar(select(Submission).where(Submission.team_id == team.id, Submission.round_id == r.id,
                                                 Submission.idempotency_key == key))
    if existing is not None:
        return existing
    since = utcnow() - dt.timedelta(days=1)
    used = s.scalar(select(func.count(Submission.id)).where(
        Submission.team_id == team.id, Submission.round_id == r.id, Submission.kind == "attack",
        Submission.created_at >= since)) or 0
    if used >= cfg.limits.daily_quota:
        raise ServiceError(f"quota: {used} uploads in the last 24 h; the round allows {cfg.limits.daily_quota}", 429)
    if architecture not in cfg.architectures:
        raise GateFailure("architecture", f"{architecture[:40]!r} is not allowed in this round; allowed: "
                          f"{', '.join(cfg.architectures)}")
    entries = check_format(upload, cfg.gates.max_header_bytes)
    check_architecture(entries, reference_shapes(architecture, cfg.dataset)[2])
    spec = _check_spec(spec_bytes, cfg)
    opaque = secrets.token_hex(8)
    target = game.folder("submissions") / f"{opaque}.safetensors"
    canonicalise(upload, target, architecture, cfg.dataset)
    salt = secrets.token_bytes(16)
    sub = Submission(opaque_id=opaque, round_id=r.id, team_id=team.id, kind="attack", architecture=architecture,
                     state="queued", metrics={}, upload_sha256=_sha256(upload),
                     spec_sealed=crypto.seal(game.public_key, crypto.canonical_json(spec), _aad(r.id, opaque)),
                     spec_salt=salt, spec_commitment=crypto.commitment(salt, spec), idempotency_key=key)
    try:
        with s.begin_nested():
            s.add(sub)
            s.flush()
    except IntegrityError:  # the same key raced in from a concurrent retry: keep the first
        target.unlink(missing_ok=True)
        existing = s.scalar(select(Submission).where(Submission.team_id == team.id, Submission.round_id == r.id,
                                                     Submission.idempotency_key == key))
        if existing is None:
            raise
        return existing
    enqueue(s, "gate", r.id, {"submission_id": sub.id}, f"gate:{sub.id}", cfg.limits.max_attempts)
    audit(s, actor, "submission.attack", team.id, ip, submission=opaque, round=r.name)
    return sub


def _aad(round_id: int, opaque: str) -> bytes:
    return f"round={round_id};submission={opaque}".encode()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pool_ids(s: Session, r: Round) -> list[str]:
    return list(s.scalars(select(PoolModel.opaque_id).where(PoolModel.round_id == r.id, PoolModel.in_pool)
                          .order_by(PoolModel.opaque_id)))


def submit_predictions(s: Session, r: Round, team: Team, body: bytes, idempotency_key: str | None,
                       actor: str) -> Submission:
    """A defender team's offline defense: {"scores": {pool_id: probability of trojan}} for every pool model."""
    if team.role != "defender":
        raise forbidden("only defender teams submit predictions")
    if r.phase != "defense":
        raise conflict(f"round {r.name!r} is in phase {r.phase!r}; predictions are accepted in defense")
    if len(body) > MAX_PREDICTIONS_BYTES:
        raise ServiceError("predictions: more than 1 MiB", 413)
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ServiceError("predictions: not JSON", 422) from None
    scores = data.get("scores") if isinstance(data, dict) else None
    ids = set(pool_ids(s, r))
    if not isinstance(scores, dict) or set(scores) != ids:
        raise ServiceError(f"predictions: 'scores' must map each of the {len(ids)} pool ids to a probability", 422)
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in scores.values()):
        raise ServiceError("predictions: every score must be a probability in [0, 1]", 422)
    key = idempotency_key or secrets.token_hex(16)
    existing = s.scalar(select(Submission).where(Submission.team_id == team.id, Submission.round_id == r.id,
                                                 Submission.idempotency_key == key))
    if existing is not None:
        return existing
    sub = Submission(opaque_id=secrets.token_hex(8), round_id=r.id, team_id=team.id, kind="predictions",
                     state="accepted", metrics={}, upload_sha256=hashlib.sha256(body).hexdigest(),
                     predictions={k: float(v) for k, v in scores.items()}, idempotency_key=key)
    s.add(sub)
    s.flush()
    audit(s, actor, "submission.predictions", team.id, submission=sub.opaque_id, round=r.name)
    return sub


def submission_view(sub: Submission, phase: str) -> dict[str, Any]:
    """What the owning team sees of its submission: gate results and aggregate numbers."""
    out = {"id": sub.opaque_id, "kind": sub.kind, "state": sub.state, "gate": sub.gate,
           "message": sub.gate_message, "architecture": sub.architecture,
           "metrics": {k: round(v, 4) if isinstance(v, float) else v for k, v in sub.metrics.items()},
           "created_at": sub.created_at.isoformat() + "Z", "spec_commitment": sub.spec_commitment}
    if phase == "revealed" and sub.spec_revealed is not None:
        out["spec"] = sub.spec_revealed
        out["spec_salt"] = sub.spec_salt.hex() if sub.spec_salt else None
    return out


# -- boards ---------------------------------------------------------------------------------------------
def board_inputs(s: Session, r: Round) -> tuple[list[Any], dict, dict, set[str], dict[str, float]]:
    """(entries, detector scores, removal results, defenses giving probabilities, runtimes) of a round."""
    from .db import Result
    from .scoring import Entry

    teams = {t.id: t.name for t in s.scalars(select(Team))}
    subs = {x.id: x for x in s.scalars(select(Submission).where(Submission.round_id == r.id))}
    entries = [Entry(pm.opaque_id, pm.is_trojan, teams[subs[pm.submission_id].team_id] if pm.submission_id else None,
                     pm.clean_accuracy, pm.attack_success_rate)
               for pm in s.scalars(select(PoolModel).where(PoolModel.round_id == r.id, PoolModel.in_pool))]
    by_id = {pm.id: pm.opaque_id for pm in s.scalars(select(PoolModel).where(PoolModel.round_id == r.id))}
    detectors: dict[str, dict[str, float | None]] = {}
    removal: dict[str, dict[str, tuple[float | None, float | None]]] = {}
    runtimes: dict[str, float] = {}
    for res in s.scalars(select(Result).where(Result.round_id == r.id)):
        kind, name = res.defense.split(":", 1)
        pid = by_id[res.pool_model_id]
        runtimes[name] = runtimes.get(name, 0.0) + res.runtime_s
        if kind == "detector":
            detectors.setdefault(name, {})[pid] = res.score
        else:
            removal.setdefault(name, {})[pid] = (res.clean_accuracy_after, res.asr_after)
    defenses = dict(detectors)
    probabilities = set()
    latest: dict[int, Submission] = {}
    for sub in sorted(subs.values(), key=lambda x: x.id):
        if sub.kind == "predictions":
            latest[sub.team_id] = sub  # a team's last predictions count
    for team_id, sub in latest.items():
        name = f"team:{teams[team_id]}"
        defenses[name] = dict(sub.predictions or {})
        probabilities.add(name)
    return entries, defenses, removal, probabilities, runtimes


def boards(s: Session, r: Round) -> dict[str, Any]:
    """The round's boards: empty before scoring; rounded to 0.01 in scoring; full after reveal."""
    from .scoring import attacker_board, defender_board, rounded

    if PHASES.index(r.phase) < PHASES.index("scoring"):
        return {"round": r.name, "phase": r.phase, "final": False, "attackers": [], "defenders": [],
                "note": "boards open in the scoring phase"}
    cfg = round_config(r)
    entries, defenses, removal, probabilities, runtimes = board_inputs(s, r)
    detector_scores = {k: v for k, v in defenses.items() if not k.startswith("team:")}
    attackers = attacker_board(entries, detector_scores, removal, cfg.defense.removal_max_accuracy_drop)
    defenders = defender_board(entries, defenses, probabilities, runtimes, seed=cfg.pool.seed)
    final = r.phase == "revealed"
    out = {"round": r.name, "phase": r.phase, "final": final, "attackers": attackers, "defenders": defenders,
           "detectors": sorted(detector_scores), "mitigations": sorted(removal),
           "pool": {"trojans": sum(e.is_trojan for e in entries), "clean": sum(not e.is_trojan for e in entries)}}
    if not final:  # during the round: rounded, and no per-attacker detail for defenders
        for row in out["defenders"]:
            row.pop("per_attacker", None)
        return rounded(out, 2)
    return rounded(out, 4)


def init_admin(game: Game, username: str, password: str, ttl_s: float = 30 * 86400) -> str:
    """Create the admin user (unless it exists; then check the password) and return a fresh admin token."""
    with game.sessions.begin() as s:
        user = s.scalar(select(User).where(User.username == username))
        if user is None:
            user = create_user(s, username, password, None, is_admin=True, actor="init")
        elif not user.is_admin or not crypto.verify_password(user.password_hash, password):
            raise unauthorized(f"user {username!r} exists and is not this admin")
        return issue_token(s, ["admin"], user_id=user.id, ttl_s=ttl_s, actor="init")
