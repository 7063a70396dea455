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


# -- removal defenses: prune and fine-tuning curves (from curve records) --------------------------------------
def _plot_prune(ax: Any, rows: list[dict[str, Any]], chosen: float | None, title: str) -> None:
    x = [r["fraction_pruned"] for r in rows]
    ax.plot(x, [r["holdout_accuracy"] for r in rows], color="tab:green", ls=":", label="defender's clean set accuracy")
    if "clean_accuracy" in rows[0]:
        ax.plot(x, [r["clean_accuracy"] for r in rows], color="tab:blue", label="test clean accuracy")
    if "attack_success_rate" in rows[0]:
        ax.plot(x, [r["attack_success_rate"] for r in rows], color="tab:red", ls="--", label="attack success rate")
    if chosen is not None:
        ax.axvline(chosen, color="gray", lw=0.8)
        ax.text(chosen, 0.5, " stop", fontsize=7, color="gray")
    ax.set_xlabel("fraction of last-conv channels pruned")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)


def _plot_epochs(ax: Any, rows: list[dict[str, Any]], title: str) -> None:
    x = [r["epoch"] for r in rows]
    if "clean_accuracy" in rows[0]:
        ax.plot(x, [r["clean_accuracy"] for r in rows], color="tab:blue", marker="o", ms=3, label="test clean accuracy")
    if "attack_success_rate" in rows[0]:
        ax.plot(x, [r["attack_success_rate"] for r in rows], color="tab:red", ls="--", marker="x", ms=3,
                label="attack success rate")
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=8)


def plot_defense_curve(path: str | Path, curve: list[dict[str, Any]], defense: str, *, title: str = "",
                       chosen: float | None = None) -> Path | None:
    """The prune curve (accuracy, ASR vs fraction pruned) and/or the fine-tuning curve (vs epoch); None
    when the curve has neither (nc-pruning's rows count penultimate neurons: its own plot is in detect)."""
    prune = [r for r in curve if "fraction_pruned" in r]
    tune = [r for r in curve if "epoch" in r]
    panels = [p for p in (prune, tune) if p]
    if not panels:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), squeeze=False)
    i = 0
    if prune:
        _plot_prune(axes[0][i], prune, chosen, f"{title}: pruning")
        i += 1
    if tune:
        _plot_epochs(axes[0][i], tune, f"{title}: fine-tuning" + (" (pruned channels held at 0)" if prune else ""))
    axes[0][0].set_ylabel("fraction")
    if axes[0][-1].get_legend_handles_labels()[0]:  # a fine-tuning panel without a test curve has no lines
        axes[0][-1].legend(fontsize=7, loc="lower left")
    return save_figure(fig, path)


