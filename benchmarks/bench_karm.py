"""Neural Cleanse with every label optimised (schedule "all", the default) against K-Arm scheduling
(schedule "k-arm": logit pre-screening, a bandit over the kept labels, the symmetric check), side by side
in one run on the same models, clean sets and parameters: verdict, suspected target, score (NC: anomaly
index; K-Arm: symmetric ratio), K-Arm's lead arm (target <- source) with its forward and reverse norms,
optimisation steps (label-steps) and wall time, with K-Arm's time as a fraction of NC's on the same model
(the issue's goal: at most 1/3). Wall time and this process's CPU time are both given: on a shared machine
(load_1min: the load average before -> after each run) other jobs inflate wall times unevenly, and the CPU
time of one thread is the steadier measure of the work.

MNIST: a BadNets model (3x3 pattern, target 7, 10% poisoning) and a clean one, badnet-mnist, each trained
here for 2 epochs on 8,000 training images (cached under runs/abs-karm/bench-models); clean set: 1,000
training images the models never saw. GTSRB (43 classes): the project's stop -> speed limit 30 BadNets model
(label 14 -> label 1, source-specific, 4x4 yellow square, 2% poisoning without cover samples) and its clean
twin from runs/results-gtsrb/ (docs/experiments/results_gtsrb.py) if present, else skipped; clean set: 1,000
images drawn (seed 0) from the defender's clean hold-out of the GTSRB training split (23 stop signs among
them). Steps per label: 300 on MNIST, 100 on GTSRB (one core), where the cost weight starts after 2
successful checks 5 steps apart; and again on GTSRB with both at the detector's defaults (setting
"defaults": what `detect` and `scan` run); and at the defaults on the GTSRB models that `backdoor-arena
benchmark` trained (runs/leaderboard/models, those present of LEADERBOARD_MODELS: BadNets seeds 0-3, blended
seeds 0, 2 and 3, clean seeds 0-3; all-to-one to label 2, 10% poisoning; clean set drawn the same way from
their hold-out). BENCH_KARM_DATASETS=mnist,gtsrb,gtsrb-defaults,
gtsrb-leaderboard (comma-separated) restricts the settings.

GTSRB stop -> 30, what was measured on the way (scratch scripts and logs: runs/karm-gtsrb/; same 1,000
images):
- The stamped trigger sends 20 of 20 stop signs to label 1, and 62.5% of 200 other images too (the attack
  has no cover samples), so Neural Cleanse's all-source objective does fit this backdoor partly.
- Pre-screening. With the authors' k = 25% of 43 = 11, their label-specific rule (label j in the top-k of
  >= 90% of one predicted class's images) is passed by 285 (target, victim) pairs covering all 43 labels
  (clean twin: 300): it no longer screens. Label 1 is the runner-up on 21 of the 23 stop signs (third on
  the other 2; clean twin: 14th-25th) but with probability 6e-5, so ranking pairs by summed probability
  (the authors' score) put it behind look-alike classes: the 11 kept arms were speed limits and other
  look-alikes, and target 1's victims were 0, 2 and 13, never 14. Now pairs are ranked by the smallest k
  at which they pass (then by summed probability), and every target at the tightest k is an arm: 12 pairs,
  11 targets at k = 2 on the backdoored model, (1 <- 14) among them (clean twin: 11 pairs, 10 targets).
- Cost start. With check_every 10 and patience 5 the cost weight starts at step 50 of 100: at the end of
  the warm-up every arm's mask still had L1 515-542 of 1,024, so the bandit ranked noise. With 2 checks 5
  apart (this table) it starts by step 10-15.
- Symmetric check, label-specific pairs optimised alone (200 steps): 14 -> 1 forward 12.2 (on 23 stop
  signs), reverse 31.2 (on 64 images predicted 1): ratio 2.6; natural pairs between look-alike signs are
  as small or smaller and as asymmetric: 28 -> 29 5.1 / 4.9 (1.0), 19 -> 23 1.5 / 5.8 (3.9), and on the
  clean twin 0 -> 1 (20 -> 30 km/h) 3.1 / 10.3 (3.3, flagged at the old bound of 3). On 32 x 32 inputs with
  5-25 images per victim class the source-specific trigger is not the smallest label-specific trigger, nor
  the most asymmetric: the symmetric check cannot single it out on this model. A label-specific lead arm is
  now judged at the authors' bound (label_ratio 10).

Result (table below; one run on 2026-11-30, 2 threads, nothing else running: `python benchmarks/run.py karm`,
54 minutes; the first GTSRB rows ran while the host was slower, about 1.4x the later NC times, on both
schedules alike), with K-Arm's screening (models with >= 20 labels: every label's Neural Cleanse problem in
rounds of 30 steps; after each, the third of the labels whose triggers cut to the size bound (the mask's 35
largest pixels) succeed best on 256 clean images not already of the label go on; 2 finalists run to
convergence and are judged by the size rule). The models are those of the previous run (karm-l1-ranking.json),
plus seed 3 of the benchmark's models, trained after the ranking was fixed (`backdoor-arena benchmark --out
runs/leaderboard --datasets gtsrb --seeds 3 --attacks badnets,blended --mitigations fine-tuning --detectors
spectral --executor processes --jobs 2`, stopped once the models existed). K-Arm's time as a fraction of
NC's on the same model: 0.17-0.29 on all 15 (0.17 and 0.20 on MNIST, 0.21-0.29 on GTSRB).

- MNIST at the defaults: same verdict and target on both models (no screening on 10 labels).
- GTSRB stop -> 30 and its clean twin: neither detector flags stop -> 30; NC flags the clean twin (label 25
  at the defaults, label 3 at 100 steps per label), K-Arm clears it.
- The benchmark's GTSRB models: on all seven backdoored ones (BadNets seeds 0-3, blended seeds 0, 2, 3) K-Arm
  names NC's target, label 2, from a finalist. Clean seeds 0 and 1: both clear them. Clean seed 2: both flag
  label 25. Clean seed 3 (held out): NC flags label 12 (anomaly index 2.11), K-Arm clears it. So K-Arm differs
  from NC on three models, each a clean model that NC flags and K-Arm clears.
- The ranking: at step 60, the cut trigger ranked the target first on all seven backdoored models (success
  0.67-1.0, against at most 0.63 for any other label of those models and 0.24-0.49 for any label of the four
  clean benchmark models); mask L1 ranked it first on five, 7th and 3rd on BadNets seeds 2 and 3 (the
  `screen_rounds` in the JSON). The previous run ranked by L1 (karm-l1-ranking.json, code at commit 61ed2c7):
  on BadNets seed 2 the target left after step 60 and K-Arm named label 1.
- Without the screening (results at commit 4b0b303) K-Arm flagged none of the benchmark's backdoored GTSRB
  models. The first screening version (one 30-step pass, then the 2 smallest masks; code at commit 44899d2,
  results in karm-single-pass.json beside this file) missed BadNets seed 1."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import Dataset
from backdoor_arena.defenses.neural_cleanse import NeuralCleanse
from backdoor_arena.modelfile import load_model

REPO = Path(__file__).resolve().parents[1]
DEFAULT_STEPS = NeuralCleanse().steps
CACHE = REPO / "runs" / "abs-karm" / "bench-models"
GTSRB = REPO / "runs" / "results-gtsrb"
LEADERBOARD = REPO / "runs" / "leaderboard" / "models"
# GTSRB models trained by `backdoor-arena benchmark` (other code, seeds and triggers than the stop -> 30 model,
# and all-to-one backdoors that Neural Cleanse's all-source objective is made for)
LEADERBOARD_MODELS = ("gtsrb-badnets-s0", "gtsrb-badnets-s1", "gtsrb-blended-s0", "gtsrb-clean-s0", "gtsrb-clean-s1",
                      # trained after K-Arm's screening was tuned on the five above: held out (s2 then served
                      # to choose the screening's ranking by cut-trigger success)
                      "gtsrb-badnets-s2", "gtsrb-blended-s2", "gtsrb-clean-s2",
                      # trained after that ranking was chosen, and never looked at before it was fixed: held out
                      "gtsrb-badnets-s3", "gtsrb-blended-s3", "gtsrb-clean-s3")

COLUMNS = ["dataset", "setting", "model", "true_target", "schedule", "flagged", "suspected_target", "score", "statistic",
           "lead_arm", "forward_norm", "reverse_norm", "screened_arms", "decided_by",
           "arms", "label_steps", "wall_s", "cpu_s", "time_vs_nc", "cpu_vs_nc", "same_verdict_and_target", "threads",
           "load_1min"]
FORMATS = {"score": ".2f", "forward_norm": ".1f", "reverse_norm": ".1f", "wall_s": ".1f", "cpu_s": ".1f", "time_vs_nc": ".2f", "cpu_vs_nc": ".2f"}


def _lead_arm(details: dict) -> str | None:
    if "lead_target" not in details:
        return None
    if "source" in details:
        return f"{details['lead_target']} <- {details['source']}"
    return f"{details['lead_target']} (global)"


def _screened_arms(details: dict) -> str | None:
    """K-Arm's screened global arms as "target: mask L1" (None where the screening did not run)."""
    arms = details.get("screened_arms")
    return None if arms is None else ", ".join(f"{a['target']}: {a['norm']:.1f}" for a in arms)


