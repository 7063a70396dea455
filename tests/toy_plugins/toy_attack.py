"""A toy data-poisoning attack: BadNets' label maps with a white 3x3 square in the top-left corner by default.
One file, one registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from backdoor_arena.attacks import ATTACKS, PoisoningAttack


@ATTACKS.register("toy-corner")
@dataclass(frozen=True)
class ToyCorner(PoisoningAttack):
    """Toy attack: a white 3x3 square in the top-left corner."""

    name: ClassVar[str] = "toy-corner"
    default_trigger: ClassVar[str] = "square"
    threat_model: ClassVar[str] = "Data poisoning: controls a fraction of the training set (images and labels)."
    param_help: ClassVar[dict[str, str]] = {**PoisoningAttack.param_help, "trigger": "The trigger kind (square)."}

    @classmethod
    def make_trigger(cls, trigger: str, options: dict[str, Any], channels: int, image_size: int):
        return super().make_trigger(trigger, {"size": 3, "position": "top-left", "margin": 1, **options}, channels,
                                    image_size)
