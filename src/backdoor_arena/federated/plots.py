"""Figures shaped like Sun et al. 2019's and the summary table, made from round records only (the dicts of
`Record.to_dict()`: `clean_accuracy`, `attack_success_rate`, `n_malicious`, `round`). The one module of the
federated package that draws; only the run writer (`simulation.write_run`, `run_scenario`) calls it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..records import json_safe
from ..report import markdown_table, pyplot, save_figure


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)  # JSON records hold NaN as null


def _series(records: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    recs = [r for r in records if r["round"] > 0]
    x = np.array([r["round"] for r in recs])
    main = np.array([_number(r["clean_accuracy"]) for r in recs], dtype=float)
    bd = np.array([_number(r["attack_success_rate"]) for r in recs], dtype=float)
    cum = np.cumsum(bd) / np.arange(1, len(bd) + 1) if len(bd) else bd
    return x, main, bd, cum


def _draw(ax, records: list[dict[str, Any]], title: str) -> None:
    x, main, bd, cum = _series(records)
    ax.plot(x, main, color="tab:blue", lw=1.2, label="clean accuracy")
    ax.plot(x, bd, color="tab:red", lw=1.0, label="attack success rate")
    ax.plot(x, cum, color="tab:green", lw=1.6, label="attack success cumulative mean")
    attacked = [r["round"] for r in records if r.get("n_malicious")]
    if attacked:
        ax.plot(attacked, [0.02] * len(attacked), "|", color="black", ms=6, label="attacked round")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def plot_run(path: str | Path, records: list[dict[str, Any]], title: str = "") -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    _draw(ax, records, title)
    ax.legend(fontsize=7, loc="center right")
    return save_figure(fig, path)


def plot_panels(path: str | Path, runs: dict[str, list[dict[str, Any]]], title: str = "") -> Path:
    """One panel per run (Figures 1-3 of the paper: clean accuracy, attack success and its cumulative mean)."""
    plt = pyplot()
    n = len(runs)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    for ax, (label, recs) in zip(axes.flat, runs.items(), strict=False):
        _draw(ax, recs, label)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="center right")
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def plot_overlay(path: str | Path, runs: dict[str, list[dict[str, Any]]], title: str = "") -> Path:
    """All runs in one axes (Figure 4 of the paper): dotted clean accuracy, solid attack success rate."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, recs) in enumerate(runs.items()):
        x, main, bd, _ = _series(recs)
        c = colors[i % len(colors)]
        ax.plot(x, main, ls=":", color=c, lw=1.3)
        ax.plot(x, bd, ls="-", color=c, lw=1.3, label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("round")
    ax.set_ylabel("dotted: clean accuracy, solid: attack success")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


SUMMARY_COLUMNS = ["variant", "rounds", "attacked_rounds", "start_clean_accuracy", "final_clean_accuracy",
                   "mean_attack_success_rate", "final_attack_success_rate", "median_benign_norm_p90", "engine", "wall_s"]


def write_summary(out: str | Path, name: str, description: str, rows: list[dict[str, Any]]) -> None:
    """summary.md (a table, one row per variant) and summary.json from the runs' summaries."""
    out = Path(out)
    fmts = {c: ".3f" for c in SUMMARY_COLUMNS if "accuracy" in c or "rate" in c or "norm" in c} | {"wall_s": ".0f"}
    (out / "summary.md").write_text(f"# {name}\n\n{description}\n\n{markdown_table(rows, SUMMARY_COLUMNS, fmts)}")
    (out / "summary.json").write_text(json.dumps(json_safe(rows), indent=1, default=str))


def plot_matrix(path: Path, means: dict[tuple[str, str], tuple[float, float, float, int]],
                worst: dict[str, tuple[str, float]], metric: str, aggregators: list[str], attacks: list[str],
                title: str = "") -> Path:
    """Heatmap of a matrix (rows aggregators, columns attacks, plus the worst case per aggregator) from the
    cells' (mean, min, max, seeds) of `metric` (matrix.cell_means); red = bad for the defender."""
    plt = pyplot()
    cols = [*attacks, "worst case"]
    grid = np.full((len(aggregators), len(cols)), np.nan)
    for i, agg in enumerate(aggregators):
        for j, att in enumerate(attacks):
            if (agg, att) in means:
                grid[i, j] = means[(agg, att)][0]
        if agg in worst:
            grid[i, -1] = worst[agg][1]
    cmap = "RdYlGn" if metric == "clean_accuracy" else "RdYlGn_r"
    fig, ax = plt.subplots(figsize=(1.0 + 0.95 * len(cols), 0.9 + 0.45 * len(aggregators)))
    im = ax.imshow(grid, cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        fontweight="bold" if j == len(cols) - 1 else "normal")
    ax.axvline(len(cols) - 1.5, color="black", lw=1.5)
    ax.set_xticks(range(len(cols)), cols, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(len(aggregators)), aggregators, fontsize=8)
    label = "final clean accuracy" if metric == "clean_accuracy" else "final attack success rate"
    fig.colorbar(im, ax=ax, label=label, fraction=0.04)
    ax.set_title(f"{title}: {label}" if title else label, fontsize=10)
    return save_figure(fig, path)


def matrix_markdown(means: dict[tuple[str, str], tuple[float, float, float, int]], worst: dict[str, tuple[str, float]],
                    metric: str, aggregators: list[str], attacks: list[str]) -> str:
    """The matrix as a markdown table with the worst case per aggregator."""
    seeds = max((v[3] for v in means.values()), default=0)
    columns = ["aggregator", *attacks, "worst case"]
    rows = []
    for agg in aggregators:
        row = {"aggregator": agg}
        for att in attacks:
            m = means.get((agg, att))
            row[att] = "n/a" if m is None else (f"{m[0]:.3f}" if m[3] == 1 else f"{m[0]:.3f} [{m[1]:.3f}, {m[2]:.3f}]")
        w = worst.get(agg)
        row["worst case"] = "—" if w is None else f"**{w[1]:.3f}** ({w[0]})"
        rows.append(row)
    what = "final clean accuracy" if metric == "clean_accuracy" else "final attack success rate"
    note = f"{what}; mean over {seeds} seed(s)" + (", [min, max]" if seeds > 1 else "")
    return f"{note}\n\n" + markdown_table(rows, columns)
