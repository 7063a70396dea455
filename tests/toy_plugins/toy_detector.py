"""A toy model detector: how far the most favoured label's mean logit stands above the others on clean data
(a backdoor target class often gets a lift). One file, one registration."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from backdoor_arena.data.dataset import Dataset, to_float
from backdoor_arena.defenses import MODEL_DETECTORS, ModelVerdict
from backdoor_arena.defenses.base import check_clean_set
from backdoor_arena.errors import ConfigError
from backdoor_arena.nn_tools import model_copy


@MODEL_DETECTORS.register("toy-logit-gap")
class LogitGap:
    """Toy detector: z-score of the largest per-label mean logit on clean data."""

    example_params: ClassVar[dict[str, Any]] = {"n_samples": 32}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (({"n_samples": 0}, "n_samples"),)
    param_help: ClassVar[dict[str, str]] = {"n_samples": "Clean images used.", "threshold": "Flag above this z."}

    def __init__(self, n_samples: int = 256, threshold: float = 3.0) -> None:
        if not isinstance(n_samples, int) or n_samples < 1:
            raise ConfigError(f"toy-logit-gap: n_samples must be a positive integer, got {n_samples!r}")
        self.n_samples, self.threshold = n_samples, float(threshold)

    def inspect(self, model: torch.nn.Module, clean: Dataset) -> ModelVerdict:
        x = check_clean_set(model, clean, "toy-logit-gap")[: self.n_samples]
        net = model_copy(model)
        with torch.no_grad():
            means = net(to_float(x)).mean(0)
        z = (means - means.mean()) / means.std().clamp_min(1e-6)
        label = int(z.argmax())
        score = float(z.max())
        return ModelVerdict(score, score > self.threshold, self.threshold, label if score > self.threshold else None,
                            {"mean_logits": means.tolist()})
