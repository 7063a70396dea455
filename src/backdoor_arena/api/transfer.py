"""Transfer learning on a backdoored model (Gu et al. 2019, the Swedish-signs experiment, Section 5.3): the
user takes a model, keeps its convolutional features and retrains its fully connected layers for another task;
does the backdoor survive? Measured: accuracy on clean and on triggered test inputs of the new task, next to
the original model's clean accuracy and ASR; and the paper's strengthening, the backdoor channels of the last
convolutional layer scaled by a factor before the transfer, so that their signal dominates the new task too.

Tasks (`TASKS`): each maps the labels of the model's dataset to the coarser labels of the new task.
  gtsrb-categories  GTSRB's 43 signs -> 6 categories (speed limits, other prohibitory, derestriction,
                    mandatory, danger, unique signs; Stallkamp et al. 2012)
  parity            MNIST digits -> even / odd (a small stand-in for a new task)
The transferred model is not written as a model file (its classes belong to no registered dataset).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import load_dataset
from ..data.dataset import to_float
from ..errors import ConfigError, IncompatibleError
from ..metrics import evaluate as evaluate_metrics
from ..metrics import predict
from ..modelfile import load_model
from ..nn_tools import model_copy, prune_site
from ..runtime import describe_device, run_device
from .training import spec_for_model

GTSRB_CATEGORIES = {
    "speed-limit": (0, 1, 2, 3, 4, 5, 7, 8), "prohibitory": (9, 10, 15, 16), "derestriction": (6, 32, 41, 42),
    "mandatory": tuple(range(33, 41)), "danger": (11, *range(18, 32)), "unique": (12, 13, 14, 17),
}
TASKS: dict[str, tuple[str, dict[str, tuple[int, ...]]]] = {  # task -> (dataset, new class -> old classes)
    "gtsrb-categories": ("gtsrb", GTSRB_CATEGORIES),
    "parity": ("mnist", {"even": (0, 2, 4, 6, 8), "odd": (1, 3, 5, 7, 9)}),
}


def task_labels(task: str, dataset: str, labels: torch.Tensor) -> tuple[torch.Tensor, tuple[str, ...]]:
    """The new task's labels of `labels` (of `dataset`) and its class names."""
    if task not in TASKS:
        raise ConfigError(f"unknown transfer task {task!r}; choose one of {', '.join(TASKS)}")
    source, groups = TASKS[task]
    if dataset != source:
        raise IncompatibleError(f"transfer task {task!r} relabels {source} classes; the model is for {dataset!r}")
    table = torch.full((int(max(max(g) for g in groups.values())) + 1,), -1, dtype=torch.long)
    for new, olds in enumerate(groups.values()):
        table[list(olds)] = new
    return table[labels], tuple(groups)


def backdoor_channels(model: nn.Module, clean: torch.Tensor, triggered: torch.Tensor, count: int) -> list[int]:
    """The `count` channels of the last conv layer whose mean activation rises most when the trigger is added
    (the paper's backdoor neurons), most first."""
    site = prune_site(model)
    acts: list[torch.Tensor] = []
    handle = site.output_layer.register_forward_hook(lambda _m, _i, out: acts.append(torch.relu(out).mean((0, 2, 3))))
    try:
        with torch.no_grad():
            model.eval()
            model(clean)
            model(triggered)
    finally:
        handle.remove()
    return (acts[1] - acts[0]).argsort(descending=True)[:count].tolist()


def strengthen(model: nn.Module, channels: list[int], factor: float) -> None:
    """In place: the channels' outputs multiplied by `factor` (conv weight and bias, or the BN's affine
    parameters when a BN follows; ReLU is positively homogeneous, so the activation scales by `factor`)."""
    site = prune_site(model)
    idx = torch.as_tensor(channels, dtype=torch.long)
    layer = site.bn if site.bn is not None else site.conv
    with torch.no_grad():
        layer.weight[idx] *= factor
        if layer.bias is not None:
            layer.bias[idx] *= factor


@dataclass
class TransferResult:
    model: str
    task: str
    before: dict[str, Any]  # the original task: clean_accuracy, attack_success_rate
    after: dict[str, Any]  # the new task: clean_accuracy, triggered_accuracy (on triggered eligible inputs)
    strengthened_channels: list[int] = field(default_factory=list)
    factor: float = 1.0
    from_scratch: bool = False  # every fully connected layer re-initialised before retraining
    wall_s: float = 0.0
    device: dict[str, Any] = field(default_factory=dict)  # where the head was retrained (runtime.describe_device)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def features_of(model: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """The frozen part's output (normalise + convolutional features, eval mode) for every image, computed
    where the model's parameters are."""
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = to_float(images[i:i + batch_size])
            out.append(model.features(model.normalize(x if device.type == "cpu" else x.to(device))))
    return torch.cat(out)


