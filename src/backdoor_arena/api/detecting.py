"""Verbs that inspect model files: `detect` (one registered detector of any kind) and `scan` (every model-level
detector on one model).

The detector sees the model and a clean hold-out of the training split of the model's dataset (never the
test split, never the attack spec). An attack spec, when given, is read by the *evaluator* only: to build
triggered test inputs (input detectors: FAR) or the poisoned training set (data filters: precision/recall).
"""

from __future__ import annotations

import inspect
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..data import load_dataset
from ..data.dataset import Dataset, to_float
from ..defenses import DATA_FILTERS, INPUT_DETECTORS, MODEL_DETECTORS, clean_holdout
from ..detection_metrics import auroc, far_frr, precision_recall
from ..errors import ConfigError, IncompatibleError
from ..metrics import evaluate as evaluate_metrics
from ..modelfile import load_model
from ..registries import detector_kind
from ..report import plot_reversed_triggers, plot_score_histograms
from ..runtime import describe_device, run_device
from ..safeio import atomic_write_text, output_folder
from ..verdict import Calibration
from .outputs import check_folder_output
from .results import DetectionResult, ScanResult
from .training import check_model_fits, defender_clean_set, spec_for_model

_REGISTRIES = {"model": MODEL_DETECTORS, "input": INPUT_DETECTORS, "data": DATA_FILTERS}


def _create(kind: str, name: str, params: dict[str, Any], progress: bool, device: torch.device | None = None) -> Any:
    factory = _REGISTRIES[kind].get(name)
    if "progress" in inspect.signature(factory).parameters:  # detectors that can show progress do
        params.setdefault("progress", progress)
    if device is not None and takes_device(kind, name):
        params.setdefault("device", str(device))
    return _REGISTRIES[kind].create(name, **params)


def takes_device(kind: str, name: str) -> bool:
    """Whether a detector's computation runs on a chosen device (its constructor takes `device`); the others
    run on the CPU."""
    return "device" in inspect.signature(_REGISTRIES[kind].get(name)).parameters


def detector_device(kind: str, name: str, device: str | None) -> torch.device:
    """`--device` for one detector: any device for a detector that takes one, else the CPU (an explicit GPU
    is refused with the reason rather than silently ignored)."""
    supported = ("cpu", "cuda", "mps") if takes_device(kind, name) else ("cpu",)
    return run_device(device, supported=supported, what=f"detector {name}")


def detect(detector: str, model_path: str | Path, *, attack_spec: str | Path | None = None,
           params: dict[str, Any] | None = None, clean_fraction: float = 0.05, seed: int = 0,
           clean_dataset: str | None = None, n_eval: int = 1000, retrain_epochs: int = 0,
           out: str | Path | None = None, data_root: str | Path | None = None,
           progress: bool = True, overwrite: bool = False, force: bool = False, device: str = "auto") -> DetectionResult:
    """Run one detector on a model file; writes OUT/DETECTOR.json and figures into `out` when given (an
    existing non-empty folder only with `overwrite`; a folder made here is removed again if the run fails).
    `device`: auto | cpu | cuda[:N] | mps for detectors that take one (else the CPU), recorded in the result."""
    dev = detector_device(detector_kind(detector), detector, device)
    if out is None:
        return _detect(detector, model_path, attack_spec, params, clean_fraction, seed, clean_dataset, n_eval,
                       retrain_epochs, None, data_root, progress, force, dev)
    out = check_folder_output(out, inputs=[model_path, attack_spec], overwrite=overwrite)
    with output_folder(out):
        return _detect(detector, model_path, attack_spec, params, clean_fraction, seed, clean_dataset, n_eval,
                       retrain_epochs, out, data_root, progress, force, dev)


