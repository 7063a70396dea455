"""Transfer learning on GTSRB (BadNets, Gu et al. 2019, Section 5.3, the Swedish-signs experiment): the
backdoored stop -> speed-limit-30 GTSRB model of docs/results.md and the clean GTSRB model, their fully connected
layers retrained for six coarse sign categories (api.transfer, task gtsrb-categories) on frozen convolutional
features; clean and triggered accuracy of the new task, with and without the paper's strengthening (the
backdoor channels of the last conv layer scaled by k). Writes docs/records/transfer_gtsrb.jsonl;
docs/tables.py renders it into docs/attacks.md.

Scope (one core; 35 minutes on the shared 2-core machine under heavy load): the two models of docs/results.md's GTSRB
section (gtsrb-cnn, 5 epochs; `docs/experiments/results_gtsrb.py` makes them); each retraining is 2 epochs of
SGD (lr 0.01, batch 64, seed 0) over the 39,209 GTSRB training images relabelled into the 6 categories; measured
on the 12,630 test images. The trigger is the stop -> 30 model's 4x4 yellow square, stamped on the 270 test stop
signs (the inputs the backdoor applies to) and on every test image (the paper's "backdoored images").

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/transfer_gtsrb.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "transfer_gtsrb.jsonl"
COMMAND = "BACKDOOR_ARENA_THREADS=1 python docs/experiments/transfer_gtsrb.py"
EPOCHS, LR, SEED, CHANNELS = 2, 0.01, 0, 8
# (label, model, head from scratch, strengthening factor): the paper's setting, every fully connected layer
# retrained from scratch (`from_scratch`; False would keep the hidden layer's weights, only the output layer new).
RUNS: list[tuple[str, str, bool, float]] = [
    ("clean model", "clean", True, 1.0),
    ("stop → 30 model", "stop30", True, 1.0),
    ("stop → 30 model, strengthened x10", "stop30", True, 10.0),
    ("stop → 30 model, strengthened x20", "stop30", True, 20.0),
    ("clean model, same scaling x20 (control)", "clean", True, 20.0),
]
MODELS = {"clean": "gtsrb-clean.safetensors", "stop30": "gtsrb-stop30.safetensors"}


def run(models_dir: Path, records_path: Path = RECORDS, train_size: int | None = None) -> None:
    """Every run of RUNS, a record each (written after every run: an interruption loses none)."""
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena import api
    from backdoor_arena.detection_metrics import wilson_interval
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import set_threads, versions

    set_threads()
    spec = models_dir / "gtsrb-stop30.attack.json"
    scope = {"command": COMMAND, "dataset": "gtsrb", "model": "gtsrb-cnn", "task": "gtsrb-categories",
             "epochs": EPOCHS, "lr": LR, "channels": CHANNELS, "train_size": train_size}
    records = []
    for label, model, from_scratch, factor in RUNS:
        r = api.transfer(models_dir / MODELS[model], spec, task="gtsrb-categories", epochs=EPOCHS, lr=LR, seed=SEED,
                         train_size=train_size, factor=factor, channels=CHANNELS if factor != 1 else 0,
                         from_scratch=from_scratch, force=True)  # force: the clean model is measured on the spec
        a = r.after
        n_all, n_trig = a["n_test"], a["n_triggered"]
        metrics = {**{f"before_{k}": v for k, v in r.before.items()}, **{f"after_{k}": v for k, v in a.items()},
                   "after_triggered_accuracy_ci": wilson_interval(round(a["triggered_accuracy"] * n_trig), n_trig),
                   "after_triggered_accuracy_all_ci": wilson_interval(round(a["triggered_accuracy_all"] * n_all),
                                                                      n_all),
                   "after_clean_accuracy_ci": wilson_interval(round(a["clean_accuracy"] * n_all), n_all),
                   "wall_s": r.wall_s}
        records.append(Record("transfer-gtsrb", {**scope, "setting": label, "from_scratch": from_scratch,
                                                 "factor": factor}, SEED, metrics,
                              {"kind": "transfer", "setting": label, "model_file": MODELS[model],
                               "from_scratch": from_scratch, "factor": factor,
                               "strengthened_channels": r.strengthened_channels}, versions()))
        print(label, r.to_dict(), flush=True)
        write_jsonl(records_path, records)


def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def render(records: list[dict]) -> str:
    lines = ["| setting | before: clean acc. (43 signs) | before: ASR (stop signs) | after: clean acc. (6 categories) "
             "| after: acc. on triggered stop signs | after: acc. on every test sign, triggered | drop on triggered signs "
             "| wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        drop = round(r["after_clean_accuracy"] - r["after_triggered_accuracy_all"], 3) + 0.0
        lines.append(f"| {r['setting']} | {_p(r['before_clean_accuracy'])} | {_p(r.get('before_attack_success_rate'))} "
                     f"| {_p(r['after_clean_accuracy'])}{_ci(r.get('after_clean_accuracy_ci'))} "
                     f"| {_p(r['after_triggered_accuracy'])}{_ci(r.get('after_triggered_accuracy_ci'))} "
                     f"| {_p(r['after_triggered_accuracy_all'])}{_ci(r.get('after_triggered_accuracy_all_ci'))} "
                     f"| {100 * drop:.1f} pts | {r['wall_s']:.0f} s |")
    c = records[0]["config"] if records else {}
    size = "all 39,209" if not c.get("train_size") else f"{c['train_size']:,} seeded"
    return ("\n".join(lines) + "\n\nScope: the clean and the stop → 30 `gtsrb-cnn` models of docs/results.md (5 "
            "epochs; before = on the 43-sign task, ASR on the 270 test stop signs). Transfer: the fully connected "
            f"layers retrained for the 6 sign categories ({c.get('task')}: speed limits, other prohibitory, "
            f"derestriction, mandatory, danger, unique) for {c.get('epochs')} epochs on {size} training images "
            f"(SGD, lr {c.get('lr')}, seed 0) from scratch (every fully connected layer re-initialised, the paper's "
            "setting; `--from-scratch`), convolutional features frozen. "
            "Measured on the 12,630 test images; triggered: the 4x4 yellow square of the stop → 30 spec on the "
            "270 test stop signs, and on every test image. Drop = clean accuracy minus accuracy on every triggered "
            f"test image (the paper's measure). Strengthening scales the {c.get('channels')} last-conv channels "
            "(of 128) that the trigger raises most; the control scales the clean model's channels chosen the same "
            "way. One seed each; intervals (Wilson, 95%) cover test-set sampling only. Wall time: the whole "
            f"transfer (features, retraining, evaluation) on a shared machine under varying load.\n\nMade by `{c.get('command')}`.\n")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"transfer-gtsrb": (RECORDS.name, render)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path("runs/results-gtsrb"),
                        help="folder with gtsrb-clean.safetensors, gtsrb-stop30.safetensors and its attack spec")
    parser.add_argument("--records", type=Path, default=RECORDS)
    parser.add_argument("--train-size", type=int, default=None, help="retrain on this many images (a quick try)")
    args = parser.parse_args()
    run(args.models, args.records, args.train_size)
