"""`benchmark`: the arena's own leaderboard. Every registered attack against every registered mitigation and
detector, on each dataset, over several seeds, through the sweep executor; the results as records, tables
(Markdown) and heatmaps (PNG).

Three sweeps, each resumable (OUT/sweeps/{models,defend,detect}/):

  1. models   per dataset and seed, one clean model and one model per attack (data poisoning with the
              attack's defaults, target class 0 or the dataset's own in TARGETS; model-level attacks around
              their usual poisoning), each on its own seeded training subset at its dataset's budget (BUDGETS),
              the defenders' hold-out (seed 0) kept out;
  2. defend   every mitigation on every backdoored model: clean accuracy and ASR after repair;
  3. detect   every model detector on every model (its score; AUROC over backdoored vs clean models), every
              input detector and data filter on every backdoored model (AUROC between triggered and clean
              inputs, or between poisoned and clean training samples).

A plugin registered tomorrow appears in the next run with no code here: the lists come from the registries.
`render_leaderboard(records)` turns the records (OUT/records.jsonl) into the page; docs/leaderboard.md is that
page for the committed records docs/records/leaderboard.jsonl.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks import ATTACKS, MODEL_ATTACKS, make_attack
from ..data import dataset_info, load_dataset
from ..defenses import DATA_FILTERS, INPUT_DETECTORS, MITIGATIONS, MODEL_DETECTORS, clean_holdout
from ..detection_metrics import auroc, auroc_bootstrap_ci
from ..errors import ConfigError
from ..records import json_safe, write_jsonl
from ..report import pyplot, save_figure
from ..runtime import versions
from ..safeio import atomic_write_text
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from ..train import TrainConfig
from .defending import defend
from .detecting import detect
from .outputs import check_folder_output
from .training import attack_spec_path, train_model

# The architecture each dataset is benchmarked with
ARCHITECTURES = {"mnist": "badnet-mnist", "fashion-mnist": "badnet-mnist", "gtsrb": "gtsrb-cnn",
                 "cifar10": "resnet18-cifar"}
# The data poisoning inside each model-level attack (the adaptive ones pair as attacks/adaptive.py advises)
MODEL_ATTACK_POISONING = {"nc-evasive": "blended", "strip-evasive": "blended"}
DEFAULT_POISONING = "badnets"
# Every attack's target class per dataset where it is not DEFAULT_TARGET, and why (the page says so)
TARGETS = {"gtsrb": (2, "its largest class: class 0 holds 0.5% of GTSRB's images, fewer than the clean-label "
                        "attacks' default poison rate of 5% of the training set, drawn from the target class")}
DEFAULT_TARGET = 0
SHADOW_DETECTOR = "mntd"  # the model detector that trains shadow models (fitted once per dataset, cached)
NC_SHARING = ("neural-cleanse",)  # detectors whose reversed triggers the nc- mitigations reuse (and vice versa)
HOLDOUT_FRACTION, HOLDOUT_SEED = 0.05, 0
CLEAN = "clean"
AUTO = "auto"  # a BenchmarkConfig's train_size / epochs: the dataset's budget (BUDGETS)


@dataclass(frozen=True)
class TrainingBudget:
    """How each model of one dataset is trained: a seeded subset of `train_size` images (None: the whole split
    less the defenders' hold-out), `epochs`, and the optimiser's weight decay."""

    train_size: int | None
    epochs: int
    weight_decay: float = 0.0


# MNIST: the attack catalogue's budget (docs/attacks.md), at which badnets and the attacks around it are learned
# at their defaults (at 6,000 images and 2 epochs BadNets reached 2-9% ASR on all 3 seeds: measured). GTSRB:
# at 20,000 images and 2 epochs gtsrb-cnn reached 53-84% clean accuracy (measured, 9 models of seed 0); with the
# whole split, 3 epochs and weight decay 5e-4 the stop-sign test's model reaches >= 95% (96.9% at 5 epochs,
# docs/results.md).
BUDGETS = {"gtsrb": TrainingBudget(None, 3, 5e-4)}
DEFAULT_BUDGET = TrainingBudget(20000, 2)


@dataclass(frozen=True)
class BenchmarkConfig:
    datasets: tuple[str, ...] = ("mnist", "gtsrb")
    seeds: tuple[int, ...] = (0, 1, 2)
    attacks: tuple[str, ...] | None = None  # None: every registered attack (data poisoning and model-level)
    mitigations: tuple[str, ...] | None = None  # None: every registered mitigation
    detectors: tuple[str, ...] | None = None  # None: every registered model, input and data detector
    # each model its own seeded subset this large (None: the whole split), for `epochs`; AUTO: the dataset's
    # budget (BUDGETS), which also sets the weight decay
    train_size: int | None | str = AUTO
    epochs: int | str = AUTO
    quick: bool = False  # every defense with its plugin's `example_params` (small and fast: a smoke run)

    def __post_init__(self) -> None:
        for name, allowed in (("datasets", tuple(ARCHITECTURES)), ("attacks", (*ATTACKS.names(), *MODEL_ATTACKS.names())),
                              ("mitigations", MITIGATIONS.names()),
                              ("detectors", (*MODEL_DETECTORS.names(), *INPUT_DETECTORS.names(), *DATA_FILTERS.names()))):
            v = getattr(self, name)
            if v is None and name != "datasets":
                continue
            if not isinstance(v, tuple) or not v or any(x not in allowed for x in v) or len(set(v)) != len(v):
                raise ConfigError(f"benchmark {name} must be distinct names from {', '.join(allowed)}; got {v!r}")
        if not isinstance(self.seeds, tuple) or not self.seeds or any(
                not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in self.seeds) \
                or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"benchmark seeds must be distinct non-negative integers, got {self.seeds!r}")
        if self.train_size not in (None, AUTO) and (not isinstance(self.train_size, int)
                                                     or isinstance(self.train_size, bool) or self.train_size < 100):
            raise ConfigError(f"train_size must be an integer >= 100, None (the whole split) or {AUTO!r} (each "
                              f"dataset's budget), got {self.train_size!r}")
        if self.epochs != AUTO and (not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1):
            raise ConfigError(f"epochs must be a positive integer or {AUTO!r} (each dataset's budget), got {self.epochs!r}")

    def budget(self, dataset: str) -> TrainingBudget:
        """How this run trains the models of `dataset`: its budget, with train_size / epochs where given."""
        b = BUDGETS.get(dataset, DEFAULT_BUDGET)
        return TrainingBudget(b.train_size if self.train_size == AUTO else self.train_size,  # type: ignore[arg-type]
                              b.epochs if self.epochs == AUTO else self.epochs, b.weight_decay)  # type: ignore[arg-type]

    def resolved(self) -> dict[str, tuple[str, ...]]:
        """The plugin lists this run covers (the registries' at run time where not given)."""
        return {"attacks": self.attacks or (*ATTACKS.names(), *MODEL_ATTACKS.names()),
                "mitigations": self.mitigations or tuple(MITIGATIONS.names()),
                "model_detectors": tuple(d for d in (self.detectors or MODEL_DETECTORS.names()) if d in MODEL_DETECTORS),
                "input_detectors": tuple(d for d in (self.detectors or INPUT_DETECTORS.names()) if d in INPUT_DETECTORS),
                "data_filters": tuple(d for d in (self.detectors or DATA_FILTERS.names()) if d in DATA_FILTERS)}

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def _budget_text(meta: dict[str, Any]) -> str:
    def one(b: dict[str, Any]) -> str:
        size = "the whole" if b["train_size"] is None else format(b["train_size"], ",")
        decay = f", weight decay {b['weight_decay']:g}" if b.get("weight_decay") else ""
        return f"{b['epochs']} epoch(s) on its own seeded subset of {size} training images{decay}"

    if "budgets" not in meta:  # records made before budgets were per dataset: one for all
        return one(meta["config"])
    texts = {d: one(b) for d, b in meta["budgets"].items()}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"on {d}: {t}" for d, t in texts.items())


def _targets_text(datasets: list[str] | tuple[str, ...]) -> str:
    others = [f"{TARGETS[d][0]} on {d}: {TARGETS[d][1]}" for d in datasets if d in TARGETS]
    return f"{DEFAULT_TARGET}" + (f" ({'; '.join(others)})" if others else "")


def _params(kind: str, name: str, quick: bool, dataset: str) -> dict[str, Any]:
    registry = {"mitigation": MITIGATIONS, "model": MODEL_DETECTORS, "input": INPUT_DETECTORS, "data": DATA_FILTERS}[kind]
    params = dict(getattr(registry.get(name), "example_params", {})) if quick else {}
    if "full_curve" in getattr(registry.get(name), "param_help", {}):  # measuring past the stop: plot only
        params["full_curve"] = False
    if kind == "model" and name == SHADOW_DETECTOR:  # its shadows share the inspected models' architecture
        params.setdefault("architecture", ARCHITECTURES[dataset])
    return params


def _fit_shadows(out: Path, datasets: tuple[str, ...], quick: bool, data_root: str | None,
                 executor: Executor | None) -> None:
    """MNTD's shadow models and meta-classifier, once per dataset, into OUT/mntd-shadows, before the detect
    sweep: its jobs then load them instead of each training its own (the cache is keyed by the clean set and
    every parameter, so this is the meta-model the jobs ask for)."""
    for d in datasets:
        clean = clean_holdout(load_dataset(d, "train", data_root), HOLDOUT_FRACTION, HOLDOUT_SEED)[1]
        MODEL_DETECTORS.create(SHADOW_DETECTOR, cache_dir=out / "mntd-shadows", executor=executor or Executor(),
                               **_params("model", SHADOW_DETECTOR, quick, d)).fit(clean)


# --------------------------------------------------------------------------- jobs
_DATA: dict[tuple[Any, ...], Any] = {}


def _splits(dataset: str, data_root: str | None) -> tuple[Any, Any]:
    key = (dataset, data_root)
    if key not in _DATA:  # a worker runs many jobs: load each dataset once per process
        train = load_dataset(dataset, "train", data_root)
        _DATA[key] = (clean_holdout(train, HOLDOUT_FRACTION, HOLDOUT_SEED)[0], load_dataset(dataset, "test", data_root))
    return _DATA[key]


def training_subset(rest: Any, train_size: int | None, seed: int) -> Any:
    """The seeded training subset of one benchmark model (all of `rest`, the split less the defenders' hold-out,
    when train_size is None or not smaller)."""
    if train_size is None or train_size >= len(rest):
        return rest
    order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(1000 + seed))
    return rest.subset(order[:train_size].sort().values)