def _detect(detector: str, model_path: str | Path, attack_spec: str | Path | None, params: dict[str, Any] | None,
            clean_fraction: float, seed: int, clean_dataset: str | None, n_eval: int, retrain_epochs: int,
            out: Path | None, data_root: str | Path | None, progress: bool, force: bool = False,
            device: torch.device | None = None) -> DetectionResult:
    kind = detector_kind(detector)
    device = device if device is not None else torch.device("cpu")
    params = dict(params or {})
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 1:
        raise ConfigError(f"n_eval must be a positive integer, got {n_eval!r}")
    if not isinstance(retrain_epochs, int) or retrain_epochs < 0:
        raise ConfigError(f"retrain_epochs must be a non-negative integer, got {retrain_epochs!r}")
    det = _create(kind, detector, params, progress, device)
    loaded = load_model(model_path)
    m = loaded.manifest
    if clean_dataset is not None and clean_dataset != m.dataset:
        raise IncompatibleError(f"the model was trained on {m.dataset!r} but the clean set is from "
                                f"{clean_dataset!r}; use --clean-dataset {m.dataset}")
    atk = spec_for_model(attack_spec, m, force)
    train = load_dataset(m.dataset, "train", data_root)
    check_model_fits(m, train)
    held, clean_source = defender_clean_set(m, train, clean_fraction, seed)
    started = time.perf_counter()
    values: dict[str, Any] = {}
    figure = None
    if kind == "model":
        v = det.inspect(loaded.model, held)
        values.update({"score": v.score, "flagged": v.flagged, "threshold": v.threshold,
                       "suspected_target": v.suspected_target, **{k: x for k, x in v.details.items() if k != "params"}})
        if out is not None and {"masks", "patterns"} <= set(v.artefacts):
            figure = plot_reversed_triggers(out / "reversed_triggers.png", v.artefacts["masks"],
                                            v.artefacts["patterns"], torch.tensor(v.details["norms"]),
                                            list(m.class_names), v.details.get("smallest_norm_label", v.suspected_target))
        if atk is not None:
            values["true_target"] = atk.target
    elif kind == "input":
        det.fit(loaded.model, held)
        values.update(_evaluate_input_detector(det, m.dataset, atk, n_eval, seed, data_root, out))
        figure = values.pop("figure", None)
    else:
        trained_on = train  # the split the attacker poisoned: the training split minus the defenders' hold-out
        record = m.training.get("defender_holdout") if isinstance(m.training, dict) else None
        if isinstance(record, dict):
            trained_on = clean_holdout(train, record["fraction"], record["seed"])[0]
        values.update(_run_data_filter(det, loaded.model, trained_on, atk, retrain_epochs, m, data_root, progress,
                                       device))
    values["clean_source"] = clean_source
    values["device"] = describe_device(device)
    params.pop("progress", None)
    params.pop("device", None)
    result = DetectionResult(detector, kind, str(model_path), m.dataset, len(held), seed, params, values,
                             round(time.perf_counter() - started, 3), figure)
    if out is not None:
        atomic_write_text(out / f"{detector}.json", json.dumps(result.to_dict(), indent=1, sort_keys=True))
    return result


def _evaluate_input_detector(det: Any, dataset: str, atk: Any, n_eval: int, seed: int, data_root: Any,
                             out: Path | None) -> dict[str, Any]:
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
        res["figure"] = plot_score_histograms(out / f"{type(det).__name__.lower()}_hist.png", det.threshold,
                                              clean_scores, trig_scores,
                                              entropy_scale=getattr(det, "score_scale", "") == "negative-entropy")
    return res


def poisoned_training_set(atk: Any, train: Dataset) -> tuple[Dataset, torch.Tensor]:
    """The training set `backdoor-arena attack` trained on (the spec's seed draws the same poisons)."""
    p = atk.poison(train, torch.Generator().manual_seed(atk.seed))
    return p.dataset, p.poisoned_mask


def _run_data_filter(filt: Any, model: torch.nn.Module, train: Dataset, atk: Any, retrain_epochs: int,
                     manifest: Any, data_root: Any, progress: bool,
                     device: torch.device | None = None) -> dict[str, Any]:
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
            description="retrain", device=device)
        after = evaluate_metrics(net, load_dataset(manifest.dataset, "test", data_root), atk)
        res.update({"retrain_epochs": retrain_epochs, "retrained_clean_accuracy": after["clean_accuracy"],
                    "retrained_attack_success_rate": after.get("attack_success_rate")})
    return res


