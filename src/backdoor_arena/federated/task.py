"""The backdoor task of Sun et al. 2019 and the attackers' own data.

The 7s of `tasks` chosen "target clients" (writers) should be classified as 1. Each target client's 7s are
split in two halves: the attackers train on one (relabelled as 1), attack success is measured on the other
(held out). Benign clients, the target clients included, keep their correctly labelled 7s, so benign
training keeps pulling the model back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .partition import FederatedData


@dataclass(frozen=True, eq=False)
class BackdoorTask:
    target_clients: tuple[int, ...]  # client positions in FederatedData
    attacker_index: torch.Tensor  # global sample indices of target-client sources the attacker relabels
    eval_index: torch.Tensor  # held-out target-client sources: attack success is measured on these
    source: int = 7
    target: int = 1


def make_backdoor_task(fed: FederatedData, tasks: int, generator: torch.Generator, source: int = 7,
                       target: int = 1) -> BackdoorTask:
    """Choose `tasks` target clients among those with >= 2 images of `source`; split each one's
    source images into an attacker half and a held-out half."""
    labels = fed.dataset.labels
    eligible = [k for k, idx in enumerate(fed.indices) if int((labels[idx] == source).sum()) >= 2]
    if not 1 <= tasks <= len(eligible):
        raise ConfigError(f"backdoor.tasks must be in [1, {len(eligible)}] (clients with >= 2 images of class "
                          f"{source}), got {tasks}")
    pick = sorted(eligible[i] for i in torch.randperm(len(eligible), generator=generator)[:tasks].tolist())
    train, held = [], []
    for k in pick:
        idx = fed.indices[k]
        src = idx[labels[idx] == source]
        src = src[torch.randperm(len(src), generator=generator)]
        half = len(src) // 2
        train.append(src[:half])
        held.append(src[half:])
    return BackdoorTask(tuple(pick), torch.cat(train).sort().values, torch.cat(held).sort().values, source, target)


@dataclass(frozen=True, eq=False)
class AttackerData:
    """The attackers' own data: D_mal (relabelled) plus clean samples of the true distribution, in memory."""

    images: torch.Tensor
    labels: torch.Tensor
    n_backdoor: int  # the first n_backdoor rows are D_mal


def make_attacker_data(fed: FederatedData, task: BackdoorTask, clean_samples: int,
                       generator: torch.Generator) -> AttackerData:
    d = fed.dataset
    excluded = set(task.target_clients)
    pool = torch.cat([idx for k, idx in enumerate(fed.indices) if k not in excluded])
    clean = pool[torch.randperm(len(pool), generator=generator)[:clean_samples]]
    images = torch.cat([d.images[task.attacker_index], d.images[clean]])
    labels = torch.cat([torch.full((len(task.attacker_index),), task.target, dtype=torch.int64), d.labels[clean]])
    return AttackerData(images, labels, len(task.attacker_index))
