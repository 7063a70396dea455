"""`detect <detector>` (one sub-command per registered detector of every kind, options generated from its
constructor), `scan`, `scan-calibrate` and `scan-zoo`: thin layers over `api.detect()`, `api.scan()`,
`api.scan_calibrate()` and `api.scan_zoo()` (`zoo build|evaluate` are in commands/zoo.py)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import api, registries
from .generate import first_line, given_plugin_params, make_command, option_parameters
from .options import (
    DataRoot,
    Device,
    ExecutorName,
    Force,
    Jobs,
    Json,
    Overwrite,
    Quiet,
    RayAddress,
    emit,
    make_executor,
    parse_params,
)

SHARED = ("seed", "progress", "device")

ModelArg = Annotated[Path, typer.Argument(help="Model file (.safetensors).")]
Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Detector parameter key=value (repeatable), "
                                                 "e.g. -p steps=200.")]
Spec = Annotated[Path | None, typer.Option(help="Attack spec, for the evaluation only (FAR, precision/recall).")]
CleanFraction = Annotated[float, typer.Option(help="Defender's clean hold-out: this fraction of the training split.")]
Seed = Annotated[int, typer.Option(help="Seed of the hold-out and of the detector.")]
OutDir = Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the JSON result and PNGs.")]
ScanParam = Annotated[list[str] | None, typer.Option(
    "--param", "-p", help="DETECTOR.key=value (repeatable), e.g. -p neural-cleanse.steps=200.")]
Detectors = Annotated[list[str] | None, typer.Option("--detector", "-d", help="Run only this model detector "
                                                     "(repeatable; default: all).")]
TimeBudget = Annotated[float | None, typer.Option("--time-budget", help="Seconds per detector and model; a "
                                                  "detector over it is stopped and reported, the rest go on.")]
CalibrationFile = Annotated[Path | None, typer.Option("--calibration", help="Calibration file from "
                                                      "`scan-calibrate`: combine the scores into one probability.")]


def _scan_params(items: list[str] | None) -> dict[str, dict[str, Any]]:
    per: dict[str, dict[str, Any]] = {}
    for key, value in parse_params(items).items():
        name, dot, k = key.rpartition(".")
        if not dot:
            raise api.ConfigError(f"scan --param {key!r} must name its detector: DETECTOR.key=value")
        per.setdefault(name.replace("_", "-"), {})[k] = value
    return per


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


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _common_options() -> list[inspect.Parameter]:
    def options(model_file: ModelArg, param: Param = None, attack_spec: Spec = None,
                clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                clean_dataset: Annotated[str | None, typer.Option(
                    help="Dataset of the clean set (must be the model's).")] = None,
                n_eval: Annotated[int, typer.Option(help="Test inputs to screen (input detectors).")] = 1000,
                retrain_epochs: Annotated[int, typer.Option(
                    help="Data filters: retrain on the kept samples for this many epochs (0: no retraining).")] = 0,
                out: OutDir = None, data_root: DataRoot = None, json_out: Json = False,
                quiet: Quiet = False, overwrite: Overwrite = False, force: Force = False,
                device: Device = "auto") -> None: ...

    return list(inspect.signature(options, eval_str=True).parameters.values())


_KIND_DOC = {"model": "Is this model backdoored? (model detector)",
             "input": "Which inputs are triggered? (input detector; FAR with --attack-spec)",
             "data": "Which training samples are poisoned? (data filter; needs --attack-spec to rebuild the "
                     "poisoned training set)"}


def _detector_command(kind: str, name: str) -> Any:
    factory = registries.DETECTOR_KINDS[kind].get(name)

    def body(**v: Any) -> None:
        params = {**parse_params(v["param"]), **given_plugin_params(factory, v, skip=SHARED, prefix="p_")}
        r = api.detect(name, v["model_file"], attack_spec=v["attack_spec"], params=params,
                       clean_fraction=v["clean_fraction"], seed=v["seed"], clean_dataset=v["clean_dataset"],
                       n_eval=v["n_eval"], retrain_epochs=v["retrain_epochs"], out=v["out"],
                       data_root=v["data_root"], progress=not v["quiet"], overwrite=v["overwrite"],
                       force=v["force"], device=v["device"]).to_dict()
        emit(r, v["json_out"], _summary_lines(r))

    return make_command(body, _common_options() + option_parameters(factory, skip=SHARED, prefix="p_"),
                        f"{first_line(factory)} {_KIND_DOC[kind]}")


def register(app: typer.Typer) -> None:
    detect_app = typer.Typer(no_args_is_help=True, help="Is this model backdoored? Is this input triggered? "
                             "Which training samples are poisoned?")

    for kind, registry in registries.DETECTOR_KINDS.items():
        for name in registry.names():
            detect_app.command(name)(_detector_command(kind, name))
    app.add_typer(detect_app, name="detect")

    @app.command("scan")
    def scan_command(model_file: ModelArg, out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")]
                     = Path("scan-report"), param: ScanParam = None, detector: Detectors = None,
                     time_budget: TimeBudget = None, calibration: CalibrationFile = None,
                     clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                     data_root: DataRoot = None, json_out: Json = False, quiet: Quiet = False,
                     overwrite: Overwrite = False, device: Device = "auto") -> None:
        """Run every model-level detector on a model file; write one report (JSON and PNGs). With --calibration,
        one calibrated probability that the model is backdoored."""
        r = api.scan(model_file, out, params=_scan_params(param), detectors=detector, time_budget_s=time_budget,
                     calibration=calibration, clean_fraction=clean_fraction, seed=seed, data_root=data_root,
                     progress=not quiet, overwrite=overwrite, device=device).to_dict()
        lines = [line for d in r["detectors"].values() for line in _summary_lines(d)]
        lines += [f"{name}: {f['status']} after {f['wall_time_s']:.1f} s ({f['error']})"
                  for name, f in r["failures"].items()]
        if "verdict" in r:
            v = r["verdict"]
            lines.append("verdict: no calibrated detector produced a score" if v["probability"] is None else
                         f"verdict: P(backdoored) = {v['probability']:.3f} from {', '.join(v['used'])} -> "
                         f"{'FLAGGED' if v['flagged'] else 'not flagged'} (threshold {v['threshold']:g})")
        emit(r, json_out, [*lines, f"report: {r['report']}"])

    @app.command("scan-calibrate")
    def scan_calibrate_command(zoo_dir: Annotated[Path, typer.Argument(help="Labelled calibration zoo folder "
                                                                       "(`zoo build`), apart from any zoo you evaluate on.")],
                               out: Annotated[Path, typer.Option("--out", "-o", help="Calibration file (JSON).")],
                               param: ScanParam = None, detector: Detectors = None, time_budget: TimeBudget = None,
                               clean_fraction: CleanFraction = 0.05, seed: Seed = 0, data_root: DataRoot = None,
                               quiet: Quiet = False, executor: ExecutorName = "local", jobs: Jobs = None,
                               address: RayAddress = None, device: Device = "auto") -> None:
        """Scan every model of a labelled zoo and write the calibration that `scan --calibration` uses."""
        path = api.scan_calibrate(zoo_dir, out, detectors=detector, params=_scan_params(param),
                                  time_budget_s=time_budget, clean_fraction=clean_fraction, seed=seed,
                                  data_root=data_root, progress=not quiet,
                                  executor=make_executor(executor, jobs, address), device=device)
        typer.echo(f"wrote {path}")

    @app.command("scan-zoo")
    def scan_zoo_command(zoo_dir: Annotated[Path, typer.Argument(help="Zoo folder (`zoo build`).")],
                         out: OutDir = None, param: ScanParam = None, detector: Detectors = None,
                         time_budget: TimeBudget = None, calibration: CalibrationFile = None,
                         clean_fraction: CleanFraction = 0.05, seed: Seed = 0, data_root: DataRoot = None,
                         json_out: Json = False, quiet: Quiet = False, executor: ExecutorName = "local",
                         jobs: Jobs = None, address: RayAddress = None, device: Device = "auto") -> None:
        """Scan every model of a zoo: AUROC per detector (and of the calibrated verdict), ROC plot."""
        s = api.scan_zoo(zoo_dir, out, detectors=detector, params=_scan_params(param), time_budget_s=time_budget,
                         calibration=calibration, clean_fraction=clean_fraction, seed=seed, data_root=data_root,
                         progress=not quiet, executor=make_executor(executor, jobs, address), device=device)
        lines = [f"{name}: AUROC {_num(d.get('auroc'))}, TPR@5%FPR {_num(d.get('tpr_at_5pct_fpr'))}, "
                 f"{d['n_failed']} failed, {_num(d['wall_time_s_mean'])} s per model"
                 for name, d in s["detectors"].items()]
        emit(s, json_out, [*lines, f"results and ROC plot in {s['out']}"])