def flatten(row: dict) -> dict:
    """The table's columns that come from a row's details (kept in the JSON records)."""
    d = row.get("details", {})
    return {**row, "screened_arms": _screened_arms(d), "decided_by": d.get("decided_by")}


def _mnist_models() -> list[tuple[str, Path, int | None]]:
    from backdoor_arena.api import train_model
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.train import TrainConfig

    CACHE.mkdir(parents=True, exist_ok=True)
    bad, clean = CACHE / "mnist-badnets.safetensors", CACHE / "mnist-clean.safetensors"
    if not (bad.exists() and clean.exists()):
        train = load_dataset("mnist", "train").subset(torch.arange(8000))
        test = load_dataset("mnist", "test").subset(torch.arange(1000))
        cfg = TrainConfig(epochs=2, batch_size=32, progress=False)
        atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.1)
        train_model("badnet-mnist", atk.poison(train, torch.Generator().manual_seed(0)).dataset, test, cfg, bad,
                    atk, "bench")
        train_model("badnet-mnist", train, test, cfg, clean, None, "bench")
    return [("badnets", bad, 7), ("clean", clean, None)]


def _gtsrb_models() -> list[tuple[str, Path, int | None]]:
    bad, clean = GTSRB / "gtsrb-stop30.safetensors", GTSRB / "gtsrb-clean.safetensors"
    if not (bad.exists() and clean.exists()):
        return []
    return [("stop30", bad, _spec_target(bad)), ("clean", clean, None)]