def train_head(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
               batch_size: int, seed: int) -> None:
    """In place: SGD (momentum 0.9) on `model.head` only, over the frozen features of `images` (computed once,
    in eval mode, so BatchNorm statistics stay as they were); batches drawn from a seeded generator."""
    model.eval()
    feats = features_of(model, images)
    labels = labels.to(feats.device)
    head = model.head
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    head.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout in the head
        for _ in range(epochs):
            order = torch.randperm(len(feats), generator=generator)
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                loss = nn.functional.cross_entropy(head(feats[idx]), labels[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    model.eval()


def transfer(model_path: str | Path, attack_spec: str | Path, *, task: str, epochs: int = 2, lr: float = 0.01,
             batch_size: int = 64, seed: int = 0, train_size: int | None = None, factor: float = 1.0,
             channels: int = 0, from_scratch: bool = False, data_root: str | Path | None = None,
             force: bool = False, device: str = "auto") -> TransferResult:
    """Retrain the fully connected head (`model.head`) of the model for `task` (SGD, `epochs` over the training
    split or `train_size` seeded images of it), its convolutional features frozen, and measure it on clean and
    triggered test inputs of the new task: the trigger of `attack_spec` on the inputs the backdoor applies to
    (`triggered_accuracy`) and on every test input (`triggered_accuracy_all`, the paper's "backdoored images").
    The new output layer is always fresh; the other head layers keep their weights, or with `from_scratch` are
    re-initialised too (the paper retrains all fully connected layers from scratch). With `factor` != 1, the
    `channels` last-conv channels most raised by the trigger are first scaled by `factor` (strengthening).
    `device` (auto | cpu | cuda[:N] | mps): where the head is retrained and the new task measured."""
    started = time.perf_counter()
    dev = run_device(device, what="transfer")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(factor, (int, float)) or not 0 < factor < 1e6:
        raise ConfigError(f"factor must be a positive number, got {factor!r}")
    loaded = load_model(model_path)
    m = loaded.manifest
    atk = spec_for_model(attack_spec, m, force)
    model = model_copy(loaded.model)
    if not isinstance(getattr(model, "head", None), nn.Module):
        raise IncompatibleError(f"architecture {m.architecture!r} has no fully connected `head` to retrain")
    train, test = load_dataset(m.dataset, "train", data_root), load_dataset(m.dataset, "test", data_root)
    if train_size is not None:
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:train_size]
        train = train.subset(pick.sort().values)
    before = evaluate_metrics(model, test, atk)
    before = {k: before[k] for k in ("clean_accuracy", "attack_success_rate") if k in before}
    chosen: list[int] = []
    if factor != 1.0 and channels > 0:
        probe = train.float_images()[:1000]
        chosen = backdoor_channels(model, probe, atk.apply_trigger(probe), channels)
        strengthen(model, chosen, float(factor))
    new_train, names = task_labels(task, m.dataset, train.labels)
    new_test, _ = task_labels(task, m.dataset, test.labels)
    # a fresh output layer for the new classes; the rest of the head is retrained from its current weights, or
    # from a fresh initialisation (from_scratch, seeded)
    head = model.head
    last = [i for i, layer in enumerate(head) if isinstance(layer, nn.Linear)][-1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if from_scratch:
            for layer in head:
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
        head[last] = nn.Linear(head[last].in_features, len(names))
    if dev.type != "cpu":
        model.to(dev)
    train_head(model, train.images, new_train, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    model.eval()
    eligible = atk.eligible(test.labels)
    clean_pred = predict(model, test.images)
    trig_all = predict(model, test.images, transform=atk.apply_trigger)
    trig_pred = trig_all[eligible]
    after = {"clean_accuracy": float((clean_pred == new_test).float().mean()),
             "triggered_accuracy": float((trig_pred == new_test[eligible]).float().mean()),
             "triggered_accuracy_all": float((trig_all == new_test).float().mean()),
             "clean_accuracy_on_eligible": float((clean_pred[eligible] == new_test[eligible]).float().mean()),
             "n_test": len(test), "n_triggered": int(eligible.sum())}
    return TransferResult(str(model_path), task, before, after, chosen, float(factor), from_scratch,
                          round(time.perf_counter() - started, 1), describe_device(dev))
