"""MNTD on MNIST: detection of backdoored models whose trigger families the shadows never saw.

    BACKDOOR_ARENA_DATA=../shared/data BACKDOOR_ARENA_THREADS=1 .venv/bin/python docs/experiments/mntd_mnist.py
    .venv/bin/python docs/tables.py            # re-render the table of docs/detection.md from the records

The defender holds 2,000 images of the 5% clean hold-out of the MNIST training split. The `mntd` detector
(defenses/mntd.py) trains its shadows on them (badnet-mnist, SGD; jumbo triggers of the `mask` and `blend`
families only) and fits its meta-classifier, two-class and one-class. The suspects are badnet-mnist models
trained by the attacker on its own 2,000-image subsets of the rest of the training split, clean or
BadNets-poisoned with families the shadows never saw (square, pattern, hollow-square, x). One record per
(variant, suspect) in docs/records/mntd_mnist.jsonl. Scratch (shadows, meta-models): runs/mntd-rab/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "mntd_mnist.jsonl"
VERB = "mntd-mnist"
FAMILIES = ("square", "pattern", "hollow-square", "x")
POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")
SETTING = {"defender_images": 2000, "suspect_images": 2000, "suspect_epochs": 4, "poison_rate": 0.15,
           "clean_suspects": 8, "backdoored_suspects": 8, "seed": 0}
DETECTOR = {"n_clean": 20, "n_backdoored": 20, "families": ("mask", "blend"), "optimizers": ("sgd",),
            "poison_rates": (0.05, 0.25), "shadow_epochs": 4, "meta_epochs": 30}
VARIANTS = {"two-class": {}, "one-class": {"one_class": True}, "two-class, no query tuning": {"tune_queries": False}}


def run(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    import torch

    from backdoor_arena import api
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.data import load_dataset
    from backdoor_arena.defenses import MODEL_DETECTORS, clean_holdout
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions
    from backdoor_arena.train import TrainConfig, create_model, fit

    api.set_threads(None)
    s = SETTING
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    test = test.subset(torch.arange(2000))
    rest, held = clean_holdout(train, 0.05, s["seed"])
    defender = held.subset(torch.arange(s["defender_images"]))
    suspects = []
    started = time.perf_counter()
    for i in range(s["clean_suspects"] + s["backdoored_suspects"]):
        g = torch.Generator().manual_seed(1000 + i)
        data = rest.subset(torch.randperm(len(rest), generator=g)[: s["suspect_images"]].sort().values)
        entry: dict[str, Any] = {"suspect": f"suspect-{i:02d}", "backdoored": i >= s["clean_suspects"],
                                 "family": "clean"}
        atk = None
        if entry["backdoored"]:
            j = i - s["clean_suspects"]
            entry.update(family=FAMILIES[j % len(FAMILIES)], size=(5, 6)[j // len(FAMILIES) % 2],
                         position=POSITIONS[j % len(POSITIONS)], target=int(torch.randint(10, (), generator=g)))
            atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger=entry["family"],
                              trigger_options={"size": entry["size"], "position": entry["position"]},
                              target=entry["target"], poison_rate=s["poison_rate"], seed=i)
            data = atk.poison(data, torch.Generator().manual_seed(i)).dataset
        model, _ = create_model("badnet-mnist", data.info, 1000 + i)
        fit(model, data, TrainConfig(epochs=s["suspect_epochs"], lr=0.05, seed=1000 + i, progress=False))
        model.eval()
        with torch.no_grad():
            entry["clean_accuracy"] = float((model(test.float_images()).argmax(1) == test.labels).double().mean())
            if atk is not None:
                victims = test.labels != atk.target
                hits = model(atk.apply_trigger(test.float_images()[victims])).argmax(1) == atk.target
                entry["attack_success_rate"] = float(hits.double().mean())
        suspects.append((entry, model))
    print(f"[{time.strftime('%H:%M:%S')}] {len(suspects)} suspects in {time.perf_counter() - started:.0f} s", flush=True)
    command = "BACKDOOR_ARENA_THREADS=1 python docs/experiments/mntd_mnist.py"
    shadow_stats = shadow_quality(MODEL_DETECTORS.create("mntd", cache_dir=args.cache, **DETECTOR), defender, test)
    print(f"[{time.strftime('%H:%M:%S')}] shadows: {shadow_stats}", flush=True)
    records = []
    for variant, extra in VARIANTS.items():
        t0 = time.perf_counter()
        detector = MODEL_DETECTORS.create("mntd", cache_dir=args.cache, **DETECTOR, **extra)
        detector.fit(defender)
        fit_s = time.perf_counter() - t0
        for entry, model in suspects:
            t1 = time.perf_counter()
            v = detector.inspect(model, defender)
            records.append(Record(
                VERB, {"command": command, "setting": s, "detector": {**detector.params(), "cache_dir": None},
                       "variant": variant, "suspect": entry["suspect"]},
                s["seed"],
                {"score": v.score, "flagged": v.flagged, "clean_accuracy": entry["clean_accuracy"],
                 "attack_success_rate": entry.get("attack_success_rate"), "fit_wall_s": round(fit_s, 1),
                 **shadow_stats,
                 "wall_s": round(time.perf_counter() - t1, 4)},
                {"variant": variant, **{k: v for k, v in entry.items() if k not in ("clean_accuracy",
                                                                                     "attack_success_rate")}},
                versions()))
        print(f"[{time.strftime('%H:%M:%S')}] {variant}: fitted in {fit_s:.0f} s", flush=True)
    write_jsonl(RECORDS, records)


def shadow_quality(detector: Any, defender: Any, test: Any) -> dict[str, float]:
    """Median test accuracy of the clean and the backdoored shadows and median ASR of the backdoored ones
    on their own jumbo triggers (shadows that learnt only their target would teach the meta-classifier
    nothing about backdoors)."""
    import statistics

    import torch

    from backdoor_arena.defenses.mntd_shadows import apply_jumbo, build_shadows, shadow_plan

    zoo_key, _ = detector._keys(defender)  # the shadows are trained here (or loaded); the fits below reuse them
    plan = shadow_plan(detector.n_clean, detector.n_backdoored, detector.families, 10, 28, detector.optimizers,
                       detector.seed, detector.poison_rates)
    models = build_shadows(defender, plan, detector.architecture, detector.shadow_epochs, zoo_key,
                           detector.cache_dir / f"shadows-{zoo_key}")
    x = test.float_images()
    acc = {True: [], False: []}
    asr = []
    with torch.no_grad():
        for entry, model in zip(plan, models, strict=True):
            acc[entry["backdoored"]].append(float((model(x).argmax(1) == test.labels).double().mean()))
            if entry["backdoored"]:
                t = entry["trigger"]
                victims = test.labels != t["target"]
                asr.append(float((model(apply_jumbo(x[victims], t)).argmax(1) == t["target"]).double().mean()))
    return {"shadow_clean_accuracy_clean": statistics.median(acc[False]),
            "shadow_clean_accuracy_backdoored": statistics.median(acc[True]), "shadow_asr": statistics.median(asr)}


def render(records: list[dict[str, Any]]) -> str:
    import torch

    from backdoor_arena.detection_metrics import auroc, auroc_bootstrap_ci, tpr_at_fpr

    header = ["variant", "AUROC [95% CI]", "TPR at 5% FPR", "flagged clean", "flagged backdoored",
              "AUROC per family (vs all clean)", "meta-model fit (shadows cached)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in VARIANTS:
        rows = [r for r in records if r["variant"] == variant]
        if not rows:
            continue
        y = torch.tensor([r["backdoored"] for r in rows], dtype=torch.long)
        sc = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
        lo, hi = auroc_bootstrap_ci(y, sc, 2000, 0, 0.95)
        clean = [r for r in rows if not r["backdoored"]]
        bad = [r for r in rows if r["backdoored"]]
        fams = []
        for fam in FAMILIES:
            sub = clean + [r for r in bad if r["family"] == fam]
            yy = torch.tensor([r["backdoored"] for r in sub], dtype=torch.long)
            fams.append(f"{fam} {auroc(yy, torch.tensor([r['score'] for r in sub], dtype=torch.float64)):.2f} "
                        f"(n={len(sub) - len(clean)})")
        lines.append(f"| {variant} | {auroc(y, sc):.3f} [{lo:.3f}, {hi:.3f}] | {tpr_at_fpr(y, sc, 0.05):.3f} | "
                     f"{sum(r['flagged'] for r in clean)}/{len(clean)} | {sum(r['flagged'] for r in bad)}/{len(bad)} | "
                     f"{'; '.join(fams)} | {rows[0]['fit_wall_s']:.0f} s |")
    bad = [r for r in records if r["backdoored"] and r["variant"] == "two-class"]
    clean = [r for r in records if not r["backdoored"] and r["variant"] == "two-class"]
    d, s = records[0]["config"]["detector"], records[0]["config"]["setting"]
    scope = (f"\nScope: {len(clean)} clean and {len(bad)} backdoored badnet-mnist suspects (SGD 0.05, "
             f"{s['suspect_epochs']} epochs on their own {s['suspect_images']:,}-image subsets; BadNets all-to-one, "
             f"{100 * s['poison_rate']:g}% poisoning, sizes 5-6 at the corners, random targets; ASR "
             f"{min(r['attack_success_rate'] for r in bad):.3f}-{max(r['attack_success_rate'] for r in bad):.3f}, "
             f"clean accuracy {min(r['clean_accuracy'] for r in bad + clean):.3f}-"
             f"{max(r['clean_accuracy'] for r in bad + clean):.3f} on 2,000 test images). Shadows: "
             f"{d['n_clean']} clean + {d['n_backdoored']} jumbo ({', '.join(d['families'])} only; the one-class "
             f"variant uses the clean ones), {d['shadow_epochs']} epochs on the defender's "
             f"{s['defender_images']:,} hold-out images, poisoning rates in {d['poison_rates']}; median test "
             f"accuracy {records[0]['shadow_clean_accuracy_clean']:.3f} (clean shadows) and "
             f"{records[0]['shadow_clean_accuracy_backdoored']:.3f} (backdoored), median ASR "
             f"{records[0]['shadow_asr']:.3f} on their own triggers; {d['n_queries']} queries, {d['meta_epochs']} "
             "meta-epochs; "
             f"seed 0. The interval is a stratified bootstrap over the suspects (2,000 replicates); with "
             f"{len(clean) + len(bad)} models it is wide.\n")
    cmds = sorted({r["config"]["command"] for r in records})
    return "\n".join(lines) + "\n" + scope + "".join(f"\nMade by `{c}`.\n" for c in cmds)


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"mntd-mnist": (RECORDS.name, render)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("runs/mntd-rab/mntd-cache"))
    run(parser.parse_args())
