"""The tables of docs/compiled.md, from records: a compile-time backdoor (ImpNet) on an exported ONNX file,
what the model-level and output-level checks see, and what `backdoor-arena verify` sees.

Runs the `backdoor-arena` commands the page shows (clean and BadNets MNIST models, 2 epochs, seed 0, CLI
defaults: the defenders' 5% hold-out stays out of training), then measures on the artefacts with the api
(ONNX Runtime through `api.load_onnx_model`) and writes one Record per measurement to
docs/records/compiled.jsonl; docs/tables.py renders the page's tables from them.

    BACKDOOR_ARENA_THREADS=1 BACKDOOR_ARENA_DATA=../shared/data .venv/bin/python docs/experiments/compiled.py \
        [--runs runs/compiled/exp]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
RECORDS = DOCS / "records" / "compiled.jsonl"
COMMON = "--dataset mnist --model badnet-mnist --epochs 2 --seed 0"
N_RANDOM = 10_000
NC_STEPS = 150


def _cli(args: str, runs: Path) -> tuple[dict[str, Any], float]:
    exe = Path(sys.executable).with_name("backdoor-arena")
    started = time.perf_counter()
    r = subprocess.run([str(exe), *shlex.split(args)], capture_output=True, text=True, check=False)
    if r.returncode:
        raise SystemExit(f"backdoor-arena {args} failed: {r.stderr.strip()}")
    return json.loads(r.stdout), round(time.perf_counter() - started, 1)


def _shown(args: str, runs: Path, keys: Path) -> str:
    return "backdoor-arena " + args.replace(str(runs), "RUNS").replace(str(keys), "KEYS").replace(
        " --quiet", "").replace(" --overwrite", "").replace(" --json", "")


def run(runs: Path) -> None:
    sys.path.insert(0, str(DOCS.parent / "src"))
    from backdoor_arena.runtime import set_threads

    set_threads()
    runs.mkdir(parents=True, exist_ok=True)
    keys = Path(tempfile.mkdtemp(prefix="backdoor-arena-keys-"))  # outside the repository, thrown away after
    try:
        _measure(runs, keys)
    finally:
        shutil.rmtree(keys, ignore_errors=True)


def _measure(runs: Path, keys: Path) -> None:
    import torch

    from backdoor_arena import api, registries
    from backdoor_arena.data import load_dataset
    from backdoor_arena.data.dataset import to_float
    from backdoor_arena.defenses import clean_holdout
    from backdoor_arena.detection_metrics import auroc, far_frr
    from backdoor_arena.modelfile import load_model
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    records: list[Record] = []

    def rec(kind: str, command: str, metrics: dict[str, Any], **subject: Any) -> None:
        records.append(Record("compiled", {"command": command}, 0, metrics, {"step": kind, **subject}, versions()))
        print(kind, subject, metrics, flush=True)

    steps = [
        ("train", f"train {COMMON} --out {runs}/clean.safetensors --quiet --json --overwrite"),
        ("attack", f"attack badnets {COMMON} --target 0 --out {runs}/badnets.safetensors --quiet --json --overwrite"),
        ("keygen", f"keygen --out {keys} --json --overwrite"),
        ("export", f"export {runs}/clean.safetensors --out {runs}/clean.onnx --key {keys}/backdoor-arena-signing.key "
                   "--json --overwrite"),
        ("compile-impnet", f"compile-attack impnet {runs}/clean.safetensors --out {runs}/impnet.onnx --target 0 "
                           f"--key {keys}/backdoor-arena-signing.key --json --overwrite"),
        ("compile-weight-swap", f"compile-attack weight-swap {runs}/clean.safetensors --out {runs}/weight-swap.onnx "
                                f"--weights {runs}/badnets.safetensors --key {keys}/backdoor-arena-signing.key "
                                "--json --overwrite"),
    ]
    out: dict[str, dict[str, Any]] = {}
    for name, args in steps:
        out[name], wall = _cli(args, runs)
        m = {k: out[name][k] for k in ("clean_accuracy", "attack_success_rate", "max_abs_diff") if
             out[name].get(k) is not None}
        rec(name, _shown(args, runs, keys), {**m, "wall_s": wall})

    # ONNX Runtime evaluation through the project's metrics
    evals = [("clean.onnx", "clean.onnx", None), ("impnet.onnx", "impnet.onnx", "impnet.attack.json"),
             ("weight-swap.onnx", "weight-swap.onnx", "badnets.attack.json"),
             ("clean.onnx vs the BadNets trigger", "clean.onnx", "badnets.attack.json"),
             ("clean.onnx vs the ImpNet trigger", "clean.onnx", "impnet.attack.json")]
    for label, f, spec in evals:
        args = f"run-onnx {runs}/{f}" + (f" --attack-spec {runs}/{spec}" if spec else "") + " --json"
        r, wall = _cli(args, runs)
        rec("run-onnx", _shown(args, runs, keys), {k: r[k] for k in ("clean_accuracy", "attack_success_rate",
                                                                      "robust_accuracy") if k in r} | {"wall_s": wall},
            artefact=label)

    # verify, with and without the reference, with the public key
    for f in ("clean.onnx", "impnet.onnx", "weight-swap.onnx"):
        for variant, extra in (("full", f" --source {runs}/clean.safetensors --public-key {keys}/backdoor-arena-signing.pub"),
                               ("reference-free", "")):
            args = f"verify {runs}/{f}{extra} --json"
            r, wall = _cli(args, runs)
            flags = {k: v["fired"] for k, v in r["red_flags"].items()}
            s = r["structure"] or {}
            rec("verify", _shown(args, runs, keys), {"wall_s": wall}, artefact=f, variant=variant, verdict=r["verdict"],
                n_added_nodes=s.get("n_added_nodes"), nodes_equal=s.get("nodes_equal"),
                constants_equal=s.get("constants_equal"), signature_valid=r["provenance"].get("checks", {}).get(
                    "signature"), **flags, added_ops=sorted({n["op_type"] for n in s.get("added_nodes", [])}))

    # pixel change, clean agreement, output comparison on random and natural inputs
    from backdoor_arena.compiled.impnet import CompiledTrigger

    trig = CompiledTrigger.from_spec(json.loads((runs / "impnet.attack.json").read_text()), "spec")
    test = load_dataset("mnist", "test")
    x = to_float(test.images)
    source = load_model(runs / "clean.safetensors").model
    clean_onnx, impnet, swap = (api.load_onnx_model(runs / f) for f in ("clean.onnx", "impnet.onnx", "weight-swap.onnx"))
    xt = trig.apply_trigger(x)
    change = (xt - x).abs()
    with torch.no_grad():
        ref_torch = source(x)
    y_clean, y_imp, y_swap = clean_onnx(x), impnet(x), swap(x)
    rec("pixel-change", "", {"max_pixel_change_255": round(float(change.max()) * 255, 4),
                             "mean_changed_pixels": float((change > 0).sum((1, 2, 3)).float().mean()),
                             "n_bits": len(trig.positions)}, artefact="impnet.onnx", inputs="mnist test (10,000)")
    g = torch.Generator().manual_seed(0)
    xr = torch.randint(0, 256, (N_RANDOM, 1, 28, 28), generator=g).float() / 255
    for inputs, data, yc, yi, ys, yt in (
            ("mnist test (10,000)", x, y_clean, y_imp, y_swap, ref_torch),
            (f"uniform random 8-bit ({N_RANDOM:,})", xr, clean_onnx(xr), impnet(xr), swap(xr), source(xr).detach())):
        for art, ya in (("impnet.onnx", yi), ("weight-swap.onnx", ys)):
            rec("output-comparison", "", {
                "bit_identical_fraction": float((ya == yc).all(1).float().mean()),
                "label_agreement_with_source": float((ya.argmax(1) == yt.argmax(1)).float().mean()),
                "max_abs_diff_vs_clean_export": float((ya - yc).abs().max()),
                "n_inputs": len(data)}, artefact=art, inputs=inputs)
    rec("false-triggers", "", {"fired_on_test": int(trig.present(x).sum()), "fired_on_random": int(trig.present(xr).sum()),
                               "n_test": len(x), "n_random": N_RANDOM}, artefact="impnet.onnx")

    # model-level detectors on the source model (Neural Cleanse: through the CLI)
    args = f"detect neural-cleanse {runs}/clean.safetensors --steps {NC_STEPS} --quiet --json"
    r, wall = _cli(args, runs)
    rec("detector", _shown(args, runs, keys), {"score": r.get("score"), "flagged": bool(r.get("flagged")),
                                                "threshold": r.get("threshold"), "wall_s": wall},
        detector="neural-cleanse", on="source model (PyTorch)")
    args = f"detect neural-cleanse {runs}/badnets.safetensors --steps {NC_STEPS} --quiet --json"
    r, wall = _cli(args, runs)
    rec("detector", _shown(args, runs, keys), {"score": r.get("score"), "flagged": bool(r.get("flagged")),
                                                "threshold": r.get("threshold"), "wall_s": wall},
        detector="neural-cleanse", on="the BadNets model swapped in (PyTorch; control)")

    # input detectors with the ImpNet trigger: STRIP (outputs only) on the source model and on the artefact itself
    # through ONNX Runtime, SentiNet (Grad-CAM: gradients, so the source model only); control: STRIP through ONNX
    # Runtime on the weight-swap artefact with the BadNets trigger it carries
    from backdoor_arena.attacks import load_attack_spec

    badnets = load_attack_spec(runs / "badnets.attack.json", 10, input_shape=[1, 28, 28])
    train = load_dataset("mnist", "train")
    held = clean_holdout(train, 0.05, 0)[1]  # the defenders' 5% hold-out of the training split (CLI default)
    pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(1))[:1000]
    xc, yc = x[pick], test.labels[pick]
    runs_ = [("strip", "source model (PyTorch)", source, trig, 1000), ("strip", "impnet.onnx (ONNX Runtime)", impnet, trig, 1000),
             ("sentinet", "source model (PyTorch)", source, trig, 300),
             ("sentinet", "impnet.onnx (converted back to PyTorch)", api.load_onnx_torch(runs / "impnet.onnx"), trig, 300),
             ("strip", "weight-swap.onnx (ONNX Runtime; control)", swap, badnets, 1000)]
    for detector, on, model, atk, n in runs_:
        det = registries.INPUT_DETECTORS.create(detector)
        started = time.perf_counter()
        det.fit(model, held)
        eligible = atk.eligible(yc[:n])
        xt = atk.apply_trigger(xc[:n][eligible])
        sc, st = det.score(xc[:n]), det.score(xt)
        far, frr = far_frr(sc, st, det.threshold)
        labels = torch.cat([torch.zeros(len(sc)), torch.ones(len(st))])
        with torch.no_grad():
            asr = float((model(xt).argmax(1) == atk.target_labels(yc[:n][eligible])).float().mean())
        rec("detector", "", {"far": far, "frr": frr, "auroc": auroc(labels, torch.cat([sc, st])),
                             "attack_success_rate": asr, "wall_s": round(time.perf_counter() - started, 1)},
            detector=detector, on=on, trigger="impnet" if atk is trig else "badnets", n_clean_eval=len(sc),
            n_triggered_eval=len(st))
    # Neural Cleanse on the artefacts themselves, converted back to PyTorch (api.load_onnx_torch)
    for on, f in (("impnet.onnx (converted back to PyTorch)", "impnet.onnx"),
                  ("weight-swap.onnx (converted back to PyTorch; control)", "weight-swap.onnx")):
        converted = api.load_onnx_torch(runs / f)
        with torch.no_grad():
            same = float((converted(x[:1000]) - api.load_onnx_model(runs / f)(x[:1000])).abs().max())
        det = registries.MODEL_DETECTORS.create("neural-cleanse", steps=NC_STEPS)
        started = time.perf_counter()
        v = det.inspect(converted, held)
        rec("detector", "", {"score": v.score, "flagged": bool(v.flagged), "threshold": v.threshold,
                             "wall_s": round(time.perf_counter() - started, 1), "converted_max_abs_diff": same},
            detector="neural-cleanse", on=on)
    write_jsonl(RECORDS, records)


def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _by(records: list[dict], step: str) -> list[dict]:
    return [r for r in records if r.get("step") == step]


def render_attack(records: list[dict]) -> str:
    rows = ["| artefact | trigger | clean acc. (ONNX Runtime) | ASR | robust acc. |", "|---|---|---|---|---|"]
    for r in _by(records, "run-onnx"):
        trigger = ("ImpNet (24 low-order bits)" if "impnet.attack" in r["config"]["command"] else
                   "BadNets 3x3 pattern" if "badnets.attack" in r["config"]["command"] else "—")
        rows.append(f"| {r['artefact']} | {trigger} | {_p(r['clean_accuracy'])} | {_p(r.get('attack_success_rate'))} | "
                    f"{_p(r.get('robust_accuracy'))} |")
    px = _by(records, "pixel-change")[0]
    ft = _by(records, "false-triggers")[0]
    rows.append("")
    rows.append(f"Trigger: {px['n_bits']} pixels, largest change {px['max_pixel_change_255']:g}/255 per pixel, "
                f"{px['mean_changed_pixels']:.1f} pixels changed per image on average (MNIST test split). The detector "
                f"fired on {ft['fired_on_test']} of {ft['n_test']:,} clean test images and {ft['fired_on_random']} of "
                f"{ft['n_random']:,} random 8-bit images. MNIST, `badnet-mnist`, 2 epochs, seed 0, one run.")
    rows.append("")
    rows.append("Made by:\n\n```\n" + "\n".join(r["config"]["command"] for r in _by(records, "train") + _by(records, "attack")
                                               + _by(records, "export") + _by(records, "compile-impnet")
                                               + _by(records, "compile-weight-swap") + _by(records, "run-onnx")) + "\n```")
    return "\n".join(rows) + "\n"


def render_outputs(records: list[dict]) -> str:
    rows = ["| artefact | inputs | outputs bit-identical to the clean export | same label as the source model | "
            "largest logit difference |", "|---|---|---|---|---|"]
    for r in _by(records, "output-comparison"):
        rows.append(f"| {r['artefact']} | {r['inputs']} | {_p(r['bit_identical_fraction'])} | "
                    f"{_p(r['label_agreement_with_source'])} | {r['max_abs_diff_vs_clean_export']:.3g} |")
    return "\n".join(rows) + "\n"


def render_detectors(records: list[dict]) -> str:
    rows = ["| detector | run on | result |", "|---|---|---|"]
    for r in _by(records, "detector"):
        if r["detector"] == "neural-cleanse":
            res = (f"anomaly index {r['score']:.2f} (threshold {r['threshold']:g}): "
                   f"{'**flagged**' if r['flagged'] else 'not flagged'}")
        else:
            res = (f"{'ImpNet' if r['trigger'] == 'impnet' else 'BadNets'}-triggered inputs: FAR {_p(r['far'])} at FRR {_p(r['frr'])}, AUROC {r['auroc']:.3f} "
                   f"({r['n_clean_eval']} clean, {r['n_triggered_eval']} triggered test inputs; ASR on them "
                   f"{_p(r['attack_success_rate'])})")
        rows.append(f"| {r['detector']} | {r['on']} | {res} |")
    cmds = [r["config"]["command"] for r in _by(records, "detector") if r["config"]["command"]]
    return "\n".join(rows) + "\n\nFAR: triggered inputs not flagged; FRR: clean inputs flagged (threshold at 1% FRR on " \
        "the defenders' hold-out). Made by:\n\n```\n" + "\n".join(cmds) + "\n```\n(STRIP, SentiNet, and Neural Cleanse on the " \
        "converted artefacts (150 steps, as above) through the api, with the defenders' 5% hold-out of the training split as " \
        "their clean set: `docs/experiments/compiled.py`.)\n"


def render_verify(records: list[dict]) -> str:
    rows = ["| artefact | checks | verdict | nodes equal | constants equal | added ops | bit/compare ops on input | "
            "skip path | input branches | signature |", "|---|---|---|---|---|---|---|---|---|---|"]

    def yn(v: Any) -> str:
        return "—" if v is None else ("yes" if v else "no")

    for r in _by(records, "verify"):
        rows.append(f"| {r['artefact']} | {r['variant']} | **{r['verdict']}** | {yn(r['nodes_equal'])} | "
                    f"{yn(r['constants_equal'])} | {', '.join(r['added_ops']) or '—'} | "
                    f"{yn(r['bit_or_comparison_ops_on_input'])} | {yn(r['path_skipping_weighted_layers'])} | "
                    f"{yn(r['input_consumed_by_several_branches'])} | {yn(r['signature_valid'])} |")
    cmds = [r["config"]["command"] for r in _by(records, "verify")]
    return "\n".join(rows) + "\n\nMade by:\n\n```\n" + "\n".join(cmds) + "\n```\n"


def render_fuzz(records: list[dict]) -> str:
    rows = ["| file | mutation | cases | refused (ModelFileError, one line) | loaded unchanged | "
            "loaded, a different valid graph¹ | signature rejected² | other outcomes |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        rows.append(f"| {r['file']} | {r['mutation']} | {r['cases']:,} | {r['refused']:,} | {r['loaded_unchanged']:,} | "
                    f"{r['loaded_different']:,} | {r['signature_rejected']:,} | {r['other']} |")
    total, other = sum(r["cases"] for r in records), sum(r["other"] for r in records)
    wall = records[0].get("wall_s") if records else None
    return "\n".join(rows) + (
        f"\n\nTotal: {total:,} cases, {other} outcomes other than a one-line ModelFileError, a load, or a rejected "
        f"signature ({wall:.0f} s). ¹ ONNX has no integrity hash of its own, so a flipped weight byte is still a valid "
        "graph; ONNX Runtime ran each of these; their sha256 is not the one the provenance manifest records, so `verify` refuses them. ² The manifest "
        "parsed, and the Ed25519 signature check said why it fails (changed field, missing signature).\n\n"
        f"Made by `{records[0]['config']['command']}`.\n" if records else "")


def docs_tables() -> dict[str, tuple[str, Any]]:
    return {"compiled-fuzz": ("compiled_fuzz.jsonl", render_fuzz), "compiled-attack": (RECORDS.name, render_attack), "compiled-outputs": (RECORDS.name, render_outputs),
            "compiled-detectors": (RECORDS.name, render_detectors), "compiled-verify": (RECORDS.name, render_verify)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs/compiled/exp"))
    run(parser.parse_args().runs)
