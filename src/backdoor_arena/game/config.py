"""A round's configuration: a TOML file validated with pydantic into `RoundConfig`.

Defenses are named by their registered names (any model detector or mitigation in `registries`), with their
parameters; each is built once here, so a bad name or parameter is a ConfigError before the round exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ArenaError, ConfigError
from ..safeio import read_text

NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MAX_CONFIG_BYTES = 64 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Gates(_Strict):
    max_upload_bytes: int = Field(4 << 20, ge=1024, le=1 << 30)  # the streamed body cap
    max_header_bytes: int = Field(64 * 1024, ge=256, le=16 << 20)
    max_spec_bytes: int = Field(1 << 20, ge=256, le=16 << 20)
    max_accuracy_drop: float = Field(0.05, ge=0, le=1)  # below the mean of the round's clean models
    min_asr: float = Field(0.9, ge=0, le=1)  # on held-out inputs outside the target class
    eval_samples: int = Field(1000, ge=10, le=100_000)  # held-out test inputs for both gates


class Pool(_Strict):
    clean_models: int = Field(4, ge=2, le=1000)  # fresh clean models: the reference and the negatives
    clean_train_samples: int = Field(5000, ge=100, le=10_000_000)
    clean_epochs: int = Field(1, ge=1, le=100)
    seed: int = Field(0, ge=0, lt=2**31)


class Defense(_Strict):
    detectors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    mitigations: dict[str, dict[str, Any]] = Field(default_factory=dict)
    clean_samples: int = Field(200, ge=10, le=100_000)  # the defenders' clean set (train split, never tested on)
    time_budget_s: float = Field(120.0, gt=0, le=86_400)  # per pool model and defense
    removal_max_accuracy_drop: float = Field(0.05, ge=0, le=1)  # a removal beyond it: the model survived

    @model_validator(mode="after")
    def _registered(self) -> Defense:
        from ..registries import MITIGATIONS, MODEL_DETECTORS

        if not self.detectors and not self.mitigations:
            raise ValueError("name at least one detector or mitigation, e.g. [defense.detectors.neural-cleanse]")
        for kind, registry, chosen in (("detectors", MODEL_DETECTORS, self.detectors),
                                       ("mitigations", MITIGATIONS, self.mitigations)):
            for name, params in chosen.items():
                if name not in registry:
                    raise ValueError(f"{kind}: unknown {name!r}; registered: {', '.join(registry.names())}")
                try:
                    registry.create(name, **params)
                except ArenaError as exc:
                    raise ValueError(f"{kind}.{name}: {exc}") from None
                except TypeError as exc:
                    raise ValueError(f"{kind}.{name}: {exc}") from None
        return self


class Limits(_Strict):
    daily_quota: int = Field(5, ge=1, le=100_000)  # attack uploads per team per 24 h
    lease_s: float = Field(300.0, gt=0, le=86_400)  # a job's lease; renewed while the worker is alive
    max_attempts: int = Field(3, ge=1, le=100)


class RoundConfig(_Strict):
    name: str
    dataset: str = "mnist"
    architectures: list[str] = Field(default_factory=lambda: ["badnet-mnist"], min_length=1, max_length=16)
    gates: Gates = Field(default_factory=Gates)
    pool: Pool = Field(default_factory=Pool)
    defense: Defense
    limits: Limits = Field(default_factory=Limits)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError("must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit")
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        from ..registries import DATASETS

        if v not in DATASETS:
            raise ValueError(f"unknown dataset {v!r}; registered: {', '.join(DATASETS.names())}")
        return v

    @field_validator("architectures")
    @classmethod
    def _architectures(cls, v: list[str]) -> list[str]:
        from ..registries import MODELS

        unknown = [a for a in v if a not in MODELS]
        if unknown:
            raise ValueError(f"unknown {', '.join(map(repr, unknown))}; registered: {', '.join(MODELS.names())}")
        return v


def _message(exc: ValidationError, source: str) -> str:
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return f"round config {source}: " + "; ".join(parts)


def parse_round_config(data: dict[str, Any], source: str = "") -> RoundConfig:
    try:
        return RoundConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_message(exc, source or "(inline)")) from None


def loads_round_config(text: str, source: str = "(inline)") -> RoundConfig:
    import tomllib

    if len(text.encode()) > MAX_CONFIG_BYTES:
        raise ConfigError(f"round config {source}: more than {MAX_CONFIG_BYTES} bytes; is it the right file?")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"round config {source}: not valid TOML ({exc})") from None
    return parse_round_config(data, source)


def load_round_config(path: str | Path) -> RoundConfig:
    return loads_round_config(read_text(path, "round config", ConfigError, MAX_CONFIG_BYTES), repr(str(path)))
