"""Spectral Signatures (Tran, Li and Madry, NeurIPS 2018): poisoned samples leave a trace in the top
singular direction of a class's (centred) learned representations.

Per class: R = penultimate-layer representations, centred; v = top right singular vector of R;
score_i = (R_i . v)^2. The samples with the highest scores, 1.5 x epsilon of the class (epsilon: an
upper bound on the poisoned fraction), are removed; the model is retrained on the rest.

The representation is the input of the model's last Linear layer (`nn_tools.penultimate_features`).

projection="uncentred" is the variant of the authors' released code (and of IBM ART): v still comes from
the centred representations, but the scores project the uncentred ones, score_i = (R_i . v)^2, so that
a class whose poisons shift the mean along v is scored by distance from the origin rather than from the
(poison-shifted) mean.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..nn_tools import model_copy, penultimate_features
from . import DATA_FILTERS
from .activation_clustering import principal_axes, varying_columns
from .base import check_clean_set

PROJECTIONS = ("centred", "uncentred")


# --------------------------------------------------------------------------- pure function
def spectral_scores(reps: torch.Tensor, centred: bool = True) -> torch.Tensor:
    """(R_i - mean) . v squared (centred) or R_i . v squared (uncentred), v the top right singular vector
    of the centred representations."""
    if len(reps) < 2:
        return torch.zeros(len(reps), dtype=torch.float64)
    # constant columns (units that never fire) centre to zero: v is zero there and they add nothing
    r = varying_columns(reps).double()
    centred_reps = r - r.mean(0, keepdim=True)
    v = principal_axes(centred_reps, 1)[0][:, 0]  # the top right singular vector (its sign does not matter)
    return ((centred_reps if centred else r) @ v) ** 2


# --------------------------------------------------------------------------- the filter
@DATA_FILTERS.register("spectral")
class SpectralSignatures:
    """Data filter. score(model, dataset): per-sample suspicion (the spectral score divided by its class's
    mean score, so that classes are comparable); flag(): the top `removal_factor * epsilon` of each class."""

    example_params: ClassVar[dict[str, Any]] = {}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"epsilon": 2.0}, "epsilon"), ({"removal_factor": 0}, "removal_factor"), ({"batch_size": 0}, "batch_size"),
        ({"projection": "raw"}, "projection"))
    param_help: ClassVar[dict[str, str]] = {
        "epsilon": "Upper bound of the poisoned fraction of each class, in (0, 1).",
        "removal_factor": "Remove removal_factor x epsilon of each class (the paper: 1.5).",
        "batch_size": "Images per forward pass when computing representations.",
        "projection": "centred (the paper's algorithm) or uncentred (the authors' released code, and IBM ART).",
    }

    def __init__(self, epsilon: float = 0.1, removal_factor: float = 1.5, batch_size: int = 128,
                 projection: str = "centred") -> None:
        if not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise ConfigError(f"spectral: epsilon (upper bound of the poisoned fraction) must be in (0, 1), got {epsilon!r}")
        if not isinstance(removal_factor, (int, float)) or not removal_factor > 0:
            raise ConfigError(f"spectral: removal_factor must be positive, got {removal_factor!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"spectral: batch_size must be a positive integer, got {batch_size!r}")
        if projection not in PROJECTIONS:
            raise ConfigError(f"spectral: projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        self.epsilon, self.removal_factor, self.batch_size = float(epsilon), float(removal_factor), batch_size
        self.projection = projection

    def score(self, model: nn.Module, dataset: Dataset) -> torch.Tensor:
        net = model_copy(model)
        check_clean_set(net, dataset.images[:1], "spectral")
        reps = penultimate_features(net, dataset.images, self.batch_size, optimise=True)
        scores = torch.zeros(len(dataset), dtype=torch.float64)
        # each class's samples in one contiguous block, in their original order (one gather, no mask per class)
        order = torch.argsort(dataset.labels, stable=True)
        counts = torch.unique_consecutive(dataset.labels[order], return_counts=True)[1]
        for idx in torch.split(order, counts.tolist()):
            s = spectral_scores(reps[idx], centred=self.projection == "centred")
            scores[idx] = s / s.mean().clamp_min(1e-12)
        return scores

    def flag(self, model: nn.Module, dataset: Dataset, scores: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean [N]: the samples to remove (per class, the highest 1.5 x epsilon fraction)."""
        scores = self.score(model, dataset) if scores is None else scores
        flagged = torch.zeros(len(dataset), dtype=torch.bool)
        for c in dataset.labels.unique().tolist():
            idx = torch.nonzero(dataset.labels == c).flatten()
            n = min(len(idx), int(round(self.removal_factor * self.epsilon * len(idx))))
            if n:
                flagged[idx[torch.argsort(scores[idx], descending=True, stable=True)[:n]]] = True
        return flagged

    def params(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "removal_factor": self.removal_factor, "batch_size": self.batch_size,
                "projection": self.projection}
