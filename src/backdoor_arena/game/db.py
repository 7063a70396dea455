"""The game's database: SQLAlchemy 2 models, engine setup (SQLite by default, PostgreSQL by URL) and the
Alembic migrations run programmatically on start (`open_database`).

Tables: teams, users (argon2 hashes), api_tokens (sha256 of the token, scopes, expiry), rounds (phase and
the validated TOML config), submissions (attack uploads and defender predictions, the spec sealed to the
evaluator), pool_models (canonicalised files under opaque ids), jobs (the work queue: lease, attempts,
idempotency key), results (one row per pool model and defense) and audit_events (append-only).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

PHASES = ("draft", "attack_open", "frozen", "defense", "scoring", "revealed")
# The allowed moves of the round state machine (one step forward only).
NEXT_PHASE = {a: b for a, b in zip(PHASES, PHASES[1:], strict=False)}
SCOPES = ("attack:submit", "defense:submit", "results:read", "admin")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # naive UTC: the same on SQLite and PostgreSQL


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # attacker | defender
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, for the audit log
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id"), nullable=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    scopes: Mapped[str] = mapped_column(String(255))  # space-separated
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Round(Base):
    __tablename__ = "rounds"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    phase: Mapped[str] = mapped_column(String(16), default="draft")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    config_toml: Mapped[str] = mapped_column(Text)
    reference_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    phase_changed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("team_id", "round_id", "idempotency_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    opaque_id: Mapped[str] = mapped_column(String(32), unique=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    team_id: Mapped[int] = mapped_column(ForeignKey("teams.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # attack | predictions
    architecture: Mapped[str | None] = mapped_column(String(64), nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | accepted | rejected
    gate: Mapped[str | None] = mapped_column(String(32), nullable=True)  # the gate that rejected it
    gate_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # aggregate numbers only
    upload_sha256: Mapped[str] = mapped_column(String(64))
    spec_sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    spec_salt: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    spec_commitment: Mapped[str | None] = mapped_column(String(80), nullable=True)
    spec_revealed: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    predictions: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class PoolModel(Base):
    __tablename__ = "pool_models"
    id: Mapped[int] = mapped_column(primary_key=True)
    opaque_id: Mapped[str] = mapped_column(String(32), unique=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    submission_id: Mapped[int | None] = mapped_column(ForeignKey("submissions.id"), nullable=True, unique=True)
    is_trojan: Mapped[bool] = mapped_column(Boolean)
    clean_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    clean_accuracy: Mapped[float] = mapped_column(Float)
    attack_success_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    in_pool: Mapped[bool] = mapped_column(Boolean, default=False)  # published to defenders (from the defense phase)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    __table_args__ = (UniqueConstraint("round_id", "clean_index"),)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # train_clean | gate | evaluate | reveal
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    idempotency_key: Mapped[str] = mapped_column(String(120), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)  # queued|running|done|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    run_after: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("pool_model_id", "defense"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id"), index=True)
    pool_model_id: Mapped[int] = mapped_column(ForeignKey("pool_models.id"))
    defense: Mapped[str] = mapped_column(String(64))  # detector:NAME | mitigation:NAME
    score: Mapped[float | None] = mapped_column(Float, nullable=True)  # detectors: suspicion, higher = trojan
    clean_accuracy_after: Mapped[float | None] = mapped_column(Float, nullable=True)  # mitigations
    asr_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    runtime_s: Mapped[float] = mapped_column(Float)
    timed_out: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    ts: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    team_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    actor: Mapped[str] = mapped_column(String(80))  # token prefix, user name, or "worker:ID"
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(64), nullable=True)


def default_url(data_dir: str | Path) -> str:
    return f"sqlite:///{Path(data_dir).resolve() / 'game.db'}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(conn: Any, _record: Any) -> None:
            # WAL: readers never block the writer; busy_timeout: writers queue instead of failing
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # Take the write lock at BEGIN: a read-then-write transaction can then never fail with
            # SQLITE_BUSY_SNAPSHOT halfway; concurrent writers wait on busy_timeout instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(conn: Any, _record: Any) -> None:
            conn.isolation_level = None  # let the "begin" listener issue BEGIN itself

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; safe for concurrent starters on PostgreSQL
    thanks to Alembic's transactional DDL)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "alembic"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def open_database(url: str) -> tuple[Engine, sessionmaker]:
    engine = make_engine(url)
    migrate(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)
