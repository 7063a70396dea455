"""RAB on MNIST: certified accuracy against the radius of training-set perturbation, for two noise levels.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/rab_mnist.py
    .venv/bin/python docs/tables.py            # re-render the table of docs/detection.md from the records

For each sigma: the `rab` robust trainer (defenses/rab.py) trains N badnet-mnist models, each on its own
Gaussian-noised copy of a BadNets-poisoned MNIST training subset (one white pixel, all-to-one, target 0,
2% appended), and certifies 1,000 MNIST test images with both bounds (Hoeffding on the averaged
probabilities, as the authors' code; Clopper-Pearson on the hard votes). One record per (sigma, bound) in
docs/records/rab_mnist.jsonl, with the curve; the figure docs/figures/rab_certified_accuracy.png is drawn
from the records.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "rab_mnist.jsonl"
FIGURE = DOCS / "figures" / "rab_certified_accuracy.png"
VERB = "rab-mnist"
SIGMAS = (0.5, 1.0)
BOUNDS = ("hoeffding", "clopper-pearson")
TABLE_RADII = (0.0, 0.2, 0.5, 1.0, 2.0, 5.0)  # the paper's MNIST grid
CURVE_RADII = tuple(round(0.05 * i, 2) for i in range(41))  # 0 .. 2
SETTING = {"n_models": 50, "train_size": 6000, "epochs": 2, "test_size": 1000, "poison_rate": 0.02, "target": 0,
           "alpha": 0.001, "architecture": "badnet-mnist", "seed": 0}


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    import torch

    from backdoor_arena import api
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.data import load_dataset
    from backdoor_arena.defenses.rab import RAB, SmoothedModels, certified_accuracy
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    api.set_threads(None)
    s = {**SETTING, "n_models": args.n_models}
    g = torch.Generator().manual_seed(s["seed"])
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    subset = train.subset(torch.randperm(len(train), generator=g)[: s["train_size"]].sort().values)
    attack = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="pixel",
                         trigger_options={"position": "bottom-right"}, target=s["target"], mode="all-to-one",
                         poison_rate=s["poison_rate"], seed=s["seed"])
    poisoned = attack.poison(subset, torch.Generator().manual_seed(s["seed"])).dataset
    test = test.subset(torch.randperm(len(test), generator=g)[: s["test_size"]].sort().values)
    victims = test.labels != s["target"]
    triggered = attack.apply_trigger(test.float_images()[victims])
    command = (f"BACKDOOR_ARENA_THREADS=1 python docs/experiments/rab_mnist.py --n-models {s['n_models']}")
    records = []
    for sigma in SIGMAS:
        started = time.perf_counter()
        trainer = RAB(s["architecture"], n_models=s["n_models"], sigma=sigma, alpha=s["alpha"], epochs=s["epochs"],
                      seed=s["seed"])
        fitted = trainer.fit(poisoned)
        train_s = time.perf_counter() - started
        print(f"[{time.strftime('%H:%M:%S')}] sigma {sigma}: {s['n_models']} models in {train_s:.0f} s", flush=True)
        for bound in BOUNDS:
            view = SmoothedModels(fitted.model, sigma, s["alpha"], bound, fitted.history)
            t0 = time.perf_counter()
            cert = view.certify(test)
            correct = cert.prediction == test.labels
            curve = certified_accuracy(cert.radius, correct, list(CURVE_RADII))
            at = certified_accuracy(cert.radius, correct, list(TABLE_RADII))
            asr = float((view.certify(triggered).prediction == s["target"]).double().mean())
            records.append(Record(
                VERB, {"command": command, "setting": s, "trainer": trainer.params(), "bound": bound,
                       "trigger": "pixel bottom-right"},
                s["seed"],
                {"clean_accuracy": float(correct.double().mean()), "attack_success_rate": asr,
                 "certified_at": [float(a) for a in at], "certified_counts": [round(float(a) * len(test)) for a in at],
                 "curve": [float(a) for a in curve], "radius_cap": view.epsilon,
                 "median_radius": float(cert.radius.median()), "train_wall_s": round(train_s, 1),
                 "wall_s": round(train_s + time.perf_counter() - t0, 1)},
                {"sigma": sigma, "bound": bound, "n_test": len(test), "n_triggered": int(victims.sum()),
                 "table_radii": list(TABLE_RADII), "curve_radii": list(CURVE_RADII)},
                versions()))
            print(f"  {bound}: clean acc {correct.double().mean():.3f}, ASR {asr:.3f}, certified at "
                  f"{dict(zip(TABLE_RADII, [round(float(a), 3) for a in at], strict=True))}", flush=True)
    write_jsonl(RECORDS, records)
    draw(records_of())


def records_of() -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in RECORDS.read_text().splitlines() if line.strip()]


def draw(records: list[dict[str, Any]]) -> Path:
    from backdoor_arena.report import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, len(BOUNDS), figsize=(5 * len(BOUNDS), 3.6), squeeze=False, sharey=True)
    for ax, bound in zip(axes[0], BOUNDS, strict=True):
        for r in sorted((r for r in records if r["bound"] == bound), key=lambda r: r["sigma"]):
            ax.plot(r["curve_radii"], r["curve"], drawstyle="steps-post", label=f"sigma = {r['sigma']}")
        ax.set_title(f"RAB, MNIST, {bound} bound (N = {records[0]['config']['setting']['n_models']})")
        ax.set_xlabel("radius R (l2 of the training-set + test perturbation)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("certified accuracy")
    return save_figure(fig, FIGURE)


def _interval(k: int, n: int) -> str:
    from backdoor_arena.detection_metrics import wilson_interval

    lo, hi = wilson_interval(k, n, 0.95)
    return f"{100 * k / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def render(records: list[dict[str, Any]]) -> str:
    header = ["sigma", "bound", "clean acc.", "ASR (pixel)", "max R", *[f"R > {r:g}" for r in TABLE_RADII],
              "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(records, key=lambda r: (r["sigma"], r["bound"])):
        cells = [f"{r['sigma']:g}", r["bound"], f"{100 * r['clean_accuracy']:.1f}%",
                 f"{100 * r['attack_success_rate']:.1f}%", f"{r['radius_cap']:.2f}",
                 *[_interval(k, r["n_test"]) for k in r["certified_counts"]], f"{r['train_wall_s']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    s = records[0]["config"]["setting"]
    scope = (f"\nScope: {s['n_models']} badnet-mnist models per sigma, each trained {s['epochs']} epochs (Adam 1e-3, "
             f"batch 64) on its own noised copy of {s['train_size']:,} MNIST training images plus "
             f"{100 * s['poison_rate']:g}% appended BadNets copies (one white pixel, bottom-right, target "
             f"{s['target']}); certified on {records[0]['n_test']:,} test images (ASR on the "
             f"{records[0]['n_triggered']} non-target ones, triggered); alpha = {s['alpha']}; seed {s['seed']}. "
             "Certified accuracy with a 95% Wilson interval over the test images (the bound's own failure "
             "probability alpha is separate). Max R: the largest radius this ensemble size can certify at all. "
             "Train time: wall time of the N models on one thread of a shared, loaded 2-core machine.\n")
    cmds = sorted({r["config"]["command"] for r in records})
    return "\n".join(lines) + "\n" + scope + "".join(f"\nMade by `{c}`.\n" for c in cmds)


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"rab-mnist": (RECORDS.name, render)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-models", type=int, default=SETTING["n_models"])
    parser.add_argument("--figure-only", action="store_true", help="redraw the figure from the records")
    args = parser.parse_args()
    if args.figure_only:
        sys.path.insert(0, str(DOCS.parent / "src"))
        draw(records_of())
    else:
        run(args)
