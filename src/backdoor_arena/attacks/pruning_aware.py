"""The pruning-aware attack (Liu, Dolan-Gavitt and Garg, "Fine-Pruning", RAID 2018, Section 4).

A model-level attack: the attacker controls training (outsourced training), not just some data.
  1. train a clean model (or start from one: `clean_model`);
  2. prune it as the defender would: the last conv layer's channels in increasing order of mean
     activation on clean data, until clean accuracy would drop by more than `prune_accuracy_drop`;
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
from typing import Any, ClassVar

import torch
from torch import nn

from ..data.dataset import Dataset
from ..errors import ArenaError, ConfigError
from ..nn_tools import (
    frozen_channels,
    max_channel_pre_activations,
    model_copy,
    prune_by_activation,
    prune_site,
)
from ..schemas import PruningAwareSpec, Strict, json_form, validate
from ..train import TrainConfig, TrainHistory, create_model, fit
from .model_attack import TrainFn
from .poisoning import PoisoningAttack, attack_from_spec
from .registries import MODEL_ATTACKS

NAME = "pruning-aware"


@MODEL_ATTACKS.register(NAME)
@dataclass(frozen=True)
class PruningAwareAttack:
    """`poisoning` supplies the trigger and labels; the rest are the attacker's pruning settings.

    `prune_accuracy_drop` is the attacker's pruning rule (the spec calls it max_accuracy_drop); `retrain`
    is the config of step 3 (None: the same as the clean training's); `clean_samples` is how many training
    samples the attacker uses to rank channels and set the dormant biases; `margin` is how far below zero
    the restored channels' largest clean pre-activation is put."""

    poisoning: PoisoningAttack
    prune_accuracy_drop: float = 0.04
    retrain: TrainConfig | None = None
    clean_samples: int = 10000
    margin: float = 0.1

    name: ClassVar[str] = NAME
    threat_model: ClassVar[str] = ("Controls training (outsourced training); knows the defender may prune the "
                                   "neurons that clean inputs leave dormant (pruning, fine-pruning).")
    spec_schema: ClassVar[type[Strict]] = PruningAwareSpec  # the spec's "model_attack" entry
    example_params: ClassVar[dict[str, Any]] = {"prune_accuracy_drop": 0.2, "clean_samples": 48}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"prune_accuracy_drop": 2}, "prune_accuracy_drop"), ({"clean_samples": 0}, "clean_samples"),
        ({"margin": -1.0}, "margin"), ({"margin": float("nan")}, "margin"), ({"retrain": {"epochs": 1}}, "retrain"),
        ({"clean_samples": True}, "clean_samples"))
    param_help: ClassVar[dict[str, str]] = {
        "poisoning": "The data-poisoning attack inside (its trigger, target and label map), e.g. badnets.",
        "prune_accuracy_drop": "The attacker prunes as the defender would, until clean accuracy would drop by "
                               "more than this fraction.",
        "retrain": "Training settings of the backdoor training (default: those of the clean training).",
        "clean_samples": "Training samples the attacker uses to rank channels and make restored ones dormant.",
        "margin": "How far below zero the restored channels' largest clean pre-activation is put.",
    }

    def __post_init__(self) -> None:
        if not isinstance(self.poisoning, PoisoningAttack):
            raise ConfigError(f"{NAME}: poisoning must be a data-poisoning attack (make_attack(...)), "
                              f"got {type(self.poisoning).__name__}")
        drop = self.prune_accuracy_drop
        if not isinstance(drop, (int, float)) or isinstance(drop, bool) or not 0 <= drop <= 1:
            raise ConfigError(f"prune_accuracy_drop must be a fraction in [0, 1], got {drop!r}")
        if self.retrain is not None and not isinstance(self.retrain, TrainConfig):
            raise ConfigError(f"retrain must be a TrainConfig or None, got {type(self.retrain).__name__}")
        if not isinstance(self.clean_samples, int) or isinstance(self.clean_samples, bool) or self.clean_samples < 1:
            raise ConfigError(f"clean_samples must be a positive integer, got {self.clean_samples!r}")
        if (not isinstance(self.margin, (int, float)) or isinstance(self.margin, bool)
                or not 0 <= self.margin < float("inf")):
            raise ConfigError(f"margin must be a finite number >= 0, got {self.margin!r}")

    def to_spec(self) -> dict[str, Any]:
        """The poisoning spec plus this attack's settings (the evaluator needs only the trigger part)."""
        return {**self.poisoning.to_spec(), "model_attack": {
            "name": NAME, "max_accuracy_drop": self.prune_accuracy_drop, "clean_samples": self.clean_samples,
            "margin": self.margin, "retrain": self.retrain.to_dict() if self.retrain else None}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PruningAwareAttack:
        """The attack an attack spec written by `to_spec` (or beside a model) describes; the spec and its
        `model_attack` entry are validated (schemas.PruningAwareSpec), one ConfigError naming the field."""
        entry = spec.get("model_attack") if isinstance(spec, dict) else None
        if not isinstance(entry, dict) or entry.get("name") != NAME:
            raise ConfigError(f"the attack spec has no {NAME!r} model_attack entry")
        poisoning = attack_from_spec(spec)
        s = validate(cls.spec_schema, json_form(entry), "attack spec: model_attack")
        try:
            retrain = None if s.retrain is None else TrainConfig(**s.retrain.model_dump())
            return cls(poisoning, s.max_accuracy_drop, retrain, s.clean_samples, s.margin)
        except ArenaError as exc:
            raise ConfigError(f"attack spec: model_attack: {exc}") from None

    def train(self, architecture: str, train_set: Dataset, config: TrainConfig, *, clean_model: nn.Module | None = None,
              evaluate: Any = None, generator: torch.Generator | None = None) -> tuple[nn.Module, dict[str, Any]]:
        """Steps 1-4. Returns the backdoored model and a record of what was done (for the attack spec).
        `clean_model` is copied, never changed."""
        generator = generator or torch.Generator().manual_seed(self.poisoning.seed)
        started = time.perf_counter()
        if clean_model is None:
            clean_model, _ = create_model(architecture, train_set.info, config.seed)
            fit(clean_model, train_set, config, description=f"{NAME}: clean")
        else:
            clean_model = model_copy(clean_model)
        pick = torch.randperm(len(train_set), generator=generator)[: self.clean_samples]
        attacker_clean = train_set.subset(pick.sort().values)
        pruned = prune_by_activation(clean_model, attacker_clean, max_accuracy_drop=self.prune_accuracy_drop,
                                     full_curve=False)
        model = pruned.model
        site = prune_site(model)
        poisoned = self.poisoning.poison(train_set, generator)
        with frozen_channels(site, pruned.pruned):
            history = fit(model, poisoned.dataset, self.retrain or config, evaluate=evaluate,
                          description=f"{NAME}: backdoor")
        restore_dormant(model, clean_model, pruned.pruned, attacker_clean.images, self.margin)
        zero_check = _max_activation(model, pruned.pruned, attacker_clean.images)
        record = {"pruned_channels": pruned.pruned, "channels": site.channels,
                  "fraction_pruned": len(pruned.pruned) / site.channels,
                  "restored_max_clean_activation": zero_check, "history": history.epochs,
                  "wall_time_s": time.perf_counter() - started}
        return model.eval(), record

    def trainer(self, architecture: str, train_set: Dataset, config: TrainConfig, *,
                clean_model: nn.Module | None = None) -> TrainFn:
        """A `train_fn(model, monitor) -> (TrainHistory, spec_extra)` for the verbs layer: trains in place
        into `model` (freshly initialised there), so the attack is saved like any trained model."""

        def train_fn(model: nn.Module, monitor: Any) -> tuple[TrainHistory, dict[str, Any]]:
            trained, record = self.train(architecture, train_set, config, clean_model=clean_model, evaluate=monitor)
            model.load_state_dict(trained.state_dict())
            model.eval()
            history = TrainHistory(epochs=record.pop("history"), wall_time_s=record["wall_time_s"])
            spec = self.to_spec()["model_attack"]
            return history, {"model_attack": {**spec, **record}}

        return train_fn


def _max_activation(model: nn.Module, channels: list[int], images: torch.Tensor) -> float:
    if not channels:
        return 0.0
    return float(torch.relu(max_channel_pre_activations(model, prune_site(model), images)[channels]).max())


def restore_dormant(model: nn.Module, clean_model: nn.Module, channels: list[int], images: torch.Tensor,
                    margin: float) -> None:
    """Step 4, in place on `model`: give `channels` their weights from `clean_model`, then shift their
    bias (BN: beta) so that the largest pre-activation over `images` is -margin: dormant on clean data."""
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
        peak = max_channel_pre_activations(model, site, images)[idx]
        shift_param[idx] -= peak + margin
