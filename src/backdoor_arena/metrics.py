"""Clean accuracy, attack success rate, robust accuracy, per-class breakdowns.

ASR counts only inputs the backdoor applies to (for all-to-one: true label != target), triggered,
against the attack's target label (all-to-all: the shifted label). Robust accuracy is the fraction
of those triggered inputs still classified as their true label.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data.dataset import Dataset, to_float


def predict(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int = 1000,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Predicted labels for images (uint8 or float), on the CPU; batches go to the device of the model's
    parameters (a model trained on a GPU is evaluated there). The model's train/eval mode is restored afterwards."""
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                x = to_float(images[i : i + batch_size])
                if transform is not None:
                    x = transform(x)
                if device.type != "cpu":
                    out.append(model(x.to(device)).argmax(1).cpu())
                    continue
                out.append(model(x).argmax(1))
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
    finally:
        model.train(was_training)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    return float((pred == labels).float().mean()) if len(labels) else float("nan")


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(num_classes):
        sel = labels == c
        out.append(float((pred[sel] == c).float().mean()) if sel.any() else None)
    return out


def evaluate(model: nn.Module, test: Dataset, attack: Any | None = None, batch_size: int = 1000) -> dict[str, Any]:
    """Metrics of `model` on `test`; with an attack, also ASR and robust accuracy (fractions in [0, 1])."""
    pred = predict(model, test.images, batch_size)
    result: dict[str, Any] = {
        "clean_accuracy": accuracy(pred, test.labels),
        "n_clean": len(test),
        "per_class_accuracy": per_class_accuracy(pred, test.labels, test.num_classes),
    }
    if attack is not None:
        eligible = attack.eligible(test.labels)
        images, labels = test.images[eligible], test.labels[eligible]
        triggered = predict(model, images, batch_size, transform=attack.apply_trigger)
        wanted = attack.target_labels(labels)
        result.update({
            "attack_success_rate": accuracy(triggered, wanted),
            "robust_accuracy": accuracy(triggered, labels),
            "n_triggered": int(eligible.sum()),
            "per_class_attack_success_rate": [
                float((triggered[labels == c] == wanted[labels == c]).float().mean()) if (labels == c).any() else None
                for c in range(test.num_classes)
            ],
        })
    return result
