"""The two attack registries, in a module of their own so that every attack module can name both
(a poisoning spec names the model-level attack it came from) without importing each other."""

from __future__ import annotations

from typing import Any

from ..registry import Registry

ATTACKS: Registry[Any] = Registry("attack")  # data poisoning: classes with build/from_spec (poisoning.py)
MODEL_ATTACKS: Registry[Any] = Registry("model attack")  # model-level attacks (model_attack.py)
