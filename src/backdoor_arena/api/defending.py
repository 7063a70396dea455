"""Verbs that repair model files: `defend` (one registered mitigation, one model) and `compare_defenses`
(pruning, fine-tuning, fine-pruning and DP-SGD training on BadNets and pruning-aware models, table + figures).

The defender gets the model file and a clean hold-out of the training split; the attack spec, when
given, goes to the evaluator only, which measures accuracy and ASR on the test split before and after,
and along the defense's curve through an opaque `monitor(model) -> metrics` callback.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attacks import PoisoningAttack
from ..data import load_dataset
from ..data.dataset import Dataset
from ..defenses import MITIGATIONS
from ..errors import ConfigError
from ..metrics import evaluate as evaluate_metrics
from ..modelfile import Manifest, load_model, save_model
from ..nn_tools import prune_site
from ..records import Record, json_safe, write_jsonl
from ..report import markdown_table, plot_comparison, plot_defense_curve
from ..runtime import describe_device, run_device, versions
from ..safeio import output_folder
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from .outputs import check_folder_output, check_model_output
from .results import DefenseResult
from .training import check_model_fits, defender_clean_set, spec_for_model

REMOVAL_DEFENSES = ("pruning", "fine-tuning", "fine-pruning")
METRIC_KEYS = ("clean_accuracy", "attack_success_rate", "robust_accuracy")


def make_defense(name: str, params: dict[str, Any] | None = None, *, seed: int = 0, progress: bool = False,
                 device: torch.device | None = None) -> Any:
    """A registered mitigation with keyword parameters (a ConfigError names a parameter it does not take)."""
    params = dict(params or {})
    accepted = inspect.signature(MITIGATIONS.get(name)).parameters
    for key, value in (("seed", seed), ("progress", progress), ("device", None if device is None else str(device))):
        if key in accepted and value is not None:  # not every mitigation draws random numbers, shows progress, ...
            params.setdefault(key, value)
    return MITIGATIONS.create(name, **params)


def defense_device(name: str, device: str | None) -> torch.device:
    """`--device` for one mitigation: any device for one that takes it (those that fine-tune), else the CPU (an
    explicit GPU is refused with the reason rather than ignored)."""
    takes = "device" in inspect.signature(MITIGATIONS.get(name)).parameters
    return run_device(device, supported=("cpu", "cuda", "mps") if takes else ("cpu",), what=f"defense {name}")


def make_monitor(test: Dataset, attack: PoisoningAttack | None, samples: int | None = None,
                 seed: int = 0) -> Callable[[nn.Module], dict[str, float]]:
    """The evaluator's view along a curve: test accuracy and, with an attack, ASR. With `samples`, on
    a seeded subset of that many clean test inputs and at most that many eligible (triggerable) ones."""
    g = torch.Generator().manual_seed(seed)
    clean = test if samples is None or samples >= len(test) else test.subset(torch.randperm(len(test), generator=g)[:samples])
    triggered = None
    if attack is not None:
        eligible = torch.nonzero(attack.eligible(test.labels)).flatten()
        if samples is not None and len(eligible) > samples:
            eligible = eligible[torch.randperm(len(eligible), generator=g)[:samples]].sort().values
        triggered = test.subset(eligible)

    def monitor(model: nn.Module) -> dict[str, float]:
        out = {"clean_accuracy": evaluate_metrics(model, clean)["clean_accuracy"]}
        if triggered is not None:
            out["attack_success_rate"] = evaluate_metrics(model, triggered, attack)["attack_success_rate"]
        return out

    return monitor


def _metrics(model: nn.Module, test: Dataset, attack: PoisoningAttack | None) -> dict[str, float]:
    r = evaluate_metrics(model, test, attack)
    return {k: r[k] for k in METRIC_KEYS if k in r}


def curve_paths(out: str | Path) -> tuple[Path, Path]:
    """`R.safetensors` -> (`R.curve.png`, `R.curve.jsonl`), beside the repaired model."""
    out = Path(out)
    stem = out.name.removesuffix(".safetensors")
    return out.with_name(stem + ".curve.png"), out.with_name(stem + ".curve.jsonl")


def defend(
    defense: str, model_path: str | Path, out: str | Path, *, clean_fraction: float = 0.05,
    attack_spec: str | Path | None = None, seed: int = 0, params: dict[str, Any] | None = None,
    curve_samples: int | None = 2000, data_root: str | Path | None = None, progress: bool = True,
    overwrite: bool = False, force: bool = False, device: str = "auto", measure_before: bool = True,
) -> DefenseResult:
    """Repair a model file with a registered mitigation and write the repaired model file, its curve
    (PNG + JSONL) beside it; returns `before`/`after` metrics on the test split (ASR with a spec).
    Outputs are checked before any work: `out` is never the input model, and replaces an existing file
    only with `overwrite`. `device`: where a mitigation that takes one runs (else the CPU); recorded in the
    repaired model's manifest. `curve_samples`: test inputs the curve is measured on at every point (None:
    the whole test split; 0: no test curve, only what the mitigation measures on its clean set, so the
    wall time is the repair's own). `measure_before=False` leaves `before` empty: a caller that measured the
    model already (the leaderboard, when it trained it) saves a pass over the test split per repair."""
    out = check_model_output(out, inputs=[model_path, attack_spec], side_files=curve_paths(out),
                             overwrite=overwrite)
    if not (isinstance(clean_fraction, (int, float)) and 0 < clean_fraction <= 1):
        raise ConfigError(f"--clean-fraction must be in (0, 1], got {clean_fraction!r}")
    if curve_samples is not None and (not isinstance(curve_samples, int) or isinstance(curve_samples, bool)
                                      or curve_samples < 0):
        raise ConfigError(f"curve_samples must be a non-negative integer (0: no test curve) or None (the whole "
                          f"test split), got {curve_samples!r}")
    dev = defense_device(defense, device)
    mitigation = make_defense(defense, params, seed=seed, progress=progress, device=dev)
    loaded = load_model(model_path)
    m = loaded.manifest
    atk = spec_for_model(attack_spec, m, force)
    train = load_dataset(m.dataset, "train", data_root)
    test = load_dataset(m.dataset, "test", data_root)
    check_model_fits(m, test)
    clean, clean_source = defender_clean_set(m, train, clean_fraction, seed)
    before = _metrics(loaded.model, test, atk) if measure_before else {}
    started = time.perf_counter()
    monitor = None if curve_samples == 0 else make_monitor(test, atk, curve_samples, seed)
    repaired = mitigation.repair(loaded.model, clean, monitor=monitor)
    wall = time.perf_counter() - started
    repaired.model.cpu()  # saved as CPU tensors, whatever device repaired it
    after = _metrics(repaired.model, test, atk)
    info = {k: v for k, v in repaired.info.items() if k not in ("wall_time_s",)}
    # The repaired file goes back to users: clean metrics only, never ASR or the spec.
    training = {
        "defense": {"name": defense, "params": mitigation.params(), "clean_fraction": clean_fraction,
                    "clean_samples": len(clean), "clean_source": clean_source, "seed": seed, "details": info},
        "repaired_from": {"path": str(model_path), "tensors_sha256": m.tensors_sha256, "training": m.training},
        "metrics": {"clean_accuracy": after["clean_accuracy"]}, "versions": versions(),
        "wall_time_s": round(wall, 3), "device": describe_device(dev),
    }
    manifest = save_model(out, repaired.model, Manifest(
        architecture=m.architecture, arch_args=m.arch_args, dataset=m.dataset, input_shape=m.input_shape,
        num_classes=m.num_classes, class_names=m.class_names, training=training))
    png, jsonl = curve_paths(out)
    write_jsonl(jsonl, [{"defense": defense, "model": str(model_path), **row} for row in repaired.curve])
    png = plot_defense_curve(png, repaired.curve, defense, title=f"{defense} on {Path(model_path).name}",
                             chosen=info.get("fraction_pruned"))
    return DefenseResult(defense, str(model_path), out, mitigation.params(), len(clean), before, after, png, jsonl,
                         round(wall, 3), manifest.tensors_sha256, info, seed)


# -- the comparison ---------------------------------------------------------------------------------
COLUMNS = ["model", "defense", "clean_accuracy", "attack_success_rate", "clean_drop_points", "fraction_pruned",
           "epsilon", "wall_time_s"]
FORMATS = {"clean_accuracy": ".4f", "attack_success_rate": ".4f", "clean_drop_points": "+.2f",
           "fraction_pruned": ".3f", "epsilon": ".2f", "wall_time_s": ".1f"}


def _subject(path: Path, spec: Path | None = None) -> tuple[Path, Path]:
    spec = spec or path.with_name(path.name.removesuffix(".safetensors") + ".attack.json")
    for p in (path, spec):
        if not p.is_file():
            raise ConfigError(f"{str(p)!r} does not exist; give an existing model file (and its .attack.json)")
    return path, spec


def compare_defenses(
    out_dir: str | Path, *, gtsrb: bool = False, mnist_model: str | Path | None = None,
    mnist_clean_model: str | Path | None = None, gtsrb_model: str | Path | None = None, epochs: int = 4,
    clean_fraction: float = 0.05, seed: int = 0, dp_clip: float = 1.0, dp_noise: float = 0.5, dp_epochs: int = 4,
    dp_batch_size: int = 256, dp_lr: float = 0.1, tune_epochs: int = 10, tune_lr: float = 0.01,
    max_accuracy_drop: float = 0.04, curve_samples: int = 2000, data_root: str | Path | None = None,
    progress: bool = True, overwrite: bool = False, executor: Executor | None = None, device: str = "auto",
) -> dict[str, Any]:
    """Every removal defense on the MNIST BadNets model (pattern trigger, target 7, 10%), on the MNIST
    pruning-aware attack, DP-SGD training on the same poisoned MNIST data, and with `gtsrb` on the GTSRB
    stop-sign model; writes records.jsonl, summary.md/json and figures into `out_dir`.

    Model files given by path are reused (with their `.attack.json`); missing ones are trained into
    `out_dir/models/`. Every (model, mitigation) pair is one sweep job (`defend-compare`) through `executor`
    (records in `out_dir/sweep/`, resumable). `device`: where the BadNets models train and the mitigations that
    take one run (DP-SGD and the pruning-aware attack train on the CPU)."""
    dev = run_device(device, what="defend compare")
    out_dir = check_folder_output(out_dir, inputs=[mnist_model, mnist_clean_model, gtsrb_model], overwrite=overwrite)
    with output_folder(out_dir):
        return _compare(out_dir, gtsrb, mnist_model, mnist_clean_model, gtsrb_model, epochs, clean_fraction, seed,
                        dp_clip, dp_noise, dp_epochs, dp_batch_size, dp_lr, tune_epochs, tune_lr, max_accuracy_drop,
                        curve_samples, data_root, progress, overwrite, executor, dev)


# Per-process caches of the splits a comparison job needs: a pool or Ray worker runs several jobs.
_SPLITS: dict[tuple[str, str, str | None], Dataset] = {}


def _split(dataset: str, split: str, data_root: str | None) -> Dataset:
    key = (dataset, split, data_root)
    if key not in _SPLITS:
        _SPLITS[key] = load_dataset(dataset, split, data_root)
    return _SPLITS[key]


@sweep_job("defend-compare")
def compare_job(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: one mitigation on one model of the comparison; the evaluator's metrics after it and its curve.
    The defense's own wall time (without the evaluator's) goes to the record's per-run part."""
    cfg = ctx.config
    loaded = load_model(ctx.paths["model"])
    if loaded.manifest.tensors_sha256 != cfg["model_sha256"]:
        raise ConfigError(f"model {cfg['model']} changed since the comparison started; run it again")
    atk = spec_for_model(ctx.paths["spec"], loaded.manifest)
    root = ctx.paths.get("data_root")
    test = _split(loaded.manifest.dataset, "test", root)
    clean, _source = defender_clean_set(loaded.manifest, _split(loaded.manifest.dataset, "train", root),
                                        cfg["clean_fraction"], cfg["seed"])
    device = torch.device(cfg["device"])
    mitigation = make_defense(cfg["defense"], cfg["params"], seed=cfg["seed"], progress=False, device=device)
    monitor, spent = _timed(make_monitor(test, atk, cfg["curve_samples"], cfg["seed"]))
    t = time.perf_counter()
    repaired = mitigation.repair(loaded.model, clean, monitor=monitor)
    ctx.run.update(defense_wall_s=time.perf_counter() - t - spent[0], **describe_device(device))
    repaired.model.cpu()
    return {"model": cfg["model"], "defense": cfg["defense"], **_metrics(repaired.model, test, atk),
            "fraction_pruned": repaired.info.get("fraction_pruned"), "curve": repaired.curve}


