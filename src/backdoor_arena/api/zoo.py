"""A model zoo: seeded clean and backdoored models for measuring detectors, and their evaluation.

Layout of a zoo folder (the attack specs live apart from the model files, as a defender receives them):

    DIR/models/model-NN.safetensors   every model, names shuffled so that a name reveals nothing
    DIR/specs/model-NN.attack.json    the attack spec of each backdoored model (evaluator only)
    DIR/specs/truth.jsonl             one record per model: its plan entry (family, optimiser, epochs,
                                      attack parameters), clean accuracy, ASR, training time
    DIR/specs/sweep/                  the build's sweep: one record and one log per model (backdoor_arena.sweep)
    DIR/zoo.json                      how the zoo was built (config, seed, versions, device, executor, wall time)

Every model is one sweep job (`zoo-model`), every detector run on a model another (`zoo-detect`): both verbs
run through an executor (local, a process pool, Ray) and resume a killed run from the jobs' records.

The plan (`zoo_plan`) varies what a detector should not care about: optimiser (SGD lr 0.05 or Adam lr 1e-3,
balanced), epochs (uniform in [epochs, max_epochs]), seed and training subset (each model its own seeded
subset of `train_size` images). Backdoored models cycle over the attack families (`FAMILIES`: square,
pattern, pixel, blended, all-to-all, source-specific) so that every family appears once the zoo has as
many backdoored models as families, with targets, sizes (up to 8), positions (corners, bottom-centre,
centre), poisoning rates and blend weights drawn from a seeded generator.

`evaluate_zoo` runs a model detector on every model (the detector sees the model and a clean hold-out of
the training split only), then compares its continuous scores with the truth: AUROC with a stratified
bootstrap interval, TPR at 5% FPR, the verdicts' FPR and TPR at the detector's own threshold with Wilson
intervals, per-family AUROC/TPR (each family against all clean models), per-optimiser FPR of the clean
models, target-label accuracy, and a ROC plot; every number carries its group's size beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks import MODEL_ATTACKS, make_attack
from ..data import dataset_info, load_dataset
from ..defenses import MODEL_DETECTORS, clean_holdout
from ..detection_metrics import auroc, auroc_bootstrap_ci, tpr_at_fpr, wilson_interval
from ..errors import ConfigError, ModelFileError
from ..modelfile import load_model, read_manifest
from ..records import json_safe, write_jsonl
from ..report import markdown_table, plot_roc
from ..runtime import describe_device, resolve_device, versions
from ..safeio import atomic_write_text, check_regular_file, output_folder, read_text, shown
from ..schemas import NAMED_POSITIONS, TruthRecord, loads_json, validate
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from ..train import OPTIMIZERS, TrainConfig
from .outputs import check_folder_output
from .training import defender_clean_set, train_model

# Learning rates per optimiser (both with the cosine schedule, batch 64): the project's SGD setting, and
# Adam's usual 1e-3 (badnet-mnist reaches ~97% test accuracy in 2 epochs on 15,000 images with either).
OPTIMIZER_LR = {"sgd": 0.05, "adam": 1e-3}
# Attack families: a trigger kind in the all-to-one mode, or a label-map mode (with a patch trigger).
DEFAULT_FAMILIES = ("square", "pattern", "pixel", "blended", "all-to-all", "source-specific")
# Families a zoo may also name: more patch shapes, the stealthy attacks at settings that MNIST models learn in
# a few epochs (docs/attacks.md), and the adaptive attacks of attacks/adaptive.py around a data poisoning.
EXTRA_FAMILIES = ("hollow-square", "x", "wanet", "invisible", "nc-evasive", "strip-evasive", "tdc-evasive")
FAMILIES = DEFAULT_FAMILIES + EXTRA_FAMILIES
PATCH_TRIGGERS = ("square", "pattern")
OUTLINE_TRIGGERS = ("hollow-square", "x")
WANET_STRENGTHS = (4.0, 6.0)  # the official 0.5 is not learned by MNIST models in a few epochs (docs/attacks.md)
INVISIBLE_EPSILONS = (16 / 255, 32 / 255)  # 8/255 was not learned in 2 epochs on 12,000 images (zoo trial)
# The adaptive attacks and the data poisoning inside each (NC and STRIP evasion pair with a large trigger)
EVASIVE_POISONING = {"nc-evasive": "blended", "strip-evasive": "blended", "tdc-evasive": "badnets"}
SIZES = (3, 4, 5, 6, 8)
POSITIONS = NAMED_POSITIONS  # the four corners, bottom-center and center
PIXEL_POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left")  # one white pixel on a stroke is no trigger
POISON_RATES = (0.05, 0.1)
BLEND_ALPHAS = (0.1, 0.2)
COVER_RATES = (0.0, 0.05)  # source-specific: without, and with TaCT's cover samples
SOURCE_SPECIFIC_RATE = 0.05  # of the training set, drawn from two source classes (~20% of it)


def family_of(record: dict[str, Any]) -> str:
    """The family of a truth record (zoos built before families were recorded: the trigger kind)."""
    if record.get("family"):
        return str(record["family"])
    return str(record.get("trigger") or "backdoored") if record.get("backdoored") else "clean"


@dataclass(frozen=True)
class ZooConfig:
    dataset: str = "mnist"
    architecture: str = "badnet-mnist"
    clean: int = 10
    backdoored: int = 10
    epochs: int = 2  # every model's epochs; with max_epochs, the smallest of a uniform draw
    train_size: int | None = None  # each model trains on its own seeded subset this large (None: all of it)
    seed: int = 0
    clean_fraction: float = 0.05  # the defenders' hold-out, excluded from training
    max_epochs: int | None = None  # epochs drawn per model, uniform in [epochs, max_epochs]
    optimizers: tuple[str, ...] = ("sgd", "adam")  # balanced over the clean models and within each family
    families: tuple[str, ...] = DEFAULT_FAMILIES  # the backdoored models cycle over these (any of FAMILIES)
    # seed of the defenders' hold-out (None: `seed`); zoos that share it share their defenders' clean set, so
    # detectors that learn from it (MNTD) score models of several zoos alike
    holdout_seed: int | None = None
    # what the backdoored models' attacks draw from (one value: every model gets it); a zoo built to compare
    # families at similar attack success narrows these to settings every family learns
    poison_rates: tuple[float, ...] = POISON_RATES
    blend_alphas: tuple[float, ...] = BLEND_ALPHAS
    patch_sizes: tuple[int, ...] = SIZES

    def __post_init__(self) -> None:
        for name in ("clean", "backdoored"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer number of models, got {v!r}")
        if self.clean + self.backdoored < 1:
            raise ConfigError("a zoo needs at least one model: raise --clean or --backdoored")
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 1:
            raise ConfigError(f"epochs must be a positive integer, got {self.epochs!r}")
        if self.max_epochs is not None and (not isinstance(self.max_epochs, int) or isinstance(self.max_epochs, bool)
                                            or self.max_epochs < self.epochs):
            raise ConfigError(f"max_epochs must be an integer >= epochs ({self.epochs}) or None, got "
                              f"{self.max_epochs!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 100):
            raise ConfigError(f"train_size must be an integer >= 100 (or None for all), got {self.train_size!r}")
        if self.holdout_seed is not None and (not isinstance(self.holdout_seed, int) or isinstance(self.holdout_seed, bool)
                                              or self.holdout_seed < 0):
            raise ConfigError(f"holdout_seed must be a non-negative integer or None, got {self.holdout_seed!r}")
        if not 0 < self.clean_fraction < 1:
            raise ConfigError(f"clean_fraction must be in (0, 1), got {self.clean_fraction!r}")
        for name, allowed in (("optimizers", OPTIMIZERS), ("families", FAMILIES)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or any(x not in allowed for x in v) or len(set(v)) != len(v):
                raise ConfigError(f"{name} must be a non-empty tuple of distinct names from {', '.join(allowed)}; "
                                  f"got {v!r}")

        for name, example in (("poison_rates", POISON_RATES), ("blend_alphas", BLEND_ALPHAS)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or any(
                    not isinstance(x, (int, float)) or isinstance(x, bool) or not 0 < x < 1 for x in v):
                raise ConfigError(f"{name} must be a non-empty tuple of numbers in (0, 1), got {v!r}; e.g. {example}")
        side = dataset_info(self.dataset).input_shape[-1]
        if not isinstance(self.patch_sizes, tuple) or not self.patch_sizes or any(
                not isinstance(x, int) or isinstance(x, bool) or not 1 <= x <= side // 2 for x in self.patch_sizes):
            raise ConfigError(f"patch_sizes must be a non-empty tuple of integers from 1 to {side // 2} (half the "
                              f"image side), got {self.patch_sizes!r}; e.g. {SIZES}")

    def to_dict(self) -> dict[str, Any]:
        return json_safe(asdict(self))


def _balanced(n: int, options: tuple, g: torch.Generator) -> list:
    """n choices from `options`, each used floor(n / k) or ceil(n / k) times, in a seeded order."""
    pool = [options[i % len(options)] for i in range(n)]
    return [pool[i] for i in torch.randperm(n, generator=g).tolist()]


def zoo_plan(config: ZooConfig) -> list[dict[str, Any]]:
    """The seeded list of models to build, clean ones first. Every entry: name, seed, backdoored, family,
    optimizer, lr, epochs, subset_seed; backdoored ones also the attack (badnets or blended), mode,
    target (None for all-to-all), sources, trigger, size, position, poison_rate, alpha, cover_rate."""
    info = dataset_info(config.dataset)
    g = torch.Generator().manual_seed(config.seed)
    n = config.clean + config.backdoored
    names = [f"model-{i:02d}" for i in torch.randperm(n, generator=g).tolist()]

    def pick(options: tuple) -> Any:
        return options[int(torch.randint(len(options), (1,), generator=g))]

    def epochs() -> int:
        top = config.max_epochs or config.epochs
        return config.epochs + int(torch.randint(top - config.epochs + 1, (1,), generator=g))

    clean_opts = _balanced(config.clean, config.optimizers, g)
    family_order = [config.families[i] for i in torch.randperm(len(config.families), generator=g).tolist()]
    # within each family the optimisers alternate, from a seeded start
    start = {f: int(torch.randint(len(config.optimizers), (1,), generator=g)) for f in family_order}
    plan: list[dict[str, Any]] = []
    for i in range(n):
        seed = config.seed * 1000 + i
        backdoored = i >= config.clean
        if backdoored:
            j = i - config.clean
            family = family_order[j % len(family_order)]
            optimizer = config.optimizers[(start[family] + j // len(family_order)) % len(config.optimizers)]
        else:
            family, optimizer = "clean", clean_opts[i]
        entry: dict[str, Any] = {"name": names[i], "seed": seed, "backdoored": backdoored, "family": family,
                                 "optimizer": optimizer, "lr": OPTIMIZER_LR[optimizer], "epochs": epochs(),
                                 "subset_seed": seed}
        if backdoored:
            entry.update(_attack_entry(family, info.num_classes, config, pick, g))
        plan.append(entry)
    return plan


def _attack_entry(family: str, num_classes: int, config: ZooConfig, pick: Any, g: torch.Generator
                  ) -> dict[str, Any]:
    target = int(torch.randint(num_classes, (1,), generator=g))
    e: dict[str, Any] = {"attack": "badnets", "mode": "all-to-one", "target": target, "sources": [],
                         "trigger": None, "size": None, "position": None, "poison_rate": pick(config.poison_rates),
                         "alpha": None, "cover_rate": 0.0}
    if family in PATCH_TRIGGERS:
        e.update(trigger=family, size=pick(config.patch_sizes), position=pick(POSITIONS))
    elif family == "pixel":
        e.update(trigger="pixel", position=pick(PIXEL_POSITIONS))
    elif family == "blended":
        e.update(attack="blended", trigger="blend", alpha=pick(config.blend_alphas))
    elif family in EXTRA_FAMILIES:  # new keys only for new families: older zoos' plans stay as they were
        e.update(_extra_entry(family, config, pick))
    else:  # a label-map mode with a patch trigger
        e.update(mode=family, trigger=pick(PATCH_TRIGGERS), size=pick(config.patch_sizes), position=pick(POSITIONS))
        if family == "all-to-all":
            e["target"] = None  # label i -> i + 1: no single target
        else:
            others = [c for c in range(num_classes) if c != target]
            chosen = torch.randperm(len(others), generator=g)[:2].sort().values.tolist()
            e.update(sources=[others[c] for c in chosen], poison_rate=SOURCE_SPECIFIC_RATE,
                     cover_rate=pick(COVER_RATES))
    return e


def _extra_entry(family: str, config: ZooConfig, pick: Any) -> dict[str, Any]:
    e: dict[str, Any] = {"trigger_options": {}, "attack_params": {}, "model_attack": None}
    if family in OUTLINE_TRIGGERS:
        e.update(trigger=family, size=pick(config.patch_sizes), position=pick(POSITIONS))
    elif family == "wanet":
        e.update(attack="wanet", trigger="warp", trigger_options={"strength": pick(WANET_STRENGTHS)},
                 attack_params={"cross_ratio": 0.0})
    elif family == "invisible":
        e.update(attack="invisible", trigger="perturbation", trigger_options={"epsilon": pick(INVISIBLE_EPSILONS)})
    else:  # an adaptive attack around a data poisoning
        e["model_attack"] = family
        if EVASIVE_POISONING[family] == "blended":
            e.update(attack="blended", trigger="blend", alpha=pick(config.blend_alphas))
        else:
            e.update(trigger="pattern", size=pick(config.patch_sizes), position=pick(POSITIONS))
    return e


def _make_attack(entry: dict[str, Any], info: Any) -> Any:
    options: dict[str, Any] = dict(entry.get("trigger_options") or {})
    if entry["trigger"] in PATCH_TRIGGERS + OUTLINE_TRIGGERS:
        options = {"size": entry["size"], "position": entry["position"]}
    elif entry["trigger"] == "pixel":
        options = {"position": entry["position"]}
    elif entry["trigger"] == "blend":
        options = {"alpha": entry["alpha"], "seed": entry["seed"]}
    elif entry["trigger"] in ("warp", "perturbation"):
        options["seed"] = entry["seed"]
    return make_attack(entry["attack"], num_classes=info.num_classes, channels=info.input_shape[0],
                       image_size=info.input_shape[1], trigger=None if entry["attack"] == "blended" else entry["trigger"],
                       trigger_options=options, **dict(entry.get("attack_params") or {}), target=entry["target"] if entry["target"] is not None else 0,
                       mode=entry["mode"], sources=tuple(entry["sources"]), poison_rate=entry["poison_rate"],
                       cover_rate=entry["cover_rate"], seed=entry["seed"])


# The per-process caches of the data a zoo job needs: a pool or Ray worker runs many jobs, and reloading
# MNIST for each would cost more than training a small model.
_ZOO_DATA: dict[tuple[Any, ...], Any] = {}


def _zoo_data(dataset: str, clean_fraction: float, seed: int, data_root: str | None) -> tuple[Any, Any]:
    """(training split without the defenders' hold-out, test split), cached per process."""
    key = ("build", dataset, clean_fraction, seed, data_root)
    if key not in _ZOO_DATA:
        train_full = load_dataset(dataset, "train", data_root)
        rest, _held = clean_holdout(train_full, clean_fraction, seed)  # the defenders' data stays out
        _ZOO_DATA[key] = (rest, load_dataset(dataset, "test", data_root))
    return _ZOO_DATA[key]


def _train_split(dataset: str, data_root: str | None) -> Any:
    key = ("train", dataset, data_root)
    if key not in _ZOO_DATA:
        _ZOO_DATA[key] = load_dataset(dataset, "train", data_root)
    return _ZOO_DATA[key]


def _defender_holdout(dataset: str, clean_fraction: float, seed: int, data_root: str | None) -> Any:
    key = ("holdout", dataset, clean_fraction, seed, data_root)
    if key not in _ZOO_DATA:
        _ZOO_DATA[key] = clean_holdout(load_dataset(dataset, "train", data_root), clean_fraction, seed)[1]
    return _ZOO_DATA[key]


@sweep_job("zoo-model")
def train_zoo_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: train one model of a zoo plan into ZOO/models/, its attack spec into ZOO/specs/."""
    cfg, entry = ctx.config["zoo"], ctx.config["entry"]
    out = Path(ctx.paths["zoo"])
    hseed = cfg.get("holdout_seed", cfg["seed"])
    rest, test = _zoo_data(cfg["dataset"], cfg["clean_fraction"], hseed, ctx.paths.get("data_root"))
    train_config = TrainConfig(epochs=entry["epochs"], optimizer=entry["optimizer"], lr=entry["lr"],
                               seed=entry["seed"], progress=False)
    train_set = rest
    if cfg["train_size"] is not None and cfg["train_size"] < len(rest):  # each model its own subset
        order = torch.randperm(len(rest), generator=torch.Generator().manual_seed(entry["subset_seed"]))
        train_set = rest.subset(order[: cfg["train_size"]].sort().values)
    atk, train_fn = None, None
    if entry["backdoored"]:
        atk = _make_attack(entry, dataset_info(cfg["dataset"]))
        if entry.get("model_attack"):  # an adaptive attack poisons inside its own training loop
            train_fn = MODEL_ATTACKS.create(entry["model_attack"], poisoning=atk).trainer(
                cfg["architecture"], train_set, train_config)
        else:
            train_set = atk.poison(train_set, torch.Generator().manual_seed(entry["seed"])).dataset
    ctx.log(f"training {entry['name']} on {len(train_set)} images for {entry['epochs']} epoch(s), {entry['optimizer']}")
    # the manifest names the hold-out the model never saw, so that scans draw the defender's clean set from it
    held = len(_defender_holdout(cfg["dataset"], cfg["clean_fraction"], hseed, ctx.paths.get("data_root")))
    holdout = {"fraction": cfg["clean_fraction"], "seed": hseed, "split": "train", "n": held}
    # model-level attacks train on the CPU only so far (train_model refuses another device for them)
    dev = torch.device(ctx.config["device"]) if train_fn is None else torch.device("cpu")
    r = train_model(cfg["architecture"], train_set, test, train_config, out / "models" / f"{entry['name']}.safetensors",
                    atk, entry["name"], train_fn, holdout=holdout, device=dev)
    if r.spec_path is not None:
        shutil.move(str(r.spec_path), out / "specs" / r.spec_path.name)  # keep specs apart from models
    ctx.run.update(train_time_s=r.manifest.training["wall_time_s"], **describe_device(torch.device(ctx.config["device"])))
    ctx.log(f"clean accuracy {r.metrics['clean_accuracy']:.4f}, ASR {r.metrics.get('attack_success_rate')}")
    return {"model": entry["name"], "clean_accuracy": r.metrics["clean_accuracy"],
            "attack_success_rate": r.metrics.get("attack_success_rate"), "model_sha256": r.manifest.tensors_sha256}


def build_zoo(out: str | Path, config: ZooConfig = ZooConfig(), *, data_root: str | Path | None = None,
              progress: bool = True, executor: Executor | None = None, device: str = "auto") -> list[dict[str, Any]]:
    """Train every model of the plan into `out`, one sweep job per model through `executor` (default: one at a
    time in this process; `Executor("processes", jobs=N)` or `Executor("ray", ...)` in parallel). A zoo folder
    resumes: models with a truth record or a complete sweep record (OUT/specs/sweep/) are kept, so a killed
    build continues where it stopped. An existing folder must be empty or a zoo (specs/truth.jsonl or
    specs/sweep/), so a typo cannot fill another folder. `device`: auto | cpu | cuda[:N] | mps, where the
    models train (the adaptive families' model-level attacks: the CPU), recorded in each manifest."""
    out = check_folder_output(out, resumable=True)
    if out.is_dir() and any(out.iterdir()) and not (out / "specs" / "truth.jsonl").is_file() and \
            not (out / "specs" / "sweep" / "records").is_dir():
        raise ConfigError(f"--out {shown(out)} holds files but is not a zoo folder (no specs/truth.jsonl); choose an "
                          "empty or new folder, or an existing zoo to resume")
    dev = resolve_device(device, supported=("cpu", "cuda", "mps"), what="zoo build")
    with output_folder(out):  # a build that fails before any model is trained leaves nothing behind
        jobs, done = _prepare_build(out, config, data_root, str(dev))
    # from here the folder holds resumable work: kept when a job fails or the build is interrupted
    return _build(out, config, jobs, done, executor, progress, str(dev))


def _prepare_build(out: Path, config: ZooConfig, data_root: str | Path | None,
                   device: str) -> tuple[list[Job], dict[str, dict[str, Any]]]:
    (out / "models").mkdir(parents=True, exist_ok=True)
    (out / "specs").mkdir(parents=True, exist_ok=True)
    plan = zoo_plan(config)
    truth_path = out / "specs" / "truth.jsonl"
    done = {r["name"]: r for r in read_truth(out)} if truth_path.exists() else {}
    for entry in plan:  # a zoo resumes only with the plan it was built with: never a mixture of two plans
        old = done.get(entry["name"])
        if old is not None:
            differ = sorted(k for k, v in json_safe(entry).items() if old.get(k) != v)
            if differ:
                raise ConfigError(f"the zoo in {shown(out)} was built with other settings ({entry['name']}: "
                                  f"{', '.join(differ)} differ); resume it with the settings it was built with, or "
                                  "choose a new folder")
    zoo = {"dataset": config.dataset, "architecture": config.architecture, "train_size": config.train_size,
           "clean_fraction": config.clean_fraction, "seed": config.seed}
    hseed = config.seed if config.holdout_seed is None else config.holdout_seed
    if config.holdout_seed is not None:  # (absent otherwise: older zoos' job ids stay as they were)
        zoo["holdout_seed"] = config.holdout_seed
    paths = {"zoo": str(out.resolve())} | ({"data_root": str(Path(data_root).resolve())} if data_root else {})
    jobs = []
    for entry in plan:
        model = out / "models" / f"{entry['name']}.safetensors"
        if entry["name"] in done and model.exists():
            continue
        job = Job("zoo-model", {"zoo": zoo, "entry": entry, "device": device}, seed=entry["seed"],
                  label=entry["name"], paths=paths)
        if not model.exists():  # a record whose model file is gone is not a finished job
            (out / "specs" / "sweep" / "records" / f"{job.id}.json").unlink(missing_ok=True)
        jobs.append(job)
    if jobs:  # the data is there (one error now rather than one per job); in-process jobs reuse it
        _zoo_data(config.dataset, config.clean_fraction, hseed, paths.get("data_root"))
    return jobs, done


def _build(out: Path, config: ZooConfig, jobs: list[Job], done: dict[str, dict[str, Any]], executor: Executor | None,
           progress: bool, device: str) -> list[dict[str, Any]]:
    plan = zoo_plan(config)
    started = time.perf_counter()
    result = run_sweep(jobs, out / "specs" / "sweep", executor, progress=progress, desc="zoo") if jobs else None
    if result is not None:
        finished = result.by_id()
        for job in jobs:
            if job.id not in finished:
                continue
            rec = finished[job.id]
            done[job.label] = {**job.config["entry"], "clean_accuracy": rec["clean_accuracy"],
                               "attack_success_rate": rec["attack_success_rate"],
                               "train_time_s": rec["run"].get("train_time_s")}
        write_jsonl(out / "specs" / "truth.jsonl", sorted(done.values(), key=lambda x: x["name"]))
        result.raise_for_failures()
    records = [done[e["name"]] for e in plan]
    if result is None and (out / "zoo.json").is_file():
        return records  # nothing was trained: zoo.json keeps the wall time of the run that built the zoo
    atomic_write_text(out / "zoo.json", json.dumps(json_safe({
        "config": config.to_dict(), "models": len(plan), "versions": versions(), "device": device,
        "executor": (executor or Executor()).describe(), "wall_time_s": round(time.perf_counter() - started, 3),
    }), indent=1, allow_nan=False))
    return records


def read_truth(zoo_dir: str | Path) -> list[dict[str, Any]]:
    """The validated truth records of a zoo folder: strict JSON objects, model names confined to
    DIR/models/, no name twice, at least one record."""
    zoo_dir = Path(zoo_dir)
    path = zoo_dir / "specs" / "truth.jsonl"
    if not zoo_dir.is_dir() or not os.path.lexists(path):
        raise ConfigError(f"{shown(zoo_dir)} is not a zoo folder (no specs/truth.jsonl); build one with "
                          "`backdoor-arena zoo build`")
    text = read_text(path, "zoo truth file")
    records = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        what = f"zoo truth file {shown(path)} line {i}"
        raw = loads_json(line, what)
        if not isinstance(raw, dict):
            raise ConfigError(f"{what}: each line must be a JSON object, got {type(raw).__name__}")
        records.append(validate(TruthRecord, raw, what).model_dump())
    if not records:
        raise ConfigError(f"zoo truth file {shown(path)} has no records; rebuild the zoo with `backdoor-arena zoo build`")
    names = [r["name"] for r in records]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"zoo truth file {shown(path)} names model(s) {twice} twice; each model once")
    return records


@sweep_job("zoo-detect")
def detect_zoo_model(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: run a model detector on one zoo model (it sees the model and the defenders' hold-out only)."""
    cfg = ctx.config
    loaded = load_model(Path(ctx.paths["zoo"]) / "models" / f"{cfg['model']}.safetensors")
    if loaded.manifest.tensors_sha256 != cfg["model_sha256"]:
        raise ModelFileError(f"zoo model {cfg['model']} changed since the evaluation started; run it again")
    # the slice the model never saw, as its manifest records it (zoos built before that record: the seeded slice)
    held, _ = defender_clean_set(loaded.manifest, _train_split(loaded.manifest.dataset, ctx.paths.get("data_root")),
                                 cfg["clean_fraction"], cfg["seed"])
    det = MODEL_DETECTORS.create(cfg["detector"], **cfg["params"])
    started = time.perf_counter()
    verdict = det.inspect(loaded.model, held)
    ctx.run.update(detect_time_s=round(time.perf_counter() - started, 3),
                   **describe_device(torch.device(cfg["device"])))
    return {"model": cfg["model"], "score": float(verdict.score), "flagged": bool(verdict.flagged),
            "threshold": float(verdict.threshold), "suspected_target": verdict.suspected_target}


def evaluate_zoo(zoo_dir: str | Path, detector: str = "neural-cleanse", *, params: dict[str, Any] | None = None,
                 clean_fraction: float = 0.05, seed: int = 0, fpr: float = 0.05, data_root: str | Path | None = None,
                 progress: bool = True, out: str | Path | None = None, overwrite: bool = False,
                 n_boot: int = 2000, level: float = 0.95, executor: Executor | None = None,
                 device: str = "auto") -> dict[str, Any]:
    """Run a model detector on every zoo model; AUROC on its continuous scores (with a seeded bootstrap
    interval), TPR at `fpr`, verdict rates with Wilson intervals, per family and per optimiser, target
    accuracy. `seed` seeds the defender's hold-out and the bootstrap. One sweep job per model through
    `executor`; an evaluation folder that holds a sweep (OUT/sweep/) resumes, keeping the models already
    scored with the same detector, parameters and model file. `device`: auto | cpu (detectors run on the CPU).

    Writes DIR/eval-<detector>/{scores.jsonl, summary.json, roc.png, scores.md} (or into `out`).
    """
    zoo_dir = Path(zoo_dir)
    truth = read_truth(zoo_dir)
    if not 0 < fpr < 1:
        raise ConfigError(f"fpr must be in (0, 1), got {fpr!r}")
    if not isinstance(n_boot, int) or isinstance(n_boot, bool) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}")
    if not isinstance(level, (int, float)) or isinstance(level, bool) or not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level!r}")
    MODEL_DETECTORS.create(detector, **(params or {}))  # bad parameters fail here, before any job starts
    dev = resolve_device(device, supported=("cpu",), what="zoo evaluate")
    out = Path(out if out is not None else zoo_dir / f"eval-{detector}")
    out = check_folder_output(out, overwrite=overwrite, resumable=(out / "sweep" / "records").is_dir())
    manifests = {}
    for rec in truth:  # every model file exists before any detector time is spent
        path = check_regular_file(zoo_dir / "models" / f"{rec['name']}.safetensors", "zoo model file", ModelFileError)
        manifests[rec["name"]] = read_manifest(path)
    paths = {"zoo": str(zoo_dir.resolve())} | ({"data_root": str(Path(data_root).resolve())} if data_root else {})
    jobs = [Job("zoo-detect", {"detector": detector, "params": params or {}, "clean_fraction": clean_fraction,
                               "seed": seed, "model": rec["name"],
                               "model_sha256": manifests[rec["name"]].tensors_sha256,
                               "device": str(dev)}, seed=seed, label=rec["name"], paths=paths) for rec in truth]
    with output_folder(out):  # the defenders' data is there: one error now rather than one per job
        for dataset in sorted({m.dataset for m in manifests.values()}):
            _defender_holdout(dataset, clean_fraction, seed, paths.get("data_root"))
    result = run_sweep(jobs, out / "sweep", executor, progress=progress, desc=f"zoo {detector}")
    result.raise_for_failures()
    return _evaluate(zoo_dir, truth, jobs, result.by_id(), detector, params, clean_fraction, seed, fpr, out, n_boot,
                     level, str(dev), executor)


def _evaluate(zoo_dir: Path, truth: list[dict[str, Any]], jobs: list[Job], records: dict[str, dict[str, Any]],
              detector: str, params: dict[str, Any] | None, clean_fraction: float, seed: int, fpr: float, out: Path,
              n_boot: int, level: float, device: str, executor: Executor | None) -> dict[str, Any]:
    rows = []
    for rec, job in zip(truth, jobs, strict=True):
        r = records[job.id]
        rows.append({
            "name": rec["name"], "backdoored": bool(rec["backdoored"]), "family": family_of(rec),
            "optimizer": rec.get("optimizer"), "epochs": rec.get("epochs"), "mode": rec.get("mode"),
            "target": rec.get("target"), "trigger": rec.get("trigger"), "size": rec.get("size"),
            "position": rec.get("position"), "clean_accuracy": rec.get("clean_accuracy"),
            "attack_success_rate": rec.get("attack_success_rate"),
            "score": r["score"], "flagged": r["flagged"], "threshold": r["threshold"],
            "suspected_target": r["suspected_target"], "detect_time_s": r["run"].get("detect_time_s"),
        })
    write_jsonl(out / "scores.jsonl", rows)
    summary = summarize(rows, fpr, n_boot=n_boot, seed=seed, level=level)
    summary.update({"detector": detector, "params": params or {}, "clean_fraction": clean_fraction, "seed": seed,
                    "zoo": str(zoo_dir), "versions": versions(), "device": device,
                    "executor": (executor or Executor()).describe()})
    summary = json_safe(summary)  # AUROC is undefined (null) without both classes; never a bare NaN
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1, sort_keys=True, allow_nan=False))
    shown_auroc = "undefined" if summary["auroc"] is None else f"{summary['auroc']:.3f}"
    plot_roc(out / "roc.png", rows, f"{detector} on {summary['n_clean']} clean + {summary['n_backdoored']} "
             f"backdoored zoo models (AUROC {shown_auroc})")
    (out / "scores.md").write_text(markdown_table(
        rows, ["name", "backdoored", "family", "optimizer", "epochs", "target", "size", "position", "score", "flagged",
               "suspected_target"], {"score": ".3f"}))
    summary["out"] = str(out)
    return summary