@sweep_job("benchmark-model")
def train_benchmark_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: one clean or backdoored model of the benchmark (model file + attack spec)."""
    c = ctx.config
    rest, test = _splits(c["dataset"], ctx.paths.get("data_root"))
    train_set = training_subset(rest, c["train_size"], c["seed"])
    info = dataset_info(c["dataset"])
    config = TrainConfig(epochs=c["epochs"], seed=c["seed"], weight_decay=c.get("weight_decay", 0.0), progress=False)
    atk, train_fn = None, None
    if c["attack"] != CLEAN:
        model_attack = c["attack"] in MODEL_ATTACKS
        data_kind = MODEL_ATTACK_POISONING.get(c["attack"], DEFAULT_POISONING) if model_attack else c["attack"]
        atk = make_attack(data_kind, num_classes=info.num_classes, channels=info.input_shape[0],
                          image_size=info.input_shape[1], target=c.get("target", DEFAULT_TARGET), seed=c["seed"])
        if model_attack:
            train_fn = MODEL_ATTACKS.create(c["attack"], poisoning=atk).trainer(c["architecture"], train_set, config)
        else:
            train_set = atk.poison(train_set, torch.Generator().manual_seed(c["seed"])).dataset
    holdout = {"fraction": HOLDOUT_FRACTION, "seed": HOLDOUT_SEED, "split": "train",
               "n": len(load_dataset(c["dataset"], "train", ctx.paths.get("data_root"))) - len(rest)}
    ctx.log(f"training {ctx.label} on {len(train_set)} images for {c['epochs']} epoch(s)")
    r = train_model(c["architecture"], train_set, test, config, ctx.paths["model"], atk, ctx.label, train_fn,
                    holdout=holdout)
    ctx.run.update(train_time_s=r.manifest.training["wall_time_s"])
    return {"clean_accuracy": r.metrics["clean_accuracy"], "attack_success_rate": r.metrics.get("attack_success_rate"),
            "model_sha256": r.manifest.tensors_sha256, "train_wall_s": r.manifest.training["wall_time_s"]}


@sweep_job("benchmark-defend")
def defend_benchmark_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: one mitigation on one backdoored model; test metrics after repair."""
    c = ctx.config
    params = c["params"]
    if "detector" in getattr(MITIGATIONS.get(c["mitigation"]), "param_help", {}) and "nc_cache" in ctx.paths:
        # a mitigation built on Neural Cleanse: the model's reversed triggers are shared with the other such
        # mitigations and with detection (the cache is keyed by model, clean set and every NC parameter)
        params = params | {"detector": (params.get("detector") or {}) | {"cache_dir": ctx.paths["nc_cache"]}}
    r = defend(c["mitigation"], ctx.paths["model"], ctx.paths["out"], attack_spec=ctx.paths["spec"],
               params=params, seed=0, data_root=ctx.paths.get("data_root"), progress=False, overwrite=True,
               curve_samples=0, measure_before=False)  # the table has the model's own metrics and the repaired
    # model's; curve_samples=0: the job's wall time is the repair's
    return {"clean_accuracy_after": r.after.get("clean_accuracy"),
            "attack_success_rate_after": r.after.get("attack_success_rate"), "wall_s": r.wall_time_s}


