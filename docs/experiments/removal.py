"""The tables of docs/removal-defenses.md, from records: runs the `backdoor-arena` commands the page shows and
writes one Record per result in docs/records/removal.jsonl; docs/tables.py renders the page's tables from them,
and this script redraws docs/figures/removal/*.png from the same records.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/removal.py \
        [--runs runs/removal] [--gtsrb-model runs/results-gtsrb/gtsrb-stop30.safetensors]
    .venv/bin/python docs/experiments/removal.py --figures-only     # redraw the figures from the records

1. The models: `train` (MNIST clean) and `attack badnets` (MNIST, 3x3 pattern -> 7, 10%), 4 epochs, seed 0; the
   GTSRB stop sign -> speed limit 30 model is the one docs/experiments/results_gtsrb.py trains (the same command,
   results_gtsrb.GTSRB_ATTACK; trained here when that file is missing). The CLI defaults keep the defenders' 5%
   hold-out of the training split out of training; the defenses draw their clean set from it.
2. `defend compare --gtsrb --dp-epochs 2` on them: pruning, fine-tuning and fine-pruning on MNIST BadNets, the
   pruning-aware attack (trained by the command from the clean model) and GTSRB; DP-SGD training on the MNIST
   poisoned data.
3. The follow-up: `defend fine-pruning --lr 0.05` and `defend nc-unlearning` on the models fine-pruning left
   backdoored (what docs/removal-followup.sh ran).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "removal.jsonl"
FIGURES = DOCS / "figures" / "removal"
VERB = "removal"
MNIST = "--dataset mnist --model badnet-mnist --epochs 4 --seed 0"
MODELS = {  # name -> command after `backdoor-arena` (as in docs/records/results_mnist.jsonl)
    "mnist-clean": f"train {MNIST}",
    "mnist-a2o-pattern": f"attack badnets {MNIST} --target 7 --trigger pattern --poison-rate 0.1",
}
COMPARE = "defend compare --out {R}/removal-report --gtsrb --mnist-model {R}/mnist-a2o-pattern.safetensors " \
          "--mnist-clean-model {R}/mnist-clean.safetensors --gtsrb-model {G}.safetensors --dp-epochs 2"
PA = "{R}/removal-report/models/mnist-pruning-aware"
FOLLOW_UP = [  # (name, model, label, note, command after `backdoor-arena`, without --out/--json)
    ("pa-fine-pruning-lr0.05", "mnist-pruning-aware", "fine-pruning, lr 0.05", "5x the fine-tuning rate",
     f"defend fine-pruning {PA}.safetensors --attack-spec {PA}.attack.json --lr 0.05"),
    ("pa-nc-unlearning", "mnist-pruning-aware", "nc-unlearning", "",
     f"defend nc-unlearning {PA}.safetensors --attack-spec {PA}.attack.json "
     """--detector '{{"steps": 200, "batch_size": 16}}'"""),
    ("gtsrb-fine-pruning-lr0.05", "gtsrb-stop30", "fine-pruning, lr 0.05", "5x the fine-tuning rate",
     "defend fine-pruning {G}.safetensors --attack-spec {G}.attack.json --lr 0.05"),
    ("gtsrb-nc-unlearning", "gtsrb-stop30", "nc-unlearning (100 steps)", "",
     "defend nc-unlearning {G}.safetensors --attack-spec {G}.attack.json "
     """--detector '{{"steps": 100, "batch_size": 16}}'"""),
]
REMOVED = 0.05     # ASR below this after a defense: the backdoor is removed (the verdict rule of the claims table)
BAR = (0.10, 2.0)  # the bar for fine-pruning: ASR < 10% for at most 2 points of clean accuracy


# --------------------------------------------------------------------------- running
def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _cli(args: str) -> tuple[dict[str, Any], float, float, float]:
    """Runs `backdoor-arena ARGS` (it prints one JSON object); returns (that object, wall s, load before, after)."""
    exe = Path(sys.executable).with_name("backdoor-arena")
    load = _load()
    started = time.perf_counter()
    r = subprocess.run([str(exe), *shlex.split(args)], capture_output=True, text=True, check=False)
    wall = round(time.perf_counter() - started, 1)
    if r.returncode:
        raise SystemExit(f"backdoor-arena {args} failed: {r.stderr.strip()}")
    print(f"[{time.strftime('%H:%M:%S')}] {wall:.0f} s: backdoor-arena {args}", flush=True)
    return json.loads(r.stdout), wall, load, _load()


def _results_gtsrb() -> Any:
    path = Path(__file__).with_name("results_gtsrb.py")
    spec = importlib.util.spec_from_file_location("docs_experiment_results_gtsrb", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}


def _eligible(model: Path, spec: Path) -> int:
    """How many test inputs the spec's trigger applies to (the ASR's denominator)."""
    from backdoor_arena.api.training import spec_for_model
    from backdoor_arena.data import load_dataset
    from backdoor_arena.modelfile import load_model

    m = load_model(model).manifest
    return int(spec_for_model(spec, m).eligible(load_dataset(m.dataset, "test").labels).sum())


def run(runs: Path, gtsrb_model: Path, wait: bool = False) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.records import Record, read_jsonl, write_jsonl
    from backdoor_arena.runtime import versions

    runs.mkdir(parents=True, exist_ok=True)
    R = str(runs)

    def shown(command: str) -> str:  # the command as the page prints it (paths relative to the repository)
        return "backdoor-arena " + command

    records: list[Record] = []
    made: dict[str, str] = {}
    for name, command in MODELS.items():
        r, wall, l0, l1 = _cli(f"{command} --out {R}/{name}.safetensors --quiet --json --overwrite")
        made[name] = f"backdoor-arena {command}"
        records.append(Record(VERB, {"command": made[name]}, 0,
                              {k: r.get(k) for k in ("clean_accuracy", "attack_success_rate")} | {"wall_s": wall},
                              {"kind": "model", "model": name, "load_1m_before": l0, "load_1m_after": l1}, versions()))
    rg = _results_gtsrb()
    spec_file = gtsrb_model.with_name(gtsrb_model.name.removesuffix(".safetensors") + ".attack.json")
    while wait and not spec_file.is_file():  # results_gtsrb.py is training it (the spec is written last)
        time.sleep(30)
    if wait:
        time.sleep(10)  # let the writer finish the spec
    if not gtsrb_model.is_file():
        gtsrb_model = runs / "gtsrb-stop30.safetensors"
        r, wall, l0, l1 = _cli(f"{rg.GTSRB_ATTACK} --out {gtsrb_model} --quiet --json --overwrite")
        records.append(Record(VERB, {"command": f"backdoor-arena {rg.GTSRB_ATTACK}"}, 0,
                              {k: r.get(k) for k in ("clean_accuracy", "attack_success_rate")} | {"wall_s": wall},
                              {"kind": "model", "model": "gtsrb-stop30", "load_1m_before": l0, "load_1m_after": l1},
                              versions()))
    made["gtsrb-stop30"] = f"backdoor-arena {rg.GTSRB_ATTACK}"
    G = str(gtsrb_model.with_suffix(""))
    _check_gtsrb(gtsrb_model)

    # the comparison
    command = COMPARE.format(R=R, G=G)
    summary, wall, l0, l1 = _cli(f"{command} --quiet --json --overwrite")
    settings = {k: v for k, v in summary["config"].items() if k != "models"}
    config = {"command": shown(command), "settings": settings, "models": made}
    specs = {"mnist-badnets": (f"{R}/mnist-a2o-pattern.safetensors", f"{R}/mnist-a2o-pattern.attack.json"),
             "mnist-pruning-aware": (f"{PA.format(R=R)}.safetensors", f"{PA.format(R=R)}.attack.json"),
             "mnist-badnets-dp-sgd": (f"{R}/removal-report/models/mnist-badnets-dp-sgd.safetensors",
                                      f"{R}/removal-report/models/mnist-badnets-dp-sgd.attack.json"),
             "gtsrb-stop30": (f"{G}.safetensors", f"{G}.attack.json")}
    eligible = {k: _eligible(Path(m), Path(s)) for k, (m, s) in specs.items()}
    ma = json.loads(Path(specs["mnist-pruning-aware"][1]).read_text())["model_attack"]
    attacker = {"channels": ma["channels"], "pruned": len(ma["pruned_channels"]), "fraction_pruned": ma["fraction_pruned"],
                "clean_samples": ma["clean_samples"], "max_accuracy_drop": ma["max_accuracy_drop"]}
    records.append(Record(VERB, config, settings["seed"], {"wall_s": wall},
                          {"kind": "command", "compare_wall_s": round(summary["wall_time_s"], 1),
                           "pruning_aware_attacker": attacker, "load_1m_before": l0, "load_1m_after": l1},
                          versions()))
    for row in summary["rows"]:
        metrics = {k: row.get(k) for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}
        subject = {"kind": "result", "model": row["model"], "defense": row["defense"],
                   "clean_drop_points": row["clean_drop_points"], "fraction_pruned": row.get("fraction_pruned"),
                   "epsilon": row.get("epsilon"), "eligible_test_inputs": eligible[row["model"]]}
        records.append(Record(VERB, config, settings["seed"], metrics | {"wall_s": row["wall_time_s"]}, subject,
                              versions()))
    curves: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in read_jsonl(runs / "removal-report" / "records.jsonl"):
        if c.get("kind") == "curve":
            point = {k: v for k, v in c.items() if k not in ("verb", "run_id", "seed", "config", "versions", "kind",
                                                             "scenario", "model", "defense")}
            curves.setdefault((c["model"], c["defense"]), []).append(_rounded(point))
    for (model, defense), points in curves.items():
        records.append(Record(VERB, config, settings["seed"], {},
                              {"kind": "curve", "model": model, "defense": defense, "points": points}, versions()))

    # the follow-up
    before = {(r.subject["model"]): r.metrics for r in records if r.subject.get("defense") == "none"}
    for name, model, label, note, command in FOLLOW_UP:
        command = command.format(R=R, G=G)
        out = runs / "followup" / f"{name}.safetensors"
        out.parent.mkdir(parents=True, exist_ok=True)
        r, wall, l0, l1 = _cli(f"{command} --out {out} --json --quiet --overwrite")
        extra: dict[str, Any] = {}
        if "nc-unlearning" in label:
            from backdoor_arena.modelfile import load_model

            details = load_model(out).manifest.training["defense"]["details"]
            extra = {"suspected_target": details["label"],
                     "true_target": json.loads(Path(specs[model][1]).read_text())["target"]}
        if abs(r["before"]["clean_accuracy"] - before[model]["clean_accuracy"]) > 1e-6:
            print(f"warning: {name} starts from clean accuracy {r['before']['clean_accuracy']}, the comparison's "
                  f"{model} from {before[model]['clean_accuracy']}", flush=True)
        records.append(Record(
            VERB, {"command": shown(command), "params": r["params"], "clean_samples": r["clean_samples"]}, 0,
            {**r["after"], "wall_s": r["wall_time_s"]},
            {"kind": "follow-up", "name": name, "model": model, "defense": label, "note": note,
             "before_clean_accuracy": r["before"]["clean_accuracy"],
             "before_attack_success_rate": r["before"]["attack_success_rate"],
             "clean_drop_points": 100 * (r["after"]["clean_accuracy"] - r["before"]["clean_accuracy"]),
             "fraction_pruned": r.get("fraction_pruned"), "eligible_test_inputs": eligible[model],
             "command_wall_s": wall, "load_1m_before": l0, "load_1m_after": l1, **extra},
            versions()))
    write_jsonl(RECORDS, records)
    draw(read_jsonl(RECORDS))


def _check_gtsrb(path: Path) -> None:
    """The reused GTSRB model was made by results_gtsrb.GTSRB_ATTACK (its manifest and spec say so)."""
    from backdoor_arena.modelfile import load_model

    t = load_model(path).manifest.training
    spec = json.loads(path.with_name(path.name.removesuffix(".safetensors") + ".attack.json").read_text())
    c = t["config"]
    got = (c["dataset"], c["architecture"], c["epochs"], c["seed"], c["weight_decay"], spec["mode"], spec["sources"],
           spec["target"], spec["poison_rate"], t.get("defender_holdout", {}).get("fraction"))
    want = ("gtsrb", "gtsrb-cnn", 5, 0, 0.0005, "source-specific", [14], 1, 0.0199, 0.05)
    if got != want:
        raise SystemExit(f"{path} was not made by the command results_gtsrb.py shows: {got} != {want}")


def draw(records: list[dict[str, Any]]) -> None:
    """docs/figures/removal/{prune-curves,finetune-curves,summary}.png from the records."""
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.report import plot_comparison

    rows = [r for r in records if r["kind"] == "result"]
    curves = [{"model": r["model"], "defense": r["defense"], **p} for r in records if r["kind"] == "curve"
              for p in r["points"]]
    FIGURES.mkdir(parents=True, exist_ok=True)
    plot_comparison(FIGURES, rows, curves)


# --------------------------------------------------------------------------- rendering
def _p(x: float | None, digits: int = 2) -> str:
    return "" if x is None else f"{100 * x:.{digits}f}%"


def _ci(r: dict[str, Any]) -> str:
    """ASR with its 95% Clopper-Pearson interval over the triggered test inputs (one seed: test sampling only)."""
    from backdoor_arena.detection_metrics import clopper_pearson_interval

    asr, n = r.get("attack_success_rate"), r.get("eligible_test_inputs")
    if asr is None or not n:
        return _p(asr)
    lo, hi = clopper_pearson_interval(round(asr * n), n)
    return f"{_p(asr)} [{100 * lo:.1f}, {100 * hi:.1f}]"


DP_BASE = "mnist-badnets"  # DP-SGD is trained on this model's poisoned data: its accuracy cost is against it


def _drop(r: dict[str, Any], records: list[dict]) -> float:
    """Clean-accuracy change in points against the undefended model (for DP-SGD: the non-private one)."""
    if r["defense"] == "DP-SGD training":
        base = next(b for b in records if b["kind"] == "result" and b["model"] == DP_BASE and b["defense"] == "none")
        return 100 * (r["clean_accuracy"] - base["clean_accuracy"])
    return r["clean_drop_points"]


def _meets(r: dict[str, Any], records: list[dict]) -> bool:
    return r["defense"] != "none" and r["attack_success_rate"] < REMOVED and _drop(r, records) >= -BAR[1]


def _cell(text: str, bold: bool) -> str:
    return f"**{text}**" if bold and text else text


def _by(records: list[dict], kind: str) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["defense"]): r for r in records if r["kind"] == kind}


def render_main(records: list[dict]) -> str:
    lines = ["| model | defense | clean acc. | ASR [95% CI] | clean drop (points) | fraction pruned | epsilon | wall time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in records if r["kind"] == "result"):
        b = _meets(r, records)
        dp = r["defense"] == "DP-SGD training"
        cells = [r["model"], _cell(r["defense"], b), _cell(_p(r["clean_accuracy"]), b), _cell(_ci(r), b),
                 _cell(f"{_drop(r, records):+.2f}", b) + ("¹" if dp else ""),
                 "" if r["fraction_pruned"] is None else f"{r['fraction_pruned']:.3f}",
                 "" if r["epsilon"] is None else f"{r['epsilon']:.2f}", f"{r['wall_s']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    cmd = next(r for r in records if r["kind"] == "command")
    models = cmd["config"]["models"]
    return ("\n".join(lines) + "\n\n"
            f"¹ against the non-private {DP_BASE} model, trained on the same poisoned data.\n\n"
            f"Bold: ASR below {100 * REMOVED:.0f}% for at most {BAR[1]:.0f} points of clean accuracy. One seed (0); the "
            "interval is over the test inputs the trigger applies to only. "
            f"The command took {cmd['wall_s']:.0f} s (1-minute load average {cmd['load_1m_before']:.2f} before, "
            f"{cmd['load_1m_after']:.2f} after, on 2 cores). The models it was given were made by:\n\n"
            + "".join(f"- {name}: `{command}`\n" for name, command in models.items())
            + f"\nMade by `{cmd['config']['command']}`.\n")


def render_followup(records: list[dict]) -> str:
    lines = ["| model | defense | clean acc. | ASR [95% CI] | clean drop (points) | note | wall time |",
             "|---|---|---|---|---|---|---|"]
    rows = [r for r in records if r["kind"] == "follow-up"]
    for r in rows:
        b = _meets(r, records)
        note = r["note"]
        if "suspected_target" in r:
            right = r["suspected_target"] == r["true_target"]
            note = f"suspected target {r['suspected_target']} ({'right' if right else 'wrong: true ' + str(r['true_target'])})"
        elif r["attack_success_rate"] >= REMOVED:
            note += f": ASR still {100 * r['attack_success_rate']:.0f}%"
        cells = [r["model"], _cell(r["defense"], b), _cell(_p(r["clean_accuracy"]), b), _cell(_ci(r), b),
                 _cell(f"{r['clean_drop_points']:+.2f}", b), note, f"{r['wall_s']:.1f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + "".join(f"\nMade by `{r['config']['command']}`.\n" for r in rows)


def render_claims(records: list[dict]) -> str:
    res = _by(records, "result")
    fu = {(r["model"], r["defense"]): r for r in records if r["kind"] == "follow-up"}
    mb, pa, g = "mnist-badnets", "mnist-pruning-aware", "gtsrb-stop30"

    def removed(r: dict) -> bool:
        return r["attack_success_rate"] < REMOVED

    def verdict(r: dict, claim_removed: bool, where: str = "") -> str:
        ok = removed(r) == claim_removed
        return ("reproduced" if ok else "**not reproduced**") + (f" {where}" if where else "")

    def asr(model: str, defense: str) -> str:
        return _p(res[(model, defense)]["attack_success_rate"])

    def drop(r: dict) -> str:
        return f"{r['clean_drop_points']:+.2f} points"

    s = res[(mb, "none")]["config"]["settings"]
    ft = f"{s['tune_epochs']} epochs at lr {s['tune_lr']}"
    dp = res[("mnist-badnets-dp-sgd", "DP-SGD training")]
    fp_mb, fp_g, fp_pa = res[(mb, "fine-pruning")], res[(g, "fine-pruning")], res[(pa, "fine-pruning")]
    bar_met = fp_mb["attack_success_rate"] < BAR[0] and fp_mb["clean_drop_points"] >= -BAR[1]
    rows = [
        ("Fine-tuning alone does not remove a backdoor (Liu et al. §3.2)",
         f"ASR {asr(mb, 'none')} -> {asr(mb, 'fine-tuning')} (MNIST), {asr(g, 'none')} -> {asr(g, 'fine-tuning')} "
         f"(GTSRB) after {ft}",
         verdict(res[(mb, "fine-tuning")], False, "on MNIST") + "; " + verdict(res[(g, "fine-tuning")], False, "on GTSRB")),
        ("Pruning by activation removes a baseline BadNets backdoor (§3.1)",
         f"MNIST: ASR -> {asr(mb, 'pruning')} with {100 * res[(mb, 'pruning')]['fraction_pruned']:.1f}% of the "
         f"last-conv channels pruned, {drop(res[(mb, 'pruning')])}",
         verdict(res[(mb, "pruning")], True, "on MNIST")),
        ("",
         f"GTSRB: ASR -> {asr(g, 'pruning')} with {100 * res[(g, 'pruning')]['fraction_pruned']:.1f}% pruned, "
         f"{drop(res[(g, 'pruning')])} on the test split",
         verdict(res[(g, "pruning")], True, "on GTSRB")),
        ("Fine-pruning is better than either alone: \"in some cases reduces the attack success rate to 0% with "
         "only a 0.4% drop in accuracy\"",
         f"MNIST: ASR {asr(mb, 'fine-pruning')} at {drop(fp_mb)}",
         verdict(fp_mb, True, "on MNIST") + f"; the issue's bar (ASR < {100 * BAR[0]:.0f}% at <= {BAR[1]:.0f} points "
         f"with 5% clean data) is {'met' if bar_met else '**not met**'}"),
        ("", f"GTSRB: ASR {asr(g, 'fine-pruning')} at {drop(fp_g)}", verdict(fp_g, True, "on GTSRB")),
        ("The pruning-aware attack defeats pruning (§4)",
         f"ASR {asr(pa, 'pruning')} after pruning {100 * res[(pa, 'pruning')]['fraction_pruned']:.1f}% of the channels",
         verdict(res[(pa, "pruning")], False)),
        ("...but not fine-pruning",
         f"ASR {asr(pa, 'fine-pruning')} after fine-pruning ({ft}, {fu[(pa, 'nc-unlearning')]['config']['clean_samples']:,} "
         "clean images)",
         verdict(fp_pa, True) + ("; see the follow-up rows" if not removed(fp_pa) else "")),
        ("DP-SGD blunts poisoning at some cost in accuracy (Hong et al. 2020)",
         f"ASR {asr(mb, 'none')} -> {_p(dp['attack_success_rate'])}, clean {_p(res[(mb, 'none')]['clean_accuracy'])} "
         f"-> {_p(dp['clean_accuracy'])} (epsilon {dp['epsilon']:.1f} at delta 1e-5; clip {s['dp_clip']:g}, "
         f"noise {s['dp_noise']:g}, {s['dp_epochs']} epochs, batch {s['dp_batch_size']})",
         verdict(dp, True)),
    ]
    return ("| claim (paper) | measured here | verdict |\n|---|---|---|\n"
            + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
            + f"\nVerdict rule: a defense removes the backdoor when the ASR after it is below {100 * REMOVED:.0f}%; a "
              "claim is reproduced when the measurement agrees with it on that count. One seed (0).\n")


def render_prune_curves(records: list[dict]) -> str:
    """The points of each pruning curve that the page's prose discusses."""
    lines = ["| model | channels | stop (4-point rule) | defender's clean set acc. at 0 → stop | test acc. at stop¹ | "
             "last point with ASR ≥ 90% (test acc.¹ there) | first point with ASR < 10% (test acc.¹ there) |",
             "|---|---|---|---|---|---|---|"]
    res = _by(records, "result")
    for r in (r for r in records if r["kind"] == "curve" and r["defense"] == "pruning"):
        pts = r["points"]
        stop = res[(r["model"], "pruning")]["fraction_pruned"]
        at = next(p for p in pts if abs(p["fraction_pruned"] - stop) < 1e-4)
        high = [p for p in pts if p["attack_success_rate"] >= 0.9]
        low = next((p for p in pts if p["attack_success_rate"] < 0.1), None)
        channels = round(pts[-1]["pruned"] / pts[-1]["fraction_pruned"])
        lines.append(
            f"| {r['model']} | {channels} | {100 * stop:.1f}% pruned ({round(stop * channels)} channels) | {_p(pts[0]['holdout_accuracy'], 1)} → "
            f"{_p(at['holdout_accuracy'], 1)} | {_p(at['clean_accuracy'], 1)} | "
            + (f"{100 * high[-1]['fraction_pruned']:.1f}% pruned (ASR {_p(high[-1]['attack_success_rate'], 1)}; "
               f"{_p(high[-1]['clean_accuracy'], 1)})" if high else "none")
            + " | " + (f"{100 * low['fraction_pruned']:.1f}% pruned ({_p(low['clean_accuracy'], 1)})" if low else "none")
            + " |")
    s = next(r for r in records if r["kind"] == "command")["config"]["settings"]
    n = s["curve_samples"]
    few = [f"{r['eligible_test_inputs']:,} on {m}" for (m, d), r in res.items()
           if d in ("none", "DP-SGD training") and r["eligible_test_inputs"] <= n]
    a = next(r for r in records if r["kind"] == "command")["pruning_aware_attacker"]
    return ("\n".join(lines) + f"\n\n¹ along the curves the evaluator measures on a seeded subset of {n:,} test "
            f"images and at most {n:,} triggered ones" + (f" (all of them: {', '.join(few)})" if few else "")
            + "; the tables above use the whole test split.\n\n"
            f"The pruning-aware attacker's own pruning ({100 * a['max_accuracy_drop']:.0f}-point rule on "
            f"{a['clean_samples']:,} of its training images) removed {a['pruned']} of the {a['channels']} channels; it "
            f"trained the backdoor into the {a['channels'] - a['pruned']} it kept and restored the {a['pruned']} as "
            "decoys, dormant on clean data.\n")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"removal-main": (RECORDS.name, render_main), "removal-followup": (RECORDS.name, render_followup),
            "removal-claims": (RECORDS.name, render_claims), "removal-prune-curves": (RECORDS.name, render_prune_curves)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/removal"))
    parser.add_argument("--gtsrb-model", type=Path, default=Path("runs/results-gtsrb/gtsrb-stop30.safetensors"))
    parser.add_argument("--wait", action="store_true",
                        help="wait for --gtsrb-model (and its spec) to appear: results_gtsrb.py is training it")
    parser.add_argument("--figures-only", action="store_true", help="redraw the figures from the records only")
    args = parser.parse_args()
    if args.figures_only:
        sys.path.insert(0, str(DOCS.parent / "src"))
        from backdoor_arena.records import read_jsonl

        draw(read_jsonl(RECORDS))
    else:
        run(args.runs, args.gtsrb_model, args.wait)