def _compare(out_dir: Path, gtsrb: bool, mnist_model: Any, mnist_clean_model: Any, gtsrb_model: Any, epochs: int,
             clean_fraction: float, seed: int, dp_clip: float, dp_noise: float, dp_epochs: int, dp_batch_size: int,
             dp_lr: float, tune_epochs: int, tune_lr: float, max_accuracy_drop: float, curve_samples: int,
             data_root: Any, progress: bool, overwrite: bool, executor: Executor | None = None,
             device: torch.device | None = None) -> dict[str, Any]:
    from .training import attack as attack_verb

    models_dir = out_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    device = device if device is not None else torch.device("cpu")
    mnist = {"dataset": "mnist", "model": "badnet-mnist", "epochs": epochs, "seed": seed, "target": 7,
             "trigger": "pattern", "poison_rate": 0.1, "data_root": data_root, "progress": progress}
    subjects: dict[str, tuple[Path, Path, dict[str, Any]]] = {}
    training_times: dict[str, float] = {}

    def trained(name: str, **kw: Any) -> tuple[Path, Path, dict[str, Any]]:
        t = time.perf_counter()
        r = attack_verb(out=models_dir / f"{name}.safetensors", overwrite=overwrite, **kw)
        training_times[name] = time.perf_counter() - t
        return r.path, r.spec_path, r.manifest.training

    if mnist_model is not None:
        p, s = _subject(Path(mnist_model))
        subjects["mnist-badnets"] = (p, s, load_model(p).manifest.training)
    else:
        subjects["mnist-badnets"] = trained("mnist-badnets", kind="badnets", device=str(device), **mnist)
    subjects["mnist-pruning-aware"] = trained("mnist-pruning-aware", kind="pruning-aware", clean_model=mnist_clean_model,
                                              prune_accuracy_drop=max_accuracy_drop, device="cpu", **mnist)
    dp_kw = {**mnist, "epochs": dp_epochs, "batch_size": dp_batch_size, "lr": dp_lr}
    subjects["mnist-badnets-dp-sgd"] = trained("mnist-badnets-dp-sgd", kind="badnets", dp_clip=dp_clip,
                                               dp_noise=dp_noise, device="cpu", **dp_kw)
    if gtsrb:
        if gtsrb_model is not None:
            p, s = _subject(Path(gtsrb_model))
            subjects["gtsrb-stop30"] = (p, s, load_model(p).manifest.training)
        else:
            subjects["gtsrb-stop30"] = trained(
                "gtsrb-stop30", kind="badnets", dataset="gtsrb", model="gtsrb-cnn", epochs=5, seed=seed,
                weight_decay=0.0005, mode="source-specific", sources=(14,), target=1, trigger="square",
                trigger_options={"size": 4, "color": "yellow", "position": (22, 14)}, poison_rate=0.0199,
                data_root=data_root, progress=progress, device=str(device))

    rows, curves = compare_mitigations(
        subjects, out_dir / "sweep", training_times=training_times, clean_fraction=clean_fraction, seed=seed,
        tune_epochs=tune_epochs, tune_lr=tune_lr, max_accuracy_drop=max_accuracy_drop, curve_samples=curve_samples,
        data_root=data_root, progress=progress, executor=executor, device=device)
    config = {"gtsrb": gtsrb, "epochs": epochs, "clean_fraction": clean_fraction, "seed": seed, "dp_clip": dp_clip,
              "dp_noise": dp_noise, "dp_epochs": dp_epochs, "dp_batch_size": dp_batch_size, "dp_lr": dp_lr,
              "tune_epochs": tune_epochs, "tune_lr": tune_lr, "max_accuracy_drop": max_accuracy_drop,
              "curve_samples": curve_samples, "models": {k: str(v[0]) for k, v in subjects.items()},
              "device": str(device)}
    def record(kind: str, row: dict[str, Any]) -> Record:
        metrics = {k: row[k] for k in (*METRIC_KEYS, "wall_time_s") if k in row}
        if "wall_time_s" in metrics:
            metrics["wall_s"] = metrics.pop("wall_time_s")
        rest = {k: v for k, v in row.items() if k not in metrics and k != "wall_time_s"}
        return Record("defend-compare", config, seed, metrics, {"scenario": "removal-defenses", "kind": kind, **rest},
                      versions())

    write_jsonl(out_dir / "records.jsonl", [record("result", r) for r in rows] + [record("curve", c) for c in curves])
    table = markdown_table(rows, COLUMNS, FORMATS)
    (out_dir / "summary.md").write_text(table)
    summary = {"config": config, "rows": rows, "wall_time_s": time.perf_counter() - started, "versions": versions(),
               "device": describe_device(device), "executor": (executor or Executor()).describe()}
    (out_dir / "summary.json").write_text(json.dumps(json_safe(summary), indent=1, sort_keys=True))
    figures = plot_comparison(out_dir, rows, curves)
    return {**summary, "table": table, "figures": [str(f) for f in figures]}