def _rate(k: int, n: int, level: float) -> dict[str, Any]:
    """A proportion k / n with its Wilson interval (NaN and no interval when n = 0)."""
    if n == 0:
        return {"k": 0, "n": 0, "rate": float("nan"), "ci": [float("nan"), float("nan")]}
    return {"k": k, "n": n, "rate": k / n, "ci": list(wilson_interval(k, n, level))}


def _separation(bad: list[dict[str, Any]], clean: list[dict[str, Any]], n_boot: int, seed: int,
                level: float) -> dict[str, Any]:
    """AUROC of `bad` against `clean` on the scores, with its bootstrap interval (NaN without both)."""
    if not bad or not clean:
        return {"auroc": float("nan"), "auroc_ci": [float("nan"), float("nan")]}
    labels = torch.tensor([1] * len(bad) + [0] * len(clean))
    scores = torch.tensor([r["score"] for r in bad + clean], dtype=torch.float64)
    return {"auroc": auroc(labels, scores), "auroc_ci": list(auroc_bootstrap_ci(labels, scores, n_boot, seed, level))}


def _targets(bad: list[dict[str, Any]]) -> dict[str, Any]:
    """Among backdoored models with one target (not all-to-all): how often the suspected label is it."""
    with_target = [r for r in bad if r.get("target") is not None]
    hits = sum(r["suspected_target"] == r["target"] for r in with_target)
    return {"target_accuracy": hits / len(with_target) if with_target else float("nan"),
            "n_with_target": len(with_target), "n_target_hits": hits}


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {"min": float("nan"), "median": float("nan"), "max": float("nan")}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(rows: list[dict[str, Any]], fpr: float = 0.05, *, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95, min_asr: float = 0.5) -> dict[str, Any]:
    """AUROC (with a stratified bootstrap interval at `level`, `n_boot` replicates from `seed`) and TPR@FPR
    on the scores (never the verdicts); the verdicts' FPR and TPR at the detector's threshold with Wilson
    intervals; the same per family (each family against all clean models), for the backdoored models whose
    backdoor was learned (`effective`: attack success rate >= `min_asr`; a backdoor that did not take is
    not there to be found), and per optimiser of the clean models; target accuracy. Every group states its
    size (n_clean, n_backdoored, n)."""
    labels = torch.tensor([r["backdoored"] for r in rows], dtype=torch.long)
    scores = torch.tensor([r["score"] for r in rows], dtype=torch.float64)
    both = bool(labels.any()) and bool((labels == 0).any())
    bad = [r for r in rows if r["backdoored"]]
    clean = [r for r in rows if not r["backdoored"]]
    flagged_bad = [r for r in bad if r["flagged"]]
    fp, tp = _rate(sum(r["flagged"] for r in clean), len(clean), level), _rate(len(flagged_bad), len(bad), level)
    flagged_with_target = [r for r in flagged_bad if r.get("target") is not None]
    summary: dict[str, Any] = {
        "n_clean": len(clean), "n_backdoored": len(bad),
        **_separation(bad, clean, n_boot, seed, level),
        f"tpr_at_{round(100 * fpr)}pct_fpr": tpr_at_fpr(labels, scores, fpr) if both else float("nan"),
        "threshold": rows[0]["threshold"] if rows else float("nan"),
        "verdict_tpr": tp["rate"], "verdict_tpr_ci": tp["ci"], "n_backdoored_flagged": tp["k"],
        "verdict_fpr": fp["rate"], "verdict_fpr_ci": fp["ci"], "n_clean_flagged": fp["k"],
        # among backdoored models with a single target, and among those flagged: suspected label = target?
        **_targets(bad),
        "target_accuracy_flagged": (sum(r["suspected_target"] == r["target"] for r in flagged_with_target)
                                    / len(flagged_with_target) if flagged_with_target else float("nan")),
        "clean_scores": _spread([r["score"] for r in clean]),
        "backdoored_scores": _spread([r["score"] for r in bad]),
        "ci_level": level, "n_boot": n_boot, "bootstrap": "stratified percentile", "rate_interval": "wilson",
    }
    learned = [r for r in bad if r.get("attack_success_rate") is not None and r["attack_success_rate"] >= min_asr]
    hit = _rate(sum(r["flagged"] for r in learned), len(learned), level)
    summary["effective"] = {"min_asr": min_asr, "n_backdoored": len(learned), "n_clean": len(clean),
                            **_separation(learned, clean, n_boot, seed, level), "verdict_tpr": hit["rate"],
                            "verdict_tpr_ci": hit["ci"], "n_flagged": hit["k"], **_targets(learned)}
    families = sorted({r.get("family") or "backdoored" for r in bad})
    summary["per_family"] = {}
    for fam in families:
        members = [r for r in bad if (r.get("family") or "backdoored") == fam]
        hit = _rate(sum(r["flagged"] for r in members), len(members), level)
        summary["per_family"][fam] = {
            "n_backdoored": len(members), "n_clean": len(clean), **_separation(members, clean, n_boot, seed, level),
            "verdict_tpr": hit["rate"], "verdict_tpr_ci": hit["ci"], "n_flagged": hit["k"], **_targets(members),
            "scores": _spread([r["score"] for r in members]),
            "n_learned": sum(r.get("attack_success_rate") is not None and r["attack_success_rate"] >= min_asr
                             for r in members),
        }
    summary["clean_by_optimizer"] = {}
    for opt in sorted({str(r.get("optimizer")) for r in clean}):
        members = [r for r in clean if str(r.get("optimizer")) == opt]
        false = _rate(sum(r["flagged"] for r in members), len(members), level)
        summary["clean_by_optimizer"][opt] = {"n_clean": len(members), "verdict_fpr": false["rate"],
                                              "verdict_fpr_ci": false["ci"], "n_flagged": false["k"],
                                              "scores": _spread([r["score"] for r in members])}
    return summary
