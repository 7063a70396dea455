"""Attacks. Data poisoners share one contract: `poison(dataset, generator) -> Poisoned`,
`apply_trigger(x)`, and a JSON attack spec that the evaluator sees and defenders never do."""

from .poisoning import ATTACKS, Poisoned, PoisoningAttack, attack_from_spec, load_attack_spec, make_attack

__all__ = ["ATTACKS", "Poisoned", "PoisoningAttack", "attack_from_spec", "load_attack_spec", "make_attack"]
