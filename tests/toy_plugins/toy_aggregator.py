"""A toy aggregator: the coordinate-wise median of the updates. One file, one registration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from backdoor_arena.federated.aggregators import AGGREGATORS, AggregationResult, Aggregator, check_stack


@AGGREGATORS.register("toy-median")
@dataclass(frozen=True)
class ToyMedian(Aggregator):
    """Toy rule: coordinate-wise median (lower median for an even count)."""

    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"nope": 1}, "nope"),)
    param_help: ClassVar[dict[str, str]] = {}

    def aggregate(self, updates, weights, generator, state):
        check_stack(updates, weights)
        return AggregationResult(updates.median(dim=0).values)

    def reference(self, updates, weights, generator, state=None):
        n = updates.shape[0]
        out = torch.stack([updates[:, j].sort().values[(n - 1) // 2] for j in range(updates.shape[1])])
        return AggregationResult(out)
