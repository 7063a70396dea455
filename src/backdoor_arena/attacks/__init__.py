"""Attacks, two kinds (poisoning.py, model_attack.py):

  data poisoning   poison(dataset, generator) -> Poisoned, apply_trigger(x), to_spec()     ATTACKS
  model-level      trainer(architecture, train_set, config, clean_model) -> train_fn      MODEL_ATTACKS

Every attack writes a JSON attack spec that the evaluator sees and defenders never do;
`attack_from_spec` / `load_attack_spec` rebuild the poisoning from it through the registry, validating it
with the pydantic schemas each class declares (`spec_schema`; schemas.py): one error line per bad spec.
"""

from . import stealthy  # noqa: F401 - registers wanet, sig, label-consistent, invisible, trojannn
from .adaptive import NCEvasiveAttack, STRIPEvasiveAttack, TDCEvasiveAttack
from .model_attack import ModelAttack, TrainFn
from .poisoning import (
    ATTACKS,
    DATASET_PARAMS,
    SPEC_VERSION,
    BadNets,
    Blended,
    Poisoned,
    PoisoningAttack,
    attack_from_spec,
    load_attack_spec,
    make_attack,
)
from .pruning_aware import PruningAwareAttack
from .registries import MODEL_ATTACKS

__all__ = [
    "NCEvasiveAttack", "STRIPEvasiveAttack", "TDCEvasiveAttack",
    "ATTACKS", "DATASET_PARAMS", "MODEL_ATTACKS", "SPEC_VERSION", "BadNets", "Blended", "ModelAttack", "Poisoned",
    "PoisoningAttack", "PruningAwareAttack", "TrainFn", "attack_from_spec", "load_attack_spec", "make_attack",
]
