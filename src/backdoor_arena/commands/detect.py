"""`detect`, `scan` and `zoo` commands, thin layers over `detect()`, `scan()`, `zoo.build_zoo()` and
`zoo.evaluate_zoo()`.

The detector sees the model and a clean hold-out of the training split of the model's dataset (never the
test split, never the attack spec). An attack spec, when given, is read by the *evaluator* only: to
build triggered test inputs (STRIP, SentiNet: FAR) or the poisoned training set (Spectral Signatures).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from ..attacks import load_attack_spec
from ..data import load_dataset
from ..data.dataset import Dataset, to_float
from ..defenses import (  # noqa: F401  (registrations)
    DATA_FILTERS,
    INPUT_DETECTORS,
    MODEL_DETECTORS,
    clean_holdout,
    neural_cleanse,
    sentinet,
    spectral,
    strip,
)
from ..detection_metrics import auroc, far_frr, precision_recall
from ..errors import ConfigError, IncompatibleError
from ..metrics import evaluate as evaluate_metrics
from ..modelfile import load_model
from ..report import json_safe, pyplot, save_figure
from ..runtime import set_threads, versions
from .options import DataRoot, Json, Quiet, emit

DETECTORS = ("neural-cleanse", "strip", "sentinet", "spectral")


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """`key=value` pairs; values are read as JSON where they parse (numbers, true/false, null)."""
    params: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--param {item!r} must look like key=value, e.g. steps=200")
        key, raw = item.split("=", 1)
        try:
            params[key.strip().replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            params[key.strip().replace("-", "_")] = raw
    return params


def _detector_kind(name: str) -> str:
    for kind, registry in (("model", MODEL_DETECTORS), ("input", INPUT_DETECTORS), ("data", DATA_FILTERS)):
        if name in registry:
            return kind
    known = MODEL_DETECTORS.names() + INPUT_DETECTORS.names() + DATA_FILTERS.names()
    raise ConfigError(f"unknown detector {name!r}; known: {', '.join(sorted(known))}")


def detect(detector: str, model_path: str | Path, *, attack_spec: str | Path | None = None,
           params: dict[str, Any] | None = None, clean_fraction: float = 0.05, seed: int = 0,
           clean_dataset: str | None = None, n_eval: int = 1000, retrain_epochs: int = 0,
           out: str | Path | None = None, data_root: str | Path | None = None,
           progress: bool = True) -> dict[str, Any]:
    """Run one detector on a model file; returns a flat JSON-able result (and writes PNGs into `out`)."""
    kind = _detector_kind(detector)
    params = dict(params or {})
    if not isinstance(n_eval, int) or n_eval < 1:
        raise ConfigError(f"n_eval must be a positive integer, got {n_eval!r}")
    set_threads()
    loaded = load_model(model_path)
    m = loaded.manifest
    if clean_dataset is not None and clean_dataset != m.dataset:
        raise IncompatibleError(f"the model was trained on {m.dataset!r} but the clean set is from "
                                f"{clean_dataset!r}; use --clean-dataset {m.dataset}")
    atk = load_attack_spec(attack_spec, m.num_classes) if attack_spec is not None else None
    train = load_dataset(m.dataset, "train", data_root)
    _rest, held = clean_holdout(train, clean_fraction, seed)
    out = Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict[str, Any] = {"detector": detector, "kind": kind, "model": str(model_path), "dataset": m.dataset,
                              "clean_samples": len(held), "seed": seed}
    if kind == "model":
        if detector == "neural-cleanse":
            params.setdefault("progress", progress)
        det = MODEL_DETECTORS.create(detector, **params)
        v = det.inspect(loaded.model, held)
        result.update({"score": v.score, "flagged": v.flagged, "threshold": v.threshold,
                       "suspected_target": v.suspected_target, **v.details})
        if detector == "neural-cleanse":
            result["anomaly_index"] = v.score
            if out is not None:
                png = neural_cleanse.plot_reversed(out / "reversed_triggers.png", v.artefacts["masks"],
                                                   v.artefacts["patterns"], torch.tensor(v.details["norms"]),
                                                   list(m.class_names), v.details["smallest_norm_label"])
                result["figure"] = str(png)
        if atk is not None:
            result["true_target"] = atk.target
    elif kind == "input":
        det = INPUT_DETECTORS.create(detector, **params).fit(loaded.model, held)
        result.update(_evaluate_input_detector(det, loaded.model, m.dataset, atk, n_eval, seed, data_root, out))
    else:
        result.update(_run_data_filter(detector, params, loaded.model, train, atk, retrain_epochs, m,
                                       data_root, progress))
    result.update({"params": params, "wall_time_s": round(time.perf_counter() - started, 3),
                   "versions": versions()})
    result.pop("progress", None)
    result = json_safe(result)
    if out is not None:
        (out / f"{detector}.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def _evaluate_input_detector(det: Any, model: torch.nn.Module, dataset: str, atk: Any, n_eval: int, seed: int,
                             data_root: Any, out: Path | None) -> dict[str, Any]:
    """FRR on clean test inputs; with an attack spec, FAR on triggered ones (inputs the backdoor applies to)."""
    test = load_dataset(dataset, "test", data_root)
    g = torch.Generator().manual_seed(seed + 1)
    pick = torch.randperm(len(test), generator=g)[:n_eval]
    clean_x = to_float(test.images[pick])
    t0 = time.perf_counter()
    clean_scores = det.score(clean_x)
    rate = len(clean_x) / (time.perf_counter() - t0)
    res: dict[str, Any] = {"threshold": det.threshold, "frr": float((clean_scores > det.threshold).double().mean()),
                           "inputs_per_second": rate, "n_clean_eval": len(clean_x)}
    trig_scores = None
    if atk is not None:
        eligible = torch.nonzero(atk.eligible(test.labels[pick])).flatten()
        trig_x = atk.apply_trigger(clean_x[eligible])
        trig_scores = det.score(trig_x)
        far, frr = far_frr(clean_scores, trig_scores, det.threshold)
        labels = torch.cat([torch.zeros(len(clean_scores)), torch.ones(len(trig_scores))])
        res.update({"far": far, "frr": frr, "n_triggered_eval": len(trig_x),
                    "auroc": auroc(labels, torch.cat([clean_scores, trig_scores]))})
    if out is not None:
        res["figure"] = str(plot_score_histograms(out / f"{type(det).__name__.lower()}_hist.png", det, clean_scores,
                                                  trig_scores))
    return res


def plot_score_histograms(path: Path, det: Any, clean: torch.Tensor, triggered: torch.Tensor | None) -> Path:
    """Histograms of clean and triggered inputs; STRIP is drawn as entropy (its natural scale)."""
    plt = pyplot()

    is_strip = isinstance(det, strip.Strip)
    f = (lambda s: -s) if is_strip else (lambda s: s)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    values = [f(clean)] + ([f(triggered)] if triggered is not None else [])
    lo, hi = float(min(v.min() for v in values)), float(max(v.max() for v in values))
    bins = torch.linspace(lo, hi + 1e-9, 41).numpy()  # shared bins; counts on a log axis so both show
    ax.hist(f(clean).numpy(), bins=bins, alpha=0.6, label=f"clean ({len(clean)})")
    if triggered is not None:
        ax.hist(f(triggered).numpy(), bins=bins, alpha=0.6, label=f"triggered ({len(triggered)})")
    ax.set_yscale("log")
    ax.axvline(f(torch.tensor(det.threshold)).item(), c="k", ls="--", lw=1, label="threshold")
    ax.set_xlabel("mean entropy of superimposed predictions (bits)" if is_strip else "score (fooled - boundary)")
    ax.set_ylabel("inputs (log scale)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def poisoned_training_set(atk: Any, train: Dataset) -> tuple[Dataset, torch.Tensor]:
    """The training set `backdoor-arena attack` trained on (the spec's seed draws the same poisons)."""
    p = atk.poison(train, torch.Generator().manual_seed(atk.seed))
    return p.dataset, p.poisoned_mask


def _run_data_filter(detector: str, params: dict[str, Any], model: torch.nn.Module, train: Dataset, atk: Any,
                     retrain_epochs: int, manifest: Any, data_root: Any, progress: bool) -> dict[str, Any]:
    filt = DATA_FILTERS.create(detector, **params)
    data, truth = (poisoned_training_set(atk, train) if atk is not None
                   else (train, torch.zeros(len(train), dtype=torch.bool)))
    scores = filt.score(model, data)
    flagged = filt.flag(model, data, scores)
    res: dict[str, Any] = {"n_samples": len(data), "n_removed": int(flagged.sum()),
                           "training_set": "poisoned (rebuilt from the attack spec)" if atk else "clean train split"}
    if atk is not None:
        precision, recall = precision_recall(flagged, truth)
        in_target = data.labels == atk.target
        p_t, r_t = precision_recall(flagged[in_target], truth[in_target])
        res.update({"n_poisoned": int(truth.sum()), "removal_precision": precision, "removal_recall": recall,
                    "target_class_precision": p_t, "target_class_recall": r_t,
                    "auroc": auroc(truth.long(), scores)})
    if retrain_epochs:
        from ..train import TrainConfig, create_model, fit

        kept = data.subset(torch.nonzero(~flagged).flatten())
        net, _ = create_model(manifest.architecture, data.info, manifest.training.get("seed", 0))
        fit(net, kept, TrainConfig(epochs=retrain_epochs, seed=manifest.training.get("seed", 0), progress=progress),
            description="retrain")
        after = evaluate_metrics(net, load_dataset(manifest.dataset, "test", data_root), atk)
        res.update({"retrain_epochs": retrain_epochs, "retrained_clean_accuracy": after["clean_accuracy"],
                    "retrained_attack_success_rate": after.get("attack_success_rate")})
    return res


def scan(model_path: str | Path, out: str | Path, *, params: dict[str, dict[str, Any]] | None = None,
         clean_fraction: float = 0.05, seed: int = 0, data_root: str | Path | None = None,
         progress: bool = True) -> dict[str, Any]:
    """Every model-level detector on one model; one report (scan.json + PNGs) in `out`.
    `params` maps a detector name to its parameters."""
    out = Path(out)
    params = params or {}
    unknown = sorted(set(params) - set(MODEL_DETECTORS.names()))
    if unknown:
        raise ConfigError(f"scan: parameters for unknown model detectors {unknown}; known: "
                          f"{', '.join(MODEL_DETECTORS.names())}")
    results = {name: detect(name, model_path, params=params.get(name), clean_fraction=clean_fraction, seed=seed,
                            out=out, data_root=data_root, progress=progress) for name in MODEL_DETECTORS.names()}
    report = {"model": str(model_path), "flagged": any(r["flagged"] for r in results.values()),
              "detectors": results}
    (out / "scan.json").write_text(json.dumps(report, indent=1, sort_keys=True))
    report["report"] = str(out / "scan.json")
    return report


# --------------------------------------------------------------------------- CLI
ModelArg = Annotated[Path, typer.Argument(help="Model file (.safetensors).")]
Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Detector parameter key=value (repeatable), "
                                                 "e.g. -p steps=200.")]
