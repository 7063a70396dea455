"""Adversary models: which sampled clients act maliciously in a round (registry ADVERSARIES).

Two calls, both pure given their inputs:
- `setup(num_clients, excluded, generator) -> frozenset[int]`: the malicious pool drawn once per run
  (empty for models that corrupt whichever clients are sampled);
- `malicious(round_, sampled, excluded, pool, attack_round) -> list[int]`: the positions among `sampled`
  that act maliciously this round (never one in `excluded`: the target clients, whose held-out data
  measures the backdoor); `attack_round` counts rounds from the first attack round (< 0: warm-up).

- `fixed-frequency`: every `frequency` rounds, `attackers` of the sampled clients are replaced by
  attackers (epsilon = attackers / (frequency * clients_per_round) in the paper's terms).
- `random-sampling`: a fraction of all clients is malicious from the start; a round holds as many as are
  sampled, a hypergeometric count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import ConfigError
from ..registry import Registry


class AdversaryModel:
    """Base of the registered adversary models (frozen dataclasses: the constructor validates)."""

    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = ()
    param_help: ClassVar[dict[str, str]] = {}

    def setup(self, num_clients: int, excluded: Sequence[int], generator: torch.Generator) -> frozenset[int]:
        """The malicious pool of the run; none by default (the sampled clients are corrupted per round)."""
        return frozenset()

    def malicious(self, round_: int, sampled: Sequence[int], excluded: Sequence[int], pool: frozenset[int],
                  attack_round: int) -> list[int]:
        raise NotImplementedError(f"{type(self).__name__} must implement malicious()")


ADVERSARIES: Registry[type[AdversaryModel]] = Registry("adversary model")


@ADVERSARIES.register("fixed-frequency")
@dataclass(frozen=True)
class FixedFrequency(AdversaryModel):
    """`attackers` of the sampled clients are replaced by attackers in rounds start, start+f, start+2f, ..."""

    frequency: int = 1
    attackers: int = 1

    example_params: ClassVar[dict[str, Any]] = {"frequency": 2, "attackers": 2}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"frequency": 0}, "frequency"), ({"attackers": 1.5}, "attackers"))
    param_help: ClassVar[dict[str, str]] = {
        "frequency": "Attack every `frequency` rounds from the first attack round on.",
        "attackers": "How many of the sampled clients are replaced by attackers in an attacked round.",
    }

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.frequency, int) or isinstance(self.frequency, bool) or self.frequency < 1:
            problems.append(f"frequency must be a positive integer (attack every f rounds), got {self.frequency!r}")
        if not isinstance(self.attackers, int) or isinstance(self.attackers, bool) or self.attackers < 1:
            problems.append(f"attackers must be a positive integer, got {self.attackers!r}")
        if problems:
            raise ConfigError("adversary 'fixed-frequency': " + "; ".join(problems))

    def malicious(self, round_, sampled, excluded, pool, attack_round):
        if attack_round < 0 or attack_round % self.frequency:
            return []
        skip = set(excluded)
        return [k for k in sampled if k not in skip][: self.attackers]


@ADVERSARIES.register("random-sampling")
@dataclass(frozen=True)
class RandomSampling(AdversaryModel):
    """A fraction of all clients is malicious; a round's count is hypergeometric."""

    fraction: float = 0.033

    example_params: ClassVar[dict[str, Any]] = {"fraction": 0.25}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"fraction": 1.5}, "fraction"), ({"fraction": "all"}, "fraction"))
    param_help: ClassVar[dict[str, str]] = {
        "fraction": "Fraction of all clients (target clients excepted) that is malicious for the whole run."}

    def __post_init__(self) -> None:
        ok = isinstance(self.fraction, (int, float)) and not isinstance(self.fraction, bool)
        if not (ok and 0 <= self.fraction <= 1):
            raise ConfigError(f"adversary 'random-sampling': fraction must be in [0, 1], got {self.fraction!r}")

    def count(self, num_clients: int) -> int:
        return round(self.fraction * num_clients)

    def setup(self, num_clients, excluded, generator):
        skip = set(excluded)
        candidates = [k for k in range(num_clients) if k not in skip]
        n = min(self.count(num_clients), len(candidates))
        return frozenset(candidates[i] for i in torch.randperm(len(candidates), generator=generator)[:n].tolist())

    def malicious(self, round_, sampled, excluded, pool, attack_round):
        if attack_round < 0:
            return []
        skip = set(excluded)
        return [k for k in sampled if k in pool and k not in skip]