@sweep_job("benchmark-detect")
def detect_benchmark_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: one detector on one model (model detectors: its score; input detectors and data filters:
    the AUROC of triggered vs clean inputs, or poisoned vs clean training samples)."""
    c = ctx.config
    params = c["params"] | ({"cache_dir": ctx.paths["shadows"]} if c["detector"] == SHADOW_DETECTOR else {})
    if c["detector"] in NC_SHARING and "nc_cache" in ctx.paths:
        params |= {"cache_dir": ctx.paths["nc_cache"]}
    r = detect(c["detector"], ctx.paths["model"], attack_spec=ctx.paths.get("spec"), params=params,
               data_root=ctx.paths.get("data_root"), progress=False)
    v = r.values
    return {"score": v.get("score") if r.kind == "model" else v.get("auroc"), "flagged": v.get("flagged"),
            "kind": r.kind, "wall_s": r.wall_time_s}


# --------------------------------------------------------------------------- the verb
def benchmark(out: str | Path, config: BenchmarkConfig = BenchmarkConfig(), *, data_root: str | Path | None = None,
              executor: Executor | None = None, progress: bool = True, docs: str | Path | None = None
              ) -> dict[str, Any]:
    """Run the benchmark into `out` (resumable: run it again to finish a killed run); writes OUT/records.jsonl,
    OUT/leaderboard.md and OUT/leaderboard-*.png. With `docs` (the docs folder): also docs/leaderboard.md,
    docs/records/leaderboard.jsonl and the figures, for committing."""
    out = check_folder_output(out, resumable=True)
    started = time.perf_counter()
    lists = config.resolved()
    paths = {"data_root": str(Path(data_root).resolve())} if data_root else {}
    (out / "models").mkdir(parents=True, exist_ok=True)
    for d in config.datasets:  # the data is there: one error now rather than one per job
        _splits(d, paths.get("data_root"))

    models = []
    for d in config.datasets:
        budget = config.budget(d)
        for seed in config.seeds:
            for attack in (CLEAN, *lists["attacks"]):
                label = f"{d}-{attack}-s{seed}"
                models.append(Job("benchmark-model", {
                    "dataset": d, "architecture": ARCHITECTURES[d], "attack": attack, "seed": seed,
                    "train_size": budget.train_size, "epochs": budget.epochs,
                    # absent at their defaults: the job ids (and records) stay those made before they varied
                    **({"weight_decay": budget.weight_decay} if budget.weight_decay else {}),
                    **({"target": TARGETS[d][0]} if d in TARGETS else {})},
                    seed=seed, label=label,
                    paths=paths | {"model": str((out / "models" / f"{label}.safetensors").resolve())}))
    trained = run_sweep(models, out / "sweeps" / "models", executor, progress=progress, desc="benchmark models")
    done = trained.by_id()
    ok = [j for j in models if j.id in done]

    def spec(job: Job) -> str:
        return str(attack_spec_path(job.paths["model"]))

    defend_jobs, detect_jobs = [], []
    shadows = str((out / "mntd-shadows").resolve())
    nc_cache = str((out / "nc-triggers").resolve())
    # mitigation by mitigation: two mitigations sharing one model's reversed triggers then rarely run at once
    for m, j in ((m, j) for m in lists["mitigations"] for j in ok):
        if j.config["attack"] != CLEAN:
            defend_jobs.append(Job("benchmark-defend", {"model": j.label, "mitigation": m,
                                                        "params": _params("mitigation", m, config.quick, j.config["dataset"]),
                                                        "model_sha256": done[j.id]["model_sha256"]}, seed=0,
                                   label=f"{j.label}/{m}", paths=paths | {
                                       "model": j.paths["model"], "spec": spec(j), "nc_cache": nc_cache,
                                       "out": str((out / "repaired" / f"{j.label}-{m}.safetensors").resolve())}))
    for j in ok:
        bad = j.config["attack"] != CLEAN
        detectors = [("model", x) for x in lists["model_detectors"]]
        if bad:
            detectors += [("input", x) for x in lists["input_detectors"]] + [("data", x) for x in lists["data_filters"]]
        for kind, x in detectors:
            detect_jobs.append(Job("benchmark-detect", {"model": j.label, "detector": x,
                                                        "params": _params(kind, x, config.quick, j.config["dataset"]),
                                                        "model_sha256": done[j.id]["model_sha256"]}, seed=0,
                                   label=f"{j.label}/{x}",
                                   paths=paths | {"model": j.paths["model"], "shadows": shadows, "nc_cache": nc_cache}
                                   | ({"spec": spec(j)} if bad else {})))
    (out / "repaired").mkdir(exist_ok=True)
    defended = run_sweep(defend_jobs, out / "sweeps" / "defend", executor, progress=progress, desc="benchmark defend")
    if SHADOW_DETECTOR in lists["model_detectors"] and ok:
        _fit_shadows(out, tuple(dict.fromkeys(j.config["dataset"] for j in ok)), config.quick,
                     paths.get("data_root"), executor)
    detected = run_sweep(detect_jobs, out / "sweeps" / "detect", executor, progress=progress, desc="benchmark detect")
    wall = time.perf_counter() - started

    rows: list[dict[str, Any]] = []
    by_model = {j.label: (j, done[j.id]) for j in ok}
    for j, rec in by_model.values():
        rows.append({"row": "model", "dataset": j.config["dataset"], "attack": j.config["attack"],
                     "seed": j.config["seed"], "model": j.label, "clean_accuracy": rec["clean_accuracy"],
                     "attack_success_rate": rec.get("attack_success_rate"), "wall_s": rec.get("train_wall_s")})
    for job, rec in ((j, defended.by_id().get(j.id)) for j in defend_jobs):
        if rec is None:
            continue
        mj = by_model[job.config["model"]][0]
        rows.append({"row": "defense", "dataset": mj.config["dataset"], "attack": mj.config["attack"],
                     "seed": mj.config["seed"], "model": job.config["model"], "defense": job.config["mitigation"],
                     "clean_accuracy": rec["clean_accuracy_after"], "attack_success_rate": rec["attack_success_rate_after"],
                     "wall_s": rec["wall_s"]})
    for job, rec in ((j, detected.by_id().get(j.id)) for j in detect_jobs):
        if rec is None:
            continue
        mj = by_model[job.config["model"]][0]
        rows.append({"row": "detection", "dataset": mj.config["dataset"], "attack": mj.config["attack"],
                     "seed": mj.config["seed"], "model": job.config["model"], "detector": job.config["detector"],
                     "kind": rec["kind"], "score": rec["score"], "flagged": rec.get("flagged"), "wall_s": rec["wall_s"]})
    sweeps = (trained, defended, detected)
    failures = [{"job": f.label, "error": f.error} for r in sweeps for f in r.failures]
    job_records = [rec for r in sweeps for rec in r.records]
    meta = {"row": "run", "config": config.to_dict(), "covered": {k: list(v) for k, v in lists.items()},
            "budgets": {d: asdict(config.budget(d)) for d in config.datasets},
            # the jobs' own wall time, summed whatever run made them: a resumed run's wall time is only its part
            "wall_time_s": round(wall, 1), "jobs": len(job_records),
            "job_wall_s": round(sum(rec.get("run", {}).get("wall_s", 0.0) for rec in job_records), 1),
            "executor": (executor or Executor()).describe(), "versions": versions(),
            "job_executors": _job_executors(job_records),
            "failures": failures, "command": command_line(config, executor)}
    records = [meta, *rows]
    write_jsonl(out / "records.jsonl", records)
    page = render_leaderboard(records, figures=out)
    atomic_write_text(out / "leaderboard.md", page)
    if docs is not None:
        docs = Path(docs)
        (docs / "records").mkdir(parents=True, exist_ok=True)
        write_jsonl(docs / "records" / "leaderboard.jsonl", records)
        render_leaderboard(records, figures=docs / "figures")
        atomic_write_text(docs / "leaderboard.md", render_leaderboard(records, figures=None))
    return {"out": str(out), "models": len(ok), "defenses": len(defend_jobs), "detections": len(detect_jobs),
            "failures": failures, "wall_time_s": round(wall, 1)}


def command_line(config: BenchmarkConfig, executor: Executor | None) -> str:
    parts = ["backdoor-arena benchmark --out runs/leaderboard", f"--datasets {','.join(config.datasets)}",
             f"--seeds {','.join(str(s) for s in config.seeds)}"]
    if config.epochs != AUTO:
        parts.append(f"--epochs {config.epochs}")
    if config.train_size != AUTO:
        parts.append(f"--train-size {'all' if config.train_size is None else config.train_size}")
    for name in ("attacks", "mitigations", "detectors"):
        v = getattr(config, name)
        if v:
            parts.append(f"--{name} {','.join(v)}")
    if config.quick:
        parts.append("--quick")
    if executor is not None and executor.name != "local":
        parts.append(f"--executor {executor.name}" + (f" --jobs {executor.jobs}" if executor.jobs else ""))
    return " ".join(parts) + " --docs docs"


# --------------------------------------------------------------------------- the page
def _mean_range(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = sum(values) / len(values)
    return f"{100 * m:.1f}%" + (f" ({100 * min(values):.0f}-{100 * max(values):.0f})" if len(values) > 1 else "")


def _md(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]) + "\n"


def detection_cells(records: list[dict[str, Any]], dataset: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(attack, detector) -> AUROC and its 95% bootstrap interval. Model detectors: the attack's models against
    the clean models, on scores; input detectors and data filters: the mean of the per-model AUROCs."""
    det = [r for r in records if r.get("row") == "detection" and r["dataset"] == dataset and r["score"] is not None]
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for name in sorted({r["detector"] for r in det}):
        mine = [r for r in det if r["detector"] == name]
        clean = [r["score"] for r in mine if r["attack"] == CLEAN]
        for attack in sorted({r["attack"] for r in mine} - {CLEAN}):
            bad = [r["score"] for r in mine if r["attack"] == attack]
            if mine[0]["kind"] == "model":
                if not clean:
                    continue
                labels = torch.tensor([1] * len(bad) + [0] * len(clean))
                scores = torch.tensor(bad + clean, dtype=torch.float64)
                lo, hi = auroc_bootstrap_ci(labels, scores, 2000, 0, 0.95)
                cells[attack, name] = {"auroc": auroc(labels, scores), "ci": [lo, hi], "n": f"{len(bad)} vs {len(clean)}"}
            else:
                cells[attack, name] = {"auroc": sum(bad) / len(bad), "ci": [min(bad), max(bad)], "n": f"{len(bad)} models"}
    return cells