Spec = Annotated[Path | None, typer.Option(help="Attack spec, for the evaluation only (FAR, precision/recall).")]
CleanFraction = Annotated[float, typer.Option(help="Defender's clean hold-out: this fraction of the training split.")]
Seed = Annotated[int, typer.Option(help="Seed of the hold-out and of the detector.")]
OutDir = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the JSON result and PNGs.")]


def _summary_lines(r: dict[str, Any]) -> list[str]:
    if r["kind"] == "model":
        lines = [f"{r['detector']}: score {r['score']:.3f} (threshold {r['threshold']:g}) -> "
                 f"{'FLAGGED' if r['flagged'] else 'not flagged'}; suspected target {r['suspected_target']}"]
    elif r["kind"] == "input":
        lines = [f"{r['detector']}: threshold {r['threshold']:.4f}, FRR {100 * r['frr']:.2f}% on clean test inputs, "
                 f"{r['inputs_per_second']:.0f} inputs/s"]
        if "far" in r:
            lines.append(f"FAR {100 * r['far']:.2f}% on {r['n_triggered_eval']} triggered inputs, AUROC {r['auroc']:.4f}")
    else:
        lines = [f"{r['detector']}: removed {r['n_removed']} of {r['n_samples']} samples ({r['training_set']})"]
        if "removal_precision" in r:
            lines.append(f"precision {r['removal_precision']:.3f}, recall {r['removal_recall']:.3f} of "
                         f"{r['n_poisoned']} poisons, AUROC {r['auroc']:.4f}")
        if "retrained_attack_success_rate" in r:
            lines.append(f"retrained: clean accuracy {r['retrained_clean_accuracy']:.4f}, "
                         f"ASR {r['retrained_attack_success_rate']}")
    if r.get("figure"):
        lines.append(f"figure: {r['figure']}")
    return lines