def compare_mitigations(subjects: dict[str, tuple[Path, Path, dict[str, Any]]], folder: Path, *,
                        training_times: dict[str, float] | None = None, clean_fraction: float = 0.05, seed: int = 0,
                        tune_epochs: int = 10, tune_lr: float = 0.01, max_accuracy_drop: float = 0.04,
                        curve_samples: int = 2000, data_root: Any = None, progress: bool = True,
                        executor: Executor | None = None, device: torch.device | None = None,
                        defenses: tuple[str, ...] = REMOVAL_DEFENSES) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every mitigation of `defenses` on every model of `subjects` (name -> (model file, attack spec, training
    record)), one sweep job per pair through `executor` (records in `folder`, resumable): the rows of the
    comparison table (a baseline row per model first) and the curves. A DP-SGD model is a defense itself: its
    baseline row only."""
    device = device if device is not None else torch.device("cpu")
    training_times = training_times or {}
    rows: list[dict[str, Any]] = []
    jobs: list[Job] = []
    bases: dict[str, dict[str, float]] = {}
    root = None if data_root is None else str(Path(data_root).resolve())
    for name, (path, spec, training) in subjects.items():
        loaded = load_model(path)
        atk = spec_for_model(spec, loaded.manifest)
        base = bases[name] = _metrics(loaded.model, _split(loaded.manifest.dataset, "test", root), atk)
        privacy = training.get("privacy") or {}
        rows.append({"model": name, "defense": "none" if not privacy else "DP-SGD training", **base,
                     "clean_drop_points": 0.0, "epsilon": privacy.get("epsilon"),
                     "wall_time_s": training_times.get(name, training.get("wall_time_s"))})
        if privacy:  # DP-SGD is the defense here: the mitigations are measured on the non-private models
            continue
        step = max(1, _channels(loaded.model) // 64)
        params = {"pruning": {"max_accuracy_drop": max_accuracy_drop, "step": step},
                  "fine-tuning": {"epochs": tune_epochs, "lr": tune_lr},
                  "fine-pruning": {"max_accuracy_drop": max_accuracy_drop, "epochs": tune_epochs, "lr": tune_lr,
                                   "step": step}}
        for defense in defenses:
            dev = device if "device" in inspect.signature(MITIGATIONS.get(defense)).parameters else torch.device("cpu")
            config = {"model": name, "model_sha256": loaded.manifest.tensors_sha256, "defense": defense,
                      "params": params.get(defense, {}), "clean_fraction": clean_fraction, "seed": seed,
                      "curve_samples": curve_samples, "device": str(dev)}
            paths = {"model": str(Path(path).resolve()), "spec": str(Path(spec).resolve())}
            jobs.append(Job("defend-compare", config, seed=seed, label=f"{name} {defense}",
                            paths=paths | ({"data_root": root} if root else {})))
    result = run_sweep(jobs, folder, executor, progress=progress, desc="defend compare")
    result.raise_for_failures()
    records = result.by_id()
    rows_after: dict[str, list[dict[str, Any]]] = {}
    curves: list[dict[str, Any]] = []
    for job in jobs:
        r = records[job.id]
        name, defense = job.config["model"], job.config["defense"]
        after = {k: r[k] for k in METRIC_KEYS if k in r}
        rows_after.setdefault(name, []).append({
            "model": name, "defense": defense, **after,
            "clean_drop_points": 100 * (after["clean_accuracy"] - bases[name]["clean_accuracy"]),
            "fraction_pruned": r.get("fraction_pruned"), "wall_time_s": r["run"].get("defense_wall_s")})
        curves += [{"model": name, "defense": defense, **row} for row in r["curve"]]
    ordered = []
    for row in rows:  # each model's baseline, then its mitigations
        ordered += [row, *rows_after.get(row["model"], [])]
    return ordered, curves


def _channels(model: nn.Module) -> int:
    return prune_site(model).channels


def _timed(fn: Callable[[nn.Module], dict[str, float]]) -> tuple[Callable[[nn.Module], dict[str, float]], list[float]]:
    spent = [0.0]

    def wrapped(model: nn.Module) -> dict[str, float]:
        t = time.perf_counter()
        try:
            return fn(model)
        finally:
            spent[0] += time.perf_counter() - t

    return wrapped, spent


