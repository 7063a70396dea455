"""The pruning-aware attack (Liu, Dolan-Gavitt and Garg, "Fine-Pruning", RAID 2018, Section 4).

A model-level attack: the attacker controls training (outsourced training), not just some data.
  1. train a clean model (or start from one: `clean_model`);
  2. prune it as the defender would: the last conv layer's channels in increasing order of mean
     activation on clean data, until clean accuracy would drop by more than `max_accuracy_drop`;
  3. train the pruned model on the poisoned training set, the pruned channels held at zero, so the
     backdoor has to live in the channels that clean inputs activate;
  4. restore the pruned channels with their clean weights, and lower their biases (the BN shift when
     a BatchNorm follows) so that they stay dormant (exactly zero after the ReLU) on every clean
     sample the attacker has. They look like ordinary, rarely used channels.
A defender pruning by activation then removes the restored decoys first, which changes nothing, and
reaches the backdoor channels only at a large cost in clean accuracy.

The data poisoning inside is any registered poisoning attack (BadNets by default); its spec, plus a
`model_attack` entry describing these steps, is the attack spec, so evaluation works as for BadNets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset, to_float
from ..errors import ConfigError
from ..train import TrainConfig, TrainHistory, create_model, fit
from .poisoning import PoisoningAttack

NAME = "pruning-aware"


@dataclass(frozen=True)
class PruningAwareAttack:
    """`poisoning` supplies the trigger and labels; the rest are the attacker's pruning settings.

    `retrain` is the config of step 3 (None: the same as the clean training's); `clean_samples` is how
    many training samples the attacker uses to rank channels and set the dormant biases; `margin` is
    how far below zero the restored channels' largest clean pre-activation is put."""

    poisoning: PoisoningAttack
    max_accuracy_drop: float = 0.04
    retrain: TrainConfig | None = None
    clean_samples: int = 10000
    margin: float = 0.1

    def __post_init__(self) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise ConfigError(f"max_accuracy_drop must be a fraction in [0, 1], got {self.max_accuracy_drop!r}")
        if not isinstance(self.clean_samples, int) or self.clean_samples < 1:
            raise ConfigError(f"clean_samples must be a positive integer, got {self.clean_samples!r}")
        if not self.margin >= 0:
            raise ConfigError(f"margin must be >= 0, got {self.margin!r}")

    def to_spec(self) -> dict[str, Any]:
        """The poisoning spec plus this attack's settings (the evaluator needs only the trigger part)."""
        return {**self.poisoning.to_spec(), "model_attack": {
            "name": NAME, "max_accuracy_drop": self.max_accuracy_drop, "clean_samples": self.clean_samples,
            "margin": self.margin, "retrain": self.retrain.to_dict() if self.retrain else None}}

    def train(self, architecture: str, train_set: Dataset, config: TrainConfig, *, clean_model: nn.Module | None = None,
              evaluate: Any = None, generator: torch.Generator | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Steps 1-4. Returns the backdoored model and a record of what was done (for the attack spec)."""
        from ..defenses.base import model_copy
        from ..defenses.pruning import freeze_channels, prune_by_activation, prune_site

        generator = generator or torch.Generator().manual_seed(self.poisoning.seed)
        started = time.perf_counter()
        if clean_model is None:
            clean_model, _ = create_model(architecture, train_set.info, config.seed)
            fit(clean_model, train_set, config, description=f"{NAME}: clean")
        else:
            clean_model = model_copy(clean_model)
        pick = torch.randperm(len(train_set), generator=generator)[: self.clean_samples]
        attacker_clean = train_set.subset(pick.sort().values)
        pruned = prune_by_activation(clean_model, attacker_clean, max_accuracy_drop=self.max_accuracy_drop,
                                     full_curve=False)
        model = pruned.model
        site = prune_site(model)
        poisoned = self.poisoning.poison(train_set, generator)
        handles = freeze_channels(site, pruned.pruned)
        try:
            history = fit(model, poisoned.dataset, self.retrain or config, evaluate=evaluate,
                          description=f"{NAME}: backdoor")
        finally:
            for h in handles:
                h.remove()
        restore_dormant(model, clean_model, pruned.pruned, attacker_clean.images, self.margin)
        zero_check = _max_activation(model, pruned.pruned, attacker_clean.images)
        record = {"pruned_channels": pruned.pruned, "channels": site.channels,
                  "fraction_pruned": len(pruned.pruned) / site.channels,
                  "restored_max_clean_activation": zero_check, "history": history.epochs,
                  "wall_time_s": time.perf_counter() - started}
        return model.eval(), record

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> Any:
        """A `train_fn(model, monitor) -> (TrainHistory, spec_extra)` for `api._train_and_save`: trains in
        place into `model` (freshly initialised there), so the attack is saved like any trained model."""

        def train_fn(model: nn.Module, monitor: Any) -> tuple[TrainHistory, dict[str, Any]]:
            trained, record = self.train(architecture, train_set, config, clean_model=clean_model, evaluate=monitor)
            model.load_state_dict(trained.state_dict())
            model.eval()
            history = TrainHistory(epochs=record.pop("history"), wall_time_s=record["wall_time_s"])
            spec = self.to_spec()["model_attack"]
            return history, {"model_attack": {**spec, **record}}

        return train_fn


def _pre_activation(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Max over images and positions of each channel's input to the ReLU after the last conv: [C]."""
    from ..defenses.base import capture_activations
    from ..defenses.pruning import prune_site

    site = prune_site(model)
    layer = site.bn if site.bn is not None else site.conv
    best = torch.full((site.channels,), -torch.inf)
    with capture_activations(model, layer) as outputs, torch.no_grad():
        for i in range(0, len(images), batch_size):
            model(to_float(images[i : i + batch_size]))
            best = torch.maximum(best, outputs.pop().amax(dim=(0, 2, 3)))
    return best


def _max_activation(model: nn.Module, channels: list[int], images: torch.Tensor) -> float:
    if not channels:
        return 0.0
    return float(torch.relu(_pre_activation(model, images)[channels]).max())


def restore_dormant(model: nn.Module, clean_model: nn.Module, channels: list[int], images: torch.Tensor,
                    margin: float) -> None:
    """Step 4, in place on `model`: give `channels` their weights from `clean_model`, then shift their
    bias (BN: beta) so that the largest pre-activation over `images` is -margin: dormant on clean data."""
    from ..defenses.pruning import prune_site

    if not channels:
        return
    idx = torch.as_tensor(channels, dtype=torch.long)
    site, clean_site = prune_site(model), prune_site(clean_model)
    with torch.no_grad():
        for p, q in zip(site.parameters(), clean_site.parameters(), strict=True):
            p[idx] = q[idx]
        if site.bn is not None:  # the running statistics saw a zero channel while it was pruned
            site.bn.running_mean[idx] = clean_site.bn.running_mean[idx]
            site.bn.running_var[idx] = clean_site.bn.running_var[idx]
        shift_param = site.bn.bias if site.bn is not None else site.conv.bias
        if shift_param is None:
            raise ConfigError(f"layer {site.conv_name!r} has no bias to make restored channels dormant")
        peak = _pre_activation(model, images)[idx]
        shift_param[idx] -= peak + margin