def _gtsrb_leaderboard_models() -> list[tuple[str, Path, int | None]]:
    """The LEADERBOARD_MODELS that `backdoor-arena benchmark` has trained (resumable: seeds may be missing)."""
    paths = [LEADERBOARD / f"{name}.safetensors" for name in LEADERBOARD_MODELS]
    return [(name.removeprefix("gtsrb-"), path, _spec_target(path))
            for name, path in zip(LEADERBOARD_MODELS, paths, strict=True) if path.exists()]


def _spec_target(model_path: Path) -> int | None:
    """The attack's target from the spec beside a model file (NAME.attack.json); None for a clean model."""
    spec = model_path.with_name(model_path.name.removesuffix(".safetensors") + ".attack.json")
    return int(json.loads(spec.read_text())["target"]) if spec.exists() else None


def _clean_set(dataset: str, model_path: Path) -> Dataset:
    """1,000 clean images the models never trained on: MNIST 50,000-50,999 (the bench models trained on the
    first 8,000); GTSRB a seeded draw from the defender's hold-out that the model file records."""
    from backdoor_arena.api.training import defender_clean_set

    train = load_dataset(dataset, "train")
    if dataset == "mnist":
        return train.subset(torch.arange(50000, 51000))
    held, _ = defender_clean_set(load_model(model_path).manifest, train, 0.05, 0)
    return held.subset(torch.randperm(len(held), generator=torch.Generator().manual_seed(0))[:1000])