def register(app: typer.Typer) -> None:
    detect_app = typer.Typer(no_args_is_help=True, help="Is this model backdoored? Is this input triggered? "
                             "Which training samples are poisoned?")

    def make_command(name: str) -> None:
        def command(model_file: ModelArg, param: Param = None, attack_spec: Spec = None,
                    clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                    clean_dataset: Annotated[str | None, typer.Option(
                        help="Dataset of the clean set (must be the model's).")] = None,
                    n_eval: Annotated[int, typer.Option(help="Test inputs to screen (input detectors).")] = 1000,
                    retrain_epochs: Annotated[int, typer.Option(
                        help="Spectral: retrain on the kept samples for this many epochs (0: no retraining).")] = 0,
                    out: OutDir = None, data_root: DataRoot = None, json_out: Json = False,
                    quiet: Quiet = False) -> None:
            r = detect(name, model_file, attack_spec=attack_spec, params=parse_params(param),
                       clean_fraction=clean_fraction, seed=seed, clean_dataset=clean_dataset, n_eval=n_eval,
                       retrain_epochs=retrain_epochs, out=out, data_root=data_root, progress=not quiet)
            emit(r, json_out, _summary_lines(r))

        command.__doc__ = f"Run the {name} detector on a model file."
        detect_app.command(name)(command)

    for name in DETECTORS:
        make_command(name)
    app.add_typer(detect_app, name="detect")

    @app.command("scan")
    def scan_command(model_file: ModelArg, out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")]
                     = Path("scan-report"), param: Annotated[list[str] | None, typer.Option(
                         "--param", "-p", help="DETECTOR.key=value (repeatable), e.g. -p neural-cleanse.steps=200.")]
                     = None, clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                     data_root: DataRoot = None, json_out: Json = False, quiet: Quiet = False) -> None:
        """Run every model-level detector on a model file; write one report (JSON and PNGs)."""
        per: dict[str, dict[str, Any]] = {}
        for key, value in parse_params(param).items():
            name, dot, k = key.rpartition(".")
            if not dot:
                raise ConfigError(f"scan --param {key!r} must name its detector: DETECTOR.key=value")
            per.setdefault(name.replace("_", "-"), {})[k] = value
        r = scan(model_file, out, params=per, clean_fraction=clean_fraction, seed=seed, data_root=data_root,
                 progress=not quiet)
        lines = [line for d in r["detectors"].values() for line in _summary_lines(d)]
        emit(r, json_out, [*lines, f"report: {r['report']}"])

    zoo_app = typer.Typer(no_args_is_help=True, help="Seeded zoos of clean and backdoored models, and detector "
                          "AUROC over them.")

    @zoo_app.command("build")
    def zoo_build(out: Annotated[Path, typer.Option("--out", "-o", help="Zoo folder.")],
                  dataset: Annotated[str, typer.Option(help="Dataset.")] = "mnist",
                  clean: Annotated[int, typer.Option(help="Clean models.")] = 10,
                  backdoored: Annotated[int, typer.Option(help="Backdoored models.")] = 10,
                  model: Annotated[str, typer.Option(help="Architecture id.")] = "badnet-mnist",
                  epochs: Annotated[int, typer.Option(help="Training epochs per model.")] = 2,
                  train_size: Annotated[int | None, typer.Option(help="Train on a seeded subset this large.")] = None,
                  threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
                  seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False) -> None:
        """Train seeded clean and backdoored models (varied targets, trigger kinds, sizes, positions)."""
        from ..zoo import ZooConfig, build_zoo

        records = build_zoo(out, ZooConfig(dataset=dataset, architecture=model, clean=clean, backdoored=backdoored,
                                           epochs=epochs, train_size=train_size, seed=seed,
                                           threads=threads),
                            data_root=data_root, progress=not quiet)
        typer.echo(f"wrote {len(records)} models to {out / 'models'} (attack specs and truth in {out / 'specs'})")

    @zoo_app.command("evaluate")
    def zoo_evaluate(zoo_dir: Annotated[Path, typer.Argument(help="Zoo folder.")],
                     detector: Annotated[str, typer.Option(help="Model detector.")] = "neural-cleanse",
                     param: Param = None, clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                     out: OutDir = None, data_root: DataRoot = None, json_out: Json = False,
                     quiet: Quiet = False) -> None:
        """AUROC (on scores), TPR at 5% FPR and target accuracy of a model detector over a zoo; ROC plot."""
        from ..zoo import evaluate_zoo

        params = parse_params(param)
        if detector == "neural-cleanse":
            params.setdefault("progress", False)
        s = evaluate_zoo(zoo_dir, detector, params=params, clean_fraction=clean_fraction, seed=seed,
                         data_root=data_root, progress=not quiet, out=out)
        emit(json_safe(s), json_out, [
            f"{detector} on {s['n_clean']} clean + {s['n_backdoored']} backdoored models: AUROC {s['auroc']:.3f}, "
            f"TPR@5%FPR {s['tpr_at_5pct_fpr']:.3f}, target accuracy {s['target_accuracy']:.3f}",
            f"results and ROC plot in {s['out']}"])

    app.add_typer(zoo_app, name="zoo")
