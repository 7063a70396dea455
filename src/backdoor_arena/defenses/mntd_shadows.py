"""MNTD's shadow zoo: clean models and jumbo-backdoored ones, trained by the defender on its clean set.

Jumbo learning (Xu et al., S&P 2021; the official `random_troj_setting('jumbo')`): every backdoored shadow
draws its own trigger from a distribution over families, sizes, positions, transparencies and targets, so
that a meta-classifier trained on the shadows learns what backdoors have in common rather than one trigger.
Families (`JUMBO_FAMILIES`):

  mask      MNTD's: a random binary mask of 1 .. p^2 - 1 pixels in a p x p window, p in {2, 3, 4, 5}
  square    the project's filled square (triggers.py), side in {2 .. 6}
  pattern   the project's checkerboard, side in {2 .. 6}
  pixel     the project's single pixel (opaque)
  blend     a full-image uniform-noise pattern blended with alpha ~ U(0.05, 0.2)

Patch families take alpha ~ U(0.2, 0.6), with alpha >= 0.5 made opaque (alpha = 1), at a uniform position;
a window of the image becomes (1 - alpha m) x + alpha m patch, m the mask. The target is uniform over
the classes and the poisoning rate uniform in [0.05, 0.5] (substitution: the poisoned rows replace their
originals, relabelled), as in the official code. Every trigger is rebuilt from its JSON spec (the seed of
its random pattern included), so a shadow's spec is all that is needed to reproduce it.

Shadows are cached as model files (safetensors with a JSON manifest, `modelfile.save_model`) whose manifest
carries the shadow's spec; `build_shadows` skips a shadow whose file exists and verifies (hashes, spec,
architecture), so an interrupted build resumes. Each shadow to train is one sweep job (`mntd-shadow`,
backdoor_arena.sweep) run through an executor (local, a process pool, Ray): the job writes the shadow's file,
its record (the file's tensor hash) goes to FOLDER/sweep/. Workers of another process read the defender's
clean set from FOLDER/clean-set-<digest>.data (safetensors), written once by the driver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.dataset import Dataset, DatasetInfo, to_float
from ..errors import ArenaError, ConfigError
from ..modelfile import Manifest, read_manifest, read_tensors, save_model, tensors_sha256
from ..models import build_model
from ..sweep import Executor, Job, JobContext, run_sweep, sweep_job
from ..train import TrainConfig, create_model, fit
from ..triggers import make_trigger

JUMBO_FAMILIES = ("mask", "square", "pattern", "pixel", "blend")
# Learning rates per optimiser: the values of api/zoo.py's OPTIMIZER_LR (defenses sit below the api layer)
SHADOW_LR = {"sgd": 0.05, "adam": 1e-3}
POISON_RATES = (0.05, 0.5)  # the official jumbo range (for 100 training epochs)


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _choice(g: torch.Generator, options: tuple | list) -> Any:
    return options[int(torch.randint(len(options), (), generator=g))]


def jumbo_trigger(family: str, num_classes: int, image_size: int, g: torch.Generator,
                  poison_rates: tuple[float, float] = POISON_RATES) -> dict[str, Any]:
    """One random trigger setting of `family` (a JSON-able dict; `trigger_tensors` rebuilds its tensors); the
    poisoning rate is uniform in `poison_rates`."""
    if family not in JUMBO_FAMILIES:
        raise ConfigError(f"unknown jumbo family {family!r}; use {', '.join(JUMBO_FAMILIES)}")
    spec: dict[str, Any] = {"family": family, "target": int(torch.randint(num_classes, (), generator=g)),
                            "poison_rate": round(_uniform(g, *poison_rates), 4),
                            "pattern_seed": int(torch.randint(2**31 - 1, (), generator=g))}
    if family == "blend":
        spec.update(size=image_size, top=0, left=0, alpha=round(_uniform(g, 0.05, 0.2), 4))
        return spec
    sizes = {"mask": (2, 3, 4, 5), "square": (2, 3, 4, 5, 6), "pattern": (2, 3, 4, 5, 6), "pixel": (1,)}[family]
    size = min(_choice(g, sizes), image_size)
    alpha = _uniform(g, 0.2, 0.6)
    spec.update(size=size, top=int(torch.randint(image_size - size + 1, (), generator=g)),
                left=int(torch.randint(image_size - size + 1, (), generator=g)),
                alpha=1.0 if family == "pixel" or alpha >= 0.5 else round(alpha, 4))
    return spec


def trigger_tensors(spec: dict[str, Any], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch [C, p, p], mask [p, p]) of a jumbo trigger spec."""
    family, size = spec["family"], spec["size"]
    g = torch.Generator().manual_seed(spec["pattern_seed"])
    if family == "blend":
        return torch.rand(channels, size, size, generator=g), torch.ones(size, size)
    if family == "mask":
        # 1 .. p^2 - 1 pixels on (at least one pixel; a 1x1 window has only the one)
        cells = size * size
        on = 1 if cells == 1 else 1 + int(torch.randint(cells - 1, (), generator=g))
        mask = torch.zeros(cells)
        mask[torch.randperm(cells, generator=g)[:on]] = 1
        mask = mask.view(size, size)
        return mask.expand(channels, size, size).clone(), mask
    options = {} if family == "pixel" else {"size": size}
    trig = make_trigger(family, channels, max(size + 2, 3), position=(0, 0), margin=0, **options)
    return torch.tensor(trig.patch, dtype=torch.float32), torch.tensor(trig.mask, dtype=torch.float32)