def run(quick: bool) -> list[dict]:
    records = []
    wanted = os.environ.get("BENCH_KARM_DATASETS", "mnist,gtsrb,gtsrb-defaults,gtsrb-leaderboard").split(",")
    # GTSRB: 100 steps per label (43 labels on one core); the cost weight starts after 2 successful checks
    # 5 steps apart (the K-Arm authors: after 2 successful steps), not 5 checks 10 apart, or it would start
    # half-way and the masks barely shrink (every K-Arm arm at its warm-up's end: L1 515-542 of 1,024)
    # gtsrb-defaults: both at the detector's defaults (300 steps per label, checks 10 apart, patience 5), which
    # is what `detect`/`scan` run: NC's 43 labels take about 5 minutes of 2 cores per model
    settings = [("mnist", "mnist", _mnist_models, {"steps": 60 if quick else 300}),
                ("gtsrb", "gtsrb", _gtsrb_models, {"steps": 20 if quick else 100, "check_every": 5, "patience": 2}),
                ("gtsrb-defaults", "gtsrb", _gtsrb_models, {}),
                ("gtsrb-leaderboard", "gtsrb", _gtsrb_leaderboard_models, {})]
    for key, dataset, find_models, params in settings:
        if key not in wanted or (quick and key in ("gtsrb-defaults", "gtsrb-leaderboard")):
            continue
        models = find_models()
        if not models:
            where = "runs/leaderboard/models" if key == "gtsrb-leaderboard" else "runs/results-gtsrb"
            records.append({"dataset": dataset, "setting": key, "model": f"skipped: no trained models in {where}"})
            continue
        clean = _clean_set(dataset, models[0][1])
        for name, path, target in models:
            model = load_model(path).model
            rows = {}
            for schedule in ("all", "k-arm"):
                load = os.getloadavg()[0]
                started, cpu_started = time.perf_counter(), time.process_time()
                v = NeuralCleanse(**params, schedule=schedule).inspect(model, clean)
                wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
                k = len(v.details["norms"])
                rows[schedule] = {
                    "dataset": dataset, "model": name, "true_target": target, "schedule": schedule,
                    "setting": (", ".join(f"{k} {v}" for k, v in params.items()) or "defaults")
                    + (" (benchmark's model)" if key == "gtsrb-leaderboard" else ""),
                    "flagged": v.flagged, "suspected_target": v.suspected_target, "score": v.score,
                    "statistic": v.details.get("statistic", "anomaly-index"),
                    # K-Arm's lead arm: target <- source (a label-specific lead: its symmetric check's pair, and
                    # the two norms) or "target (global)" (judged by its size)
                    "lead_arm": _lead_arm(v.details),
                    "forward_norm": v.details.get("forward_norm"), "reverse_norm": v.details.get("reverse_norm"),
                    "arms": len(v.details.get("arms", [])) or k,
                    "label_steps": v.details.get("total_steps", k * params.get("steps", DEFAULT_STEPS)), "wall_s": wall, "cpu_s": cpu,
                    "load_1min": f"{load:.1f} -> {os.getloadavg()[0]:.1f}",
                    "threads": torch.get_num_threads(),
                    "details": {key: val for key, val in v.details.items() if key != "params"}}
                rows[schedule] = flatten(rows[schedule])
                print(f"{dataset} {name} {schedule}: {wall:.1f} s, flagged {v.flagged}, target {v.suspected_target}",
                      file=sys.stderr, flush=True)  # progress of a long run
            nc, karm = rows["all"], rows["k-arm"]
            karm["time_vs_nc"] = karm["wall_s"] / nc["wall_s"]
            karm["cpu_vs_nc"] = karm["cpu_s"] / nc["cpu_s"]
            karm["same_verdict_and_target"] = (karm["flagged"] == nc["flagged"]
                                               and karm["suspected_target"] == nc["suspected_target"])
            records += [nc, karm]
    return records