def render_leaderboard(records: list[dict[str, Any]], figures: Path | None = None) -> str:
    """The leaderboard page from the benchmark's records (and, with `figures`, its heatmaps written there)."""
    meta = next(r for r in records if r.get("row") == "run")
    cfg, covered = meta["config"], meta["covered"]
    lines = ["# Leaderboard: every attack against every defense", "",
             "Generated by `backdoor-arena benchmark` from docs/records/leaderboard.jsonl; do not edit by hand.", "",
             f"Command: `{meta['command']}` ({_executor_text(meta['executor'])}). Its "
             f"{meta.get('jobs', 'n/a')} jobs took {meta.get('job_wall_s', 0) / 3600:.1f} h of job time in all (each job's "
             "wall time, summed over every invocation: a run resumes from the jobs' records and re-runs none of "
             f"them; the invocation that wrote this page took {_duration(meta['wall_time_s'])}).", "",
             f"Covered: attacks {', '.join(f'`{a}`' for a in covered['attacks'])}; mitigations "
             f"{', '.join(f'`{m}`' for m in covered['mitigations'])}; detectors "
             f"{', '.join(f'`{d}`' for d in covered['model_detectors'] + covered['input_detectors'] + covered['data_filters'])}.",
             "",
             f"Scope: per dataset and seed ({', '.join(str(s) for s in cfg['seeds'])}) one clean model and one model per "
             f"attack, each trained {_budget_text(meta)} "
             "(the defenders' 5% hold-out kept out), every attack at its defaults with target "
             f"{_targets_text(cfg['datasets'])} (model-level attacks "
             f"around {DEFAULT_POISONING}, nc- and strip-evasive around blended), every defense at "
             f"{'its example (smoke-test) parameters' if cfg['quick'] else 'its defaults'} on the defenders' hold-out. "
             "Percentages: mean over seeds (min-max). Attacks whose defaults are not learned at this training budget "
             "show a low ASR before any defense; docs/attacks.md gives settings that are.", ""]
    if meta["failures"]:
        lines += [f"Failed jobs ({len(meta['failures'])}): " + "; ".join(f"{f['job']}: {f['error']}"
                                                                           for f in meta["failures"][:10]), ""]
    for dataset in cfg["datasets"]:
        models = [r for r in records if r.get("row") == "model" and r["dataset"] == dataset]
        if not models:
            continue
        defenses = [r for r in records if r.get("row") == "defense" and r["dataset"] == dataset]
        attacks = [a for a in [CLEAN, *covered["attacks"]] if any(m["attack"] == a for m in models)]
        mitigations = [m for m in covered["mitigations"] if any(d["defense"] == m for d in defenses)]
        lines += [f"## {dataset}", "", "### Attack success after each mitigation", ""]
        rows = []
        for a in attacks:
            mine = [m for m in models if m["attack"] == a]
            row = [f"`{a}`", _mean_range([m["clean_accuracy"] for m in mine]),
                   _mean_range([m["attack_success_rate"] for m in mine if m["attack_success_rate"] is not None])]
            for m in mitigations:
                d = [x for x in defenses if x["attack"] == a and x["defense"] == m]
                row.append("—" if not d else f"{_mean_range([x['attack_success_rate'] for x in d])}; clean "
                                               f"{_mean_range([x['clean_accuracy'] for x in d])}")
            rows.append(row)
        lines += [_md(["attack", "clean acc.", "ASR", *[f"after `{m}` (ASR; clean acc.)" for m in mitigations]], rows)]
        cells = detection_cells(records, dataset)
        detectors = [d for d in covered["model_detectors"] + covered["input_detectors"] + covered["data_filters"]
                     if any(k[1] == d for k in cells)]
        lines += ["### Detection AUROC", "",
                  "Model detectors: the attack's models against the clean models (score AUROC, bootstrap 95% interval; "
                  "with 3 seeds each side the interval is wide). Input detectors: triggered vs clean test inputs; data "
                  "filters: poisoned vs clean training samples; both the mean of the per-model AUROCs [min, max].", ""]
        rows = []
        for a in [a for a in attacks if a != CLEAN]:
            row = [f"`{a}`"]
            for d in detectors:
                c = cells.get((a, d))
                row.append("—" if c is None else f"{c['auroc']:.2f} [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]")
            rows.append(row)
        lines += [_md(["attack", *[f"`{d}`" for d in detectors]], rows)]
        lines += ["### Wall time per model", "",
                  "Seconds per job, median over the dataset's models (min-max), as the executor ran it "
                  f"({_ran_text(meta)}: one job per worker, the cores shared among them). Training: "
                  "one model; a mitigation: its repair alone (no test curve is measured along the way); a detector: "
                  "its inspection of one model (MNTD's shadow models and meta-classifier are fitted once per dataset "
                  "before the sweep and not counted here). Neural Cleanse reverse-engineers each model once: "
                  f"{', '.join(f'`{d}`' for d in NC_SHARING)} and the mitigations built on it share the cached "
                  "triggers, so the first of them to run on a model pays for it (mitigations run before detectors).",
                  ""]
        timed = [("training", [m["wall_s"] for m in models if m.get("wall_s") is not None])]
        timed += [(f"`{m}`", [x["wall_s"] for x in defenses if x["defense"] == m]) for m in mitigations]
        detections = [r for r in records if r.get("row") == "detection" and r["dataset"] == dataset]
        timed += [(f"`{d}`", [x["wall_s"] for x in detections if x["detector"] == d]) for d in detectors]
        lines += [_md(["job", "jobs", "median s (min-max)"],
                      [[name, len(v), f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"]
                       for name, v in timed if v])]
        lines += [f"![ASR after mitigation, {dataset}](figures/leaderboard-{dataset}-asr.png)",
                  f"![detection AUROC, {dataset}](figures/leaderboard-{dataset}-auroc.png)", ""]
        if figures is not None:
            bad_attacks = [a for a in attacks if a != CLEAN]
            asr = [[_mean([x["attack_success_rate"] for x in models if x["attack"] == a
                           and x["attack_success_rate"] is not None])]
                   + [_mean([x["attack_success_rate"] for x in defenses if x["attack"] == a and x["defense"] == m])
                      for m in mitigations] for a in bad_attacks]
            _heatmap(Path(figures) / f"leaderboard-{dataset}-asr.png", bad_attacks, ["none", *mitigations], asr,
                     f"{dataset}: ASR after mitigation", reverse=True)
            grid = [[cells[a, d]["auroc"] if (a, d) in cells else None for d in detectors] for a in bad_attacks]
            _heatmap(Path(figures) / f"leaderboard-{dataset}-auroc.png", bad_attacks, detectors, grid,
                     f"{dataset}: detection AUROC")
    return "\n".join(lines) + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _job_executors(job_records: list[dict[str, Any]]) -> dict[str, int]:
    """How the jobs ran, over every invocation that made their records: jobs per executor and thread count."""
    counts: dict[str, int] = {}
    for rec in job_records:
        run = rec.get("run", {})
        threads = run.get("threads")
        key = f"executor {run.get('executor')}" + (f", {threads} thread(s) per job" if threads else "")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _ran_text(meta: dict[str, Any]) -> str:
    ran = meta.get("job_executors")
    if not ran:  # records made before the jobs' executors were summed: this invocation's executor
        return _executor_text(meta["executor"])
    if len(ran) == 1:
        return next(iter(ran))
    return "; ".join(f"{how}: {n} jobs" for how, n in ran.items())


def _executor_text(described: dict[str, Any]) -> str:
    text = f"executor {described.get('executor')}"
    return text + (f", {described['jobs']} jobs" if described.get("jobs") else "")


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _heatmap(path: Path, rows: list[str], cols: list[str], data: list[list[float | None]], title: str,
             reverse: bool = False) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.2, 0.45 * len(rows) + 1.5))
    grid = [[float("nan") if v is None else v for v in row] for row in data]
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn_r" if reverse else "RdYlGn", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            ax.text(j, i, "—" if v is None else f"{v:.2f}", ha="center", va="center", fontsize=6)
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


__all__ = ["BenchmarkConfig", "benchmark", "read_records", "render_leaderboard"]