def scan(model_path: str | Path, out: str | Path, *, params: dict[str, dict[str, Any]] | None = None,
         detectors: list[str] | None = None, time_budget_s: float | None = None,
         calibration: str | Path | None = None, clean_fraction: float = 0.05, seed: int = 0,
         data_root: str | Path | None = None, progress: bool = True, overwrite: bool = False,
         device: str = "auto") -> ScanResult:
    """Every model-level detector (or those named in `detectors`) on one model; one report (scan.json + PNGs)
    in `out`. `params` maps a detector name to its parameters. A detector that fails (an error, or over
    `time_budget_s` seconds: a timer stops it) is reported with
    its one-line reason and the rest go on. With `calibration` (a file from `scan_calibrate`), the detectors'
    scores are combined into one calibrated probability (`verdict.Calibration`). `device`: where the
    detectors that take a device run (the others run on the CPU); each detector's result records its device."""
    params = params or {}
    dev = run_device(device, what="scan")
    known = MODEL_DETECTORS.names()
    names = list(known) if detectors is None else list(dict.fromkeys(detectors))
    unknown = sorted((set(params) | set(names)) - set(known))
    if unknown:
        raise ConfigError(f"scan: unknown model detectors {unknown}; known: {', '.join(known)}")
    if not names:
        raise ConfigError("scan: no detectors to run; name at least one or leave the list out for all")
    bad = {k: v for k, v in params.items() if not isinstance(v, dict)}
    if bad:
        raise ConfigError(f"scan: the parameters of each detector must be a table of key=value, got {bad}")
    if time_budget_s is not None and not (isinstance(time_budget_s, (int, float)) and time_budget_s > 0):
        raise ConfigError(f"scan: the time budget must be a positive number of seconds, got {time_budget_s!r}")
    for name in names:  # bad parameters are the caller's mistake: raise before any detector runs
        _create("model", name, dict(params.get(name) or {}), False)
    calib = Calibration.load(calibration) if calibration is not None else None
    out = check_folder_output(out, inputs=[model_path], overwrite=overwrite)
    with output_folder(out):
        # a bad model file, or a model that does not fit its dataset, is the caller's mistake: raised, not
        # reported as every detector's failure
        manifest = load_model(model_path).manifest
        check_model_fits(manifest, load_dataset(manifest.dataset, "train", data_root))
        results: dict[str, DetectionResult] = {}
        failures: dict[str, dict[str, Any]] = {}
        for name in names:
            started = time.perf_counter()
            run = (name, model_path, None, params.get(name), clean_fraction, seed, None, 1000, 0, out, data_root,
                   progress, False, dev if takes_device("model", name) else torch.device("cpu"))
            try:
                if time_budget_s is None:
                    results[name] = _detect(*run)
                else:
                    results[name] = _detect_within(run, float(time_budget_s))
            except _OverBudget as exc:
                failures[name] = {"status": "over budget", "error": str(exc),
                                  "wall_time_s": round(time.perf_counter() - started, 3)}
            except Exception as exc:  # noqa: BLE001 - one detector's failure must not lose the others' results
                failures[name] = {"status": "error", "error": one_line_error(exc),
                                  "wall_time_s": round(time.perf_counter() - started, 3)}
        verdict = None
        if calib is not None:
            scores = {n: r.values.get("score") for n, r in results.items()}
            scores.update({n: None for n in failures})
            verdict = calib.verdict(scores)
        result = ScanResult(str(model_path), results, out / "scan.json", failures, verdict)
        report = result.to_dict()
        report.pop("report")
        atomic_write_text(result.report, json.dumps(report, indent=1, sort_keys=True))
    return result


class _OverBudget(BaseException):
    """Raised by the budget timer; a BaseException so that a detector's own `except Exception` cannot swallow it."""


def one_line_error(exc: BaseException) -> str:
    """`Type: first line of the message`: what a report shows of a failure."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _detect_within(run: tuple, budget_s: float) -> DetectionResult:
    """`_detect(*run)` stopped after `budget_s` seconds by a timer signal that raises in this thread.

    Not a forked child: a fork after torch has used its thread pool can deadlock in the child (seen in
    `load_state_dict`). The signal interrupts Python code between bytecodes, so a detector is stopped within
    one tensor operation of its budget; it works on its own copy of the model, which is dropped."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        raise ConfigError("scan: a time budget needs the main thread (it uses a timer signal); call scan from the "
                          "main thread or leave the budget out")

    def over(signum: int, frame: Any) -> None:
        raise _OverBudget(f"stopped after its time budget of {budget_s:g} s")

    previous = signal.signal(signal.SIGALRM, over)
    signal.setitimer(signal.ITIMER_REAL, budget_s)
    try:
        return _detect(*run)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
