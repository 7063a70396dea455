"""Model-level attacks: their registry and their contract.

(Data-poisoning attacks: `ATTACKS` in poisoning.py.) `MODEL_ATTACKS` holds model-level attacks: the attacker controls more than some training data (the
training itself, a trained model, an exported artefact). A model attack class is constructed as
`cls(poisoning, **params)`, `poisoning` being the data-poisoning attack that supplies its trigger, target
and label map (the evaluator measures the backdoor through it), and provides the `ModelAttack` methods
and a `spec_schema` for its spec entry.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from torch import nn

from ..data.dataset import Dataset
from ..schemas import Strict
from ..train import TrainConfig, TrainHistory
from .poisoning import PoisoningAttack


class TrainFn(Protocol):
    """Trains in place into a freshly initialised `model`; `monitor(model) -> metrics` is the evaluator's
    view after each epoch. Returns the history and the entries to add to the attack spec."""

    def __call__(self, model: nn.Module, monitor: Any) -> tuple[TrainHistory, dict[str, Any]]: ...


class ModelAttack(Protocol):
    """A model-level attack (registered in `MODEL_ATTACKS`)."""

    name: ClassVar[str]
    threat_model: ClassVar[str]  # what the attacker controls and knows (the attack catalogue's column)
    # The pydantic schema (schemas.py) of its "model_attack" spec entry; every spec load validates the entry
    # with it (attack_from_spec), so a spec written by `backdoor-arena attack` must pass it.
    spec_schema: ClassVar[type[Strict]]
    poisoning: PoisoningAttack

    def to_spec(self) -> dict[str, Any]:
        """The poisoning's spec plus a "model_attack" entry describing this attack."""
        ...

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ModelAttack: ...

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> TrainFn:
        """The training procedure of the attacked model, for the verbs layer to run and save."""
        ...
