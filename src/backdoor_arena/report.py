"""Records (flat JSON objects, JSONL files), tables and plots. Plots are made from records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .records import json_safe, read_jsonl, write_jsonl  # noqa: F401  (the reporting layer reads records)


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend (no display needed, also on headless machines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write (creating the folder) and close a figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], formats: dict[str, str] | None = None) -> str:
    formats = formats or {}

    def cell(row: dict[str, Any], col: str) -> str:
        v = row.get(col)
        if v is None:
            return ""
        return format(v, formats[col]) if col in formats and isinstance(v, (int, float)) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_examples(
    path: str | Path, clean_images: torch.Tensor, triggered_images: torch.Tensor,
    predictions: Sequence[dict[str, Any]], model_names: Sequence[str], class_names: Sequence[str],
) -> Path:
    """Two rows of images (clean, triggered); under each, every model's prediction from `predictions`.

    `predictions[i]` is a record {"index", "label", "<model>_clean", "<model>_triggered", ...}.
    """
    plt = pyplot()

    n = len(predictions)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 4.2), squeeze=False)
    for row, (images, which) in enumerate(((clean_images, "clean"), (triggered_images, "triggered"))):
        for i, rec in enumerate(predictions):
            ax = axes[row][i]
            img = images[i].float()
            if img.shape[0] == 1:
                ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            text = [f"{m}: {class_names[rec[f'{m}_{which}']]}" for m in model_names]
            colors = "red" if any(rec[f"{m}_{which}"] != rec["label"] for m in model_names) else "black"
            ax.set_xlabel("\n".join(text), fontsize=7, color=colors)
            if i == 0:
                ax.set_ylabel(which, fontsize=9)
    fig.suptitle("Predictions on clean and triggered test images (red: a model disagrees with the true label)",
                 fontsize=9)
    return save_figure(fig, path, dpi=120)


def plot_training_curves(path: str | Path, runs: dict[str, list[dict[str, Any]]]) -> Path:
    """Per-epoch clean accuracy (and ASR where recorded) of several runs, from their history records."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, history in runs.items():
        epochs = [h["epoch"] for h in history]
        ax.plot(epochs, [h["clean_accuracy"] for h in history], marker="o", label=f"{name}: clean accuracy")
        if "attack_success_rate" in history[0]:
            ax.plot(epochs, [h["attack_success_rate"] for h in history], marker="x", ls="--",
                    label=f"{name}: attack success")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("fraction of test inputs")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=120)