def plot_comparison(out_dir: Path, rows: list[dict[str, Any]], curves: list[dict[str, Any]]) -> list[Path]:
    """prune-curves.png, finetune-curves.png and summary.png, from the records."""
    plt = pyplot()
    paths = []
    models = list(dict.fromkeys(r["model"] for r in curves))
    if models:
        fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.3), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            prune = [c for c in curves if c["model"] == model and c["defense"] == "pruning"]
            chosen = next((r["fraction_pruned"] for r in rows if r["model"] == model and r["defense"] == "pruning"), None)
            _plot_prune(ax, prune, chosen, model)
        axes[0][0].set_ylabel("fraction")
        axes[0][0].legend(fontsize=7, loc="lower left")
        paths.append(save_figure(fig, out_dir / "prune-curves.png"))

        fig, axes = plt.subplots(2, len(models), figsize=(4.2 * len(models), 5.8), squeeze=False)
        for j, model in enumerate(models):
            for i, defense in enumerate(("fine-tuning", "fine-pruning")):
                tune = [c for c in curves if c["model"] == model and c["defense"] == defense and "epoch" in c]
                _plot_epochs(axes[i][j], tune, f"{model}: {defense}")
        axes[0][0].legend(fontsize=7, loc="center right")
        paths.append(save_figure(fig, out_dir / "finetune-curves.png"))

    labels = [f"{r['model']}\n{r['defense']}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(rows)), 3.6))
    x = torch.arange(len(rows)).float()
    ax.bar((x - 0.2).tolist(), [r["clean_accuracy"] for r in rows], width=0.4, color="tab:blue", label="clean accuracy")
    ax.bar((x + 0.2).tolist(), [r.get("attack_success_rate", 0.0) for r in rows], width=0.4, color="tab:red",
           label="attack success rate")
    ax.set_xticks(x.tolist())
    ax.set_xticklabels(labels, fontsize=6, rotation=60, ha="right")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    paths.append(save_figure(fig, out_dir / "summary.png"))
    return paths


# -- detection ---------------------------------------------------------------------------------------------
def plot_score_histograms(path: Path, threshold: float, clean: torch.Tensor, triggered: torch.Tensor | None,
                          *, entropy_scale: bool = False) -> Path:
    """Histograms of clean and triggered input scores; `entropy_scale` draws STRIP's scores as entropy
    (minus the score, its natural scale)."""
    is_strip = entropy_scale
    plt = pyplot()

    f = (lambda s: -s) if is_strip else (lambda s: s)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = [f(clean)] + ([f(triggered)] if triggered is not None else [])
    lo, hi = float(min(v.min() for v in values)), float(max(v.max() for v in values))
    bins = torch.linspace(lo, hi + 1e-9, 41).numpy()  # shared bins; counts on a log axis so both show
    ax.hist(f(clean).numpy(), bins=bins, alpha=0.6, label=f"clean ({len(clean)})")
    if triggered is not None:
        ax.hist(f(triggered).numpy(), bins=bins, alpha=0.6, label=f"triggered ({len(triggered)})")
    ax.set_yscale("log")
    ax.axvline(f(torch.tensor(threshold)).item(), c="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("mean entropy of superimposed predictions (bits)" if is_strip else "score (fooled - boundary)")
    ax.set_ylabel("inputs (log scale)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_roc(path: str | Path, rows: list[dict[str, Any]], title: str) -> Path:
    plt = pyplot()

    labels = torch.tensor([r["backdoored"] for r in rows], dtype=torch.long)
    scores = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(8, 3.4))
    if labels.any() and (labels == 0).any():
        from .detection_metrics import roc_curve

        fpr, tpr, _ = roc_curve(labels, scores)
        ax.step(fpr.numpy(), tpr.numpy(), where="post", lw=2)
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set_xlabel("false positive rate (clean models flagged)")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC", fontsize=9)
    ax.grid(alpha=0.3)
    for flag, colour, name in ((False, "tab:blue", "clean"), (True, "tab:red", "backdoored")):
        vals = [r["score"] for r in rows if r["backdoored"] == flag]
        bx.scatter(vals, [int(flag) + 0.1 * ((i % 5) - 2) / 2 for i in range(len(vals))], c=colour, label=name, s=18)
    if rows:
        bx.axvline(rows[0]["threshold"], c="k", ls="--", lw=1, label=f"threshold {rows[0]['threshold']:g}")
    bx.set_yticks([0, 1], ["clean", "backdoored"])
    bx.set_xlabel("detector score")
    bx.set_title("scores per model", fontsize=9)
    bx.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_reversed_triggers(path: str | Path, masks: torch.Tensor, patterns: torch.Tensor, norms: torch.Tensor,
                           class_names: Sequence[str] | None = None, flagged_label: int | None = None) -> Path:
    """Reversed triggers of a trigger reverse-engineering detector (Neural Cleanse's `artefacts`): row 1 the
    masks [K, 1, H, W], row 2 mask * pattern (the trigger as stamped); titles give the L1 norms, and the
    `flagged_label`'s title is red."""
    plt = pyplot()

    k = masks.shape[0]
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k + 0.6, 2.9), squeeze=False)
    for i in range(k):
        stamped = (masks[i] * patterns[i]).clamp(0, 1)
        for row, img in enumerate((masks[i], stamped)):
            ax = axes[row][i]
            arr = img.detach().permute(1, 2, 0).numpy()
            ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        name = class_names[i] if class_names else str(i)
        axes[0][i].set_title(f"{name}\n|m|={float(norms[i]):.1f}", fontsize=7,
                             color="red" if flagged_label == i else "black")
    axes[0][0].set_ylabel("mask", fontsize=8)
    axes[1][0].set_ylabel("mask*pattern", fontsize=8)
    return save_figure(fig, path)