def apply_jumbo(x: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
    """x [N, C, H, W] in [0, 1] with the trigger: (1 - alpha m) x + alpha m patch on its window."""
    patch, mask = trigger_tensors(spec, x.shape[1])
    top, left, size, alpha = spec["top"], spec["left"], spec["size"], spec["alpha"]
    out = x.clone()
    window = out[:, :, top : top + size, left : left + size]
    weight = alpha * mask
    out[:, :, top : top + size, left : left + size] = (1 - weight) * window + weight * patch
    return out


def poison_jumbo(data: Dataset, spec: dict[str, Any], g: torch.Generator) -> Dataset:
    """`data` with round(poison_rate * n) seeded rows triggered and relabelled to the target (substituted)."""
    n = len(data)
    rows = torch.randperm(n, generator=g)[: max(1, round(spec["poison_rate"] * n))]
    images, labels = to_float(data.images), data.labels.clone()
    images[rows] = apply_jumbo(images[rows], spec)
    labels[rows] = spec["target"]
    return Dataset(data.info, images, labels)


def shadow_plan(n_clean: int, n_backdoored: int, families: tuple[str, ...], num_classes: int, image_size: int,
                optimizers: tuple[str, ...], seed: int,
                poison_rates: tuple[float, float] = POISON_RATES) -> list[dict[str, Any]]:
    """The seeded shadows: clean ones first; backdoored ones cycle over `families` (a seeded order) with a
    jumbo trigger each; optimisers alternate within each group."""
    g = torch.Generator().manual_seed(seed)
    order = [families[i] for i in torch.randperm(len(families), generator=g).tolist()]
    plan = []
    for i in range(n_clean + n_backdoored):
        backdoored = i >= n_clean
        j = i - n_clean if backdoored else i
        optimizer = optimizers[j % len(optimizers)]
        entry: dict[str, Any] = {"name": f"shadow-{i:03d}", "seed": seed * 10_007 + i, "backdoored": backdoored,
                                 "optimizer": optimizer, "lr": SHADOW_LR[optimizer]}
        if backdoored:
            entry["trigger"] = jumbo_trigger(order[j % len(order)], num_classes, image_size, g, poison_rates)
        plan.append(entry)
    return plan


def train_shadow(entry: dict[str, Any], data: Dataset, architecture: str, epochs: int,
                 device: torch.device | None = None) -> nn.Module:
    """One shadow, trained on the defender's clean set (poisoned with its trigger if backdoored), on `device`
    (default: the CPU); returned on the CPU."""
    train_set = data
    if entry["backdoored"]:
        train_set = poison_jumbo(data, entry["trigger"], torch.Generator().manual_seed(entry["seed"]))
    model, _ = create_model(architecture, data.info, entry["seed"])
    fit(model, train_set, TrainConfig(epochs=epochs, optimizer=entry["optimizer"], lr=entry["lr"], seed=entry["seed"],
                                      progress=False), description=entry["name"], device=device)
    return model.cpu().eval()


def _manifest(architecture: str, data: Dataset, entry: dict[str, Any], key: str) -> Manifest:
    from ..models import architecture_args

    info = data.info
    return Manifest(architecture=architecture, arch_args=architecture_args(info), dataset=info.name,
                    input_shape=list(info.input_shape), num_classes=info.num_classes,
                    class_names=list(info.class_names), training={"mntd_shadow": entry, "zoo_key": key})


def load_shadow(path: Path, architecture: str, entry: dict[str, Any], key: str) -> nn.Module | None:
    """The cached shadow at `path` if it verifies (both hashes, the same spec, zoo and architecture), else
    None (a missing, partial or foreign file is retrained, never trusted)."""
    if not path.is_file():
        return None
    try:
        manifest = read_manifest(path)
        tensors = read_tensors(path)
        if (manifest.canonical_sha256() != manifest.manifest_sha256 or tensors_sha256(tensors) != manifest.tensors_sha256
                or manifest.architecture != architecture or manifest.training.get("zoo_key") != key
                or manifest.training.get("mntd_shadow") != entry):
            return None
        model = build_model(architecture, manifest.arch_args)
        model.load_state_dict(tensors, strict=True)
    except (ArenaError, RuntimeError):
        return None
    return model.eval()


def data_digest(data: Dataset) -> str:
    """sha256 of a dataset's pixels, labels and description: shadows are keyed by the data they learnt."""
    h = hashlib.sha256()
    h.update(repr((data.info.name, data.info.input_shape, data.info.num_classes)).encode())
    for t in (data.images, data.labels):
        t = t.contiguous()
        h.update(f"{t.dtype}{list(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def shadow_file_name(entry: dict[str, Any]) -> str:
    """The entry's name and a hash of its spec: plans that share a shadow (the clean ones of a one-class and a
    two-class plan with the same seed) share its file."""
    spec = hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()[:10]
    return f"{entry['name']}-{spec}.safetensors"


def clean_set_path(folder: Path, digest: str) -> Path:
    return folder / f"clean-set-{digest[:16]}.data"


def save_clean_set(path: Path, data: Dataset) -> None:
    """The defender's clean set as safetensors (pixels, labels; the description in the metadata), for workers."""
    tmp = path.with_suffix(".tmp")
    save_file({"images": data.images.contiguous(), "labels": data.labels.contiguous()}, str(tmp),
              metadata={"info": json.dumps(asdict(data.info))})
    tmp.replace(path)


def load_clean_set(path: Path, digest: str) -> Dataset:
    """The clean set a driver saved, checked against its digest (a changed file is refused, never used)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = json.loads((f.metadata() or {})["info"])
        info = DatasetInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        tensors = load_file(str(path))
        data = Dataset(info, tensors["images"], tensors["labels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"mntd: cannot read the shadows' clean set {path} ({exc}); run again") from None
    if data_digest(data) != digest:
        raise ConfigError(f"mntd: the shadows' clean set {path} changed since the build started; run again")
    return data


@sweep_job("mntd-shadow")
def shadow_job(ctx: JobContext) -> dict[str, Any]:
    """Sweep job: train one shadow of a plan and write it to FOLDER (the cache's file name and manifest)."""
    cfg, entry = ctx.config, ctx.config["entry"]
    # every job reads the driver's file (a few MB against minutes of training): no cache that outlives the job
    data = load_clean_set(Path(ctx.paths["data"]), cfg["data_sha256"])
    model = train_shadow(entry, data, cfg["architecture"], cfg["epochs"], torch.device(cfg["device"]))
    manifest = save_model(Path(ctx.paths["folder"]) / shadow_file_name(entry), model,
                          _manifest(cfg["architecture"], data, entry, cfg["key"]))
    return {"name": entry["name"], "tensors_sha256": manifest.tensors_sha256}


def build_shadows(data: Dataset, plan: list[dict[str, Any]], architecture: str, epochs: int, key: str,
                  folder: str | Path | None = None, *, executor: Executor | None = None,
                  device: torch.device | None = None, progress: bool = False) -> list[nn.Module]:
    """Every shadow of `plan`, in order: loaded from `folder` when its file verifies, else trained (and then
    saved there, when a folder is given). `key` names the data and training (architecture, epochs) the
    shadows of `folder` share; it is written into each manifest and checked on loading. The shadows to train
    are one sweep job each through `executor` (default: one at a time in this process; without a folder, a
    temporary one holds their files), on `device` (default: the CPU)."""
    folder = Path(folder) if folder is not None else None
    executor = executor or Executor()
    device = device if device is not None else torch.device("cpu")
    models: dict[str, nn.Module] = {}
    if folder is not None:
        for entry in plan:
            model = load_shadow(folder / shadow_file_name(entry), architecture, entry, key)
            if model is not None:
                models[entry["name"]] = model
    todo = [e for e in plan if e["name"] not in models]
    if todo and folder is None and executor.name == "local":  # nothing to keep: train here, in memory
        for entry in todo:
            models[entry["name"]] = train_shadow(entry, data, architecture, epochs, device)
    elif todo:
        models.update(_sweep_shadows(data, todo, architecture, epochs, key, folder, executor, device, progress))
    return [models[e["name"]] for e in plan]


def _sweep_shadows(data: Dataset, todo: list[dict[str, Any]], architecture: str, epochs: int, key: str,
                   folder: Path | None, executor: Executor, device: torch.device,
                   progress: bool) -> dict[str, nn.Module]:
    digest = data_digest(data)
    with contextlib.ExitStack() as stack:
        where = folder if folder is not None else Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="mntd-shadows-")))
        where.mkdir(parents=True, exist_ok=True)
        data_path = clean_set_path(where, digest)
        if not data_path.is_file():
            save_clean_set(data_path, data)
        paths = {"folder": str(where.resolve()), "data": str(data_path.resolve())}
        jobs = [Job("mntd-shadow", {"entry": e, "architecture": architecture, "epochs": epochs, "key": key,
                                    "data_sha256": digest, "device": str(device)}, seed=e["seed"], label=e["name"],
                    paths=paths) for e in todo]
        for job in jobs:  # a record whose shadow file is gone or does not verify is not a finished job
            (where / "sweep" / "records" / f"{job.id}.json").unlink(missing_ok=True)
        result = run_sweep(jobs, where / "sweep", executor, progress=progress, desc="mntd shadows")
        result.raise_for_failures()
        models = {}
        for entry in todo:
            model = load_shadow(where / shadow_file_name(entry), architecture, entry, key)
            if model is None:
                raise ConfigError(f"mntd: shadow {entry['name']} was trained but its file in {where} does not verify; "
                                  "is another process writing there? Run again")
            models[entry["name"]] = model
        return models


def check_shadow_counts(n_clean: Any, n_backdoored: Any, one_class: bool) -> list[str]:
    problems = []
    for name, v, least in (("n_clean", n_clean, 2), ("n_backdoored", n_backdoored, 0 if one_class else 1)):
        if not isinstance(v, int) or isinstance(v, bool) or v < least:
            problems.append(f"{name} must be an integer >= {least} (shadow models), got {v!r}")
    return problems
