"""Verbs that make and measure model files: train, attack, evaluate, info, wrap."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..attacks import MODEL_ATTACKS, PoisoningAttack, load_attack_spec, make_attack
from ..data import dataset_info, load_dataset
from ..data.dataset import Dataset
from ..defenses import clean_holdout
from ..defenses.dp import check_dp_params, private_fit
from ..errors import ConfigError, IncompatibleError
from ..metrics import evaluate as evaluate_metrics
from ..modelfile import Manifest, check_tensors, load_model, read_manifest, read_tensors, save_model
from ..models import architecture_args, build_model
from ..runtime import describe_device, run_device, versions
from ..train import TrainConfig, create_model, fit
from .outputs import check_model_output
from .results import EvaluationResult, TrainResult


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD for `train`/`attack` (the defender controls training): clip C, noise multiplier Z, delta."""

    clip: float
    noise: float
    delta: float = 1e-5

    def __post_init__(self) -> None:
        problems = check_dp_params(self.clip, self.noise, self.delta)
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_options(cls, clip: float | None, noise: float | None, delta: float) -> DPSettings | None:
        if clip is None and noise is None:
            return None
        problems = check_dp_params(clip, noise, delta)
        if problems:
            raise ConfigError("; ".join(problems))
        return cls(clip, noise, delta)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, float]:
        return {"dp_clip": self.clip, "dp_noise": self.noise, "dp_delta": self.delta}


def train_model(
    architecture: str, train_set: Dataset, test_set: Dataset, config: TrainConfig, out: str | Path,
    attack: PoisoningAttack | None = None, description: str = "train", train_fn: Any = None,
    dp: DPSettings | None = None, verb: str | None = None, holdout: dict[str, Any] | None = None,
    device: torch.device | None = None,
) -> TrainResult:
    """Train a fresh `architecture` on an in-memory (possibly poisoned) training set, evaluate it on
    `test_set` (with `attack`: ASR too), write the model file and, with `attack`, its spec beside it.

    `train_fn(model, monitor) -> (TrainHistory, spec_extra)` replaces plain `fit` (model-level attacks);
    `dp` trains with DP-SGD instead. `holdout` records in the manifest which slice of the training split was
    kept out of training for defenders (`defender_holdout`: fraction and seed of `clean_holdout`).
    `device` (default: the CPU) is where plain `fit` trains and the model is evaluated; the model is moved back
    to the CPU before it is saved, and the device is recorded in the manifest (`training.device`)."""
    out = Path(out)
    device = device if device is not None else torch.device("cpu")
    if device.type != "cpu" and (train_fn is not None or dp is not None):
        raise ConfigError(f"--device {device}: DP-SGD and model-level attacks train on the CPU only so far; use "
                          "--device cpu")
    model, args = create_model(architecture, train_set.info, config.seed)

    def monitor(m: torch.nn.Module) -> dict[str, float]:
        r = evaluate_metrics(m, test_set, attack)
        return {k: r[k] for k in ("clean_accuracy", "attack_success_rate") if k in r}

    started = time.perf_counter()
    if train_fn is None and dp is not None:
        history, spec_extra = private_fit(model, train_set, config, clip=dp.clip, noise=dp.noise, delta=dp.delta,
                                          evaluate=monitor, description=description), {}
    elif train_fn is None:
        history, spec_extra = fit(model, train_set, config, evaluate=monitor, description=description,
                                  device=device), {}
    else:
        history, spec_extra = train_fn(model, monitor)
    final = evaluate_metrics(model, test_set, attack)
    model.cpu()  # the saved weights (and their hash) are CPU tensors whatever trained them
    info = train_set.info
    # The training record goes to the defender with the model: it must not reveal the attack,
    # so it holds clean metrics only; ASR and the poisoning parameters go to the attack spec.
    training = {
        "config": {**config.to_dict(), **(dp.to_dict() if dp else {}), "architecture": architecture,
                   "dataset": info.name},
        "seed": config.seed, "epochs": config.epochs,
        "metrics": {"clean_accuracy": final["clean_accuracy"]},
        "history": [{k: v for k, v in e.items() if k != "attack_success_rate"} for e in history.epochs],
        "versions": versions(), "wall_time_s": round(time.perf_counter() - started, 3),
        "device": describe_device(device),
    }
    if history.privacy is not None:  # DP-SGD: the accountant's epsilon at delta (defenses/dp.py)
        training["privacy"] = history.privacy
    if holdout is not None:
        training["defender_holdout"] = holdout
    manifest = Manifest(
        architecture=architecture, arch_args=args, dataset=info.name, input_shape=list(info.input_shape),
        num_classes=info.num_classes, class_names=list(info.class_names), training=training,
    )
    manifest = save_model(out, model, manifest)
    spec_path = None
    if attack is not None:
        spec_path = attack_spec_path(out)
        attack.save_spec(spec_path, model_sha256=manifest.tensors_sha256, results={
            k: final[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")
        }, history=history.epochs, **spec_extra)
    return TrainResult(out, manifest, final, history.epochs, spec_path,
                       verb or ("attack" if attack is not None else "train"))


DEFAULT_HOLDOUT = 0.05


def split_holdout(train_set: Dataset, fraction: float, seed: int) -> tuple[Dataset, dict[str, Any] | None]:
    """(training set, manifest record): a seeded `fraction` of the training split kept out of training for
    defenders (the slice `clean_holdout(train, fraction, seed)` returns); fraction 0 keeps nothing back."""
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise ConfigError(f"--defender-holdout must be a fraction in [0, 1), got {fraction!r}")
    if fraction == 0:
        return train_set, None
    rest, held = clean_holdout(train_set, fraction, seed)
    return rest, {"fraction": fraction, "seed": seed, "split": "train", "n": len(held)}


def defender_clean_set(manifest: Manifest, train: Dataset, clean_fraction: float, seed: int) -> tuple[Dataset, str]:
    """The defender's clean set for a model file, and where it came from. A model trained here records the
    slice of the training split it never saw (`defender_holdout`): the clean set is drawn from it (all of it,
    or a seeded subset when `clean_fraction` asks for less). A model without that record (trained elsewhere,
    wrapped, or by release 0.1) gets the seeded `clean_fraction` slice of the training split, which it may
    have trained on; the result says so."""
    if not (isinstance(clean_fraction, (int, float)) and 0 < clean_fraction <= 1):
        raise ConfigError(f"--clean-fraction must be in (0, 1], got {clean_fraction!r}")
    record = manifest.training.get("defender_holdout") if isinstance(manifest.training, dict) else None
    if not isinstance(record, dict):
        return clean_holdout(train, clean_fraction, seed)[1], "train split (the model may have trained on it)"
    fraction, hseed = record.get("fraction"), record.get("seed")
    if not (isinstance(fraction, (int, float)) and 0 < fraction < 1 and isinstance(hseed, int)):
        raise IncompatibleError(f"the model's defender_holdout record {record!r} is malformed")
    held = clean_holdout(train, fraction, hseed)[1]
    wanted = round(clean_fraction * len(train))
    if wanted > len(held):
        raise ConfigError(f"--clean-fraction {clean_fraction} asks for {wanted} samples but the model kept only "
                          f"{len(held)} ({fraction:g} of the training split) out of training; use --clean-fraction "
                          f"{fraction:g} or less")
    if wanted < len(held):
        pick = torch.randperm(len(held), generator=torch.Generator().manual_seed(seed))[:wanted].sort().values
        held = held.subset(pick)
    return held, f"defender hold-out (fraction {fraction:g}, seed {hseed}), never trained on"


def check_model_fits(manifest: Manifest, data: Dataset) -> None:
    """A model file's manifest agrees with the dataset it names (input shape, classes): one line otherwise."""
    info = data.info
    if list(info.input_shape) != list(manifest.input_shape):
        raise IncompatibleError(f"the model expects inputs {list(manifest.input_shape)} but its dataset "
                                f"{manifest.dataset!r} has {list(info.input_shape)}; the manifest names the wrong "
                                "dataset (re-wrap the weights with the right --dataset)")
    if info.num_classes != manifest.num_classes:
        raise IncompatibleError(f"the model has {manifest.num_classes} classes but its dataset {manifest.dataset!r} "
                                f"has {info.num_classes}; the manifest names the wrong dataset")


def model_lineage(manifest: Manifest) -> list[str]:
    """The tensor hashes of a model and of every model it was repaired from (newest first): an attack spec
    made for any of them applies to this model."""
    hashes = [manifest.tensors_sha256]
    training: Any = manifest.training
    for _ in range(64):  # a bounded walk: the chain is data from a file
        parent = training.get("repaired_from") if isinstance(training, dict) else None
        if not isinstance(parent, dict):
            break
        if isinstance(parent.get("tensors_sha256"), str):
            hashes.append(parent["tensors_sha256"])
        training = parent.get("training")
    return hashes


def spec_for_model(spec_path: str | Path | None, manifest: Manifest, force: bool = False) -> PoisoningAttack | None:
    """The attack an evaluator's spec describes, checked against the model: class count, input shape, and
    (unless `force`) that the spec was made for this model or one it was repaired from."""
    if spec_path is None:
        return None
    return load_attack_spec(spec_path, manifest.num_classes, model_hashes=None if force else model_lineage(manifest),
                            input_shape=manifest.input_shape)


def attack_spec_path(model_path: str | Path) -> Path:
    """`F.safetensors` -> `F.attack.json`, beside the model."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".attack.json")


def train(
    dataset: str, model: str, out: str | Path, *, epochs: int = 5, seed: int = 0, batch_size: int = 64,
    optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
    schedule: str = "cosine", data_root: str | Path | None = None, progress: bool = True,
    dp_clip: float | None = None, dp_noise: float | None = None, dp_delta: float = 1e-5, overwrite: bool = False,
    defender_holdout: float = DEFAULT_HOLDOUT, device: str = "auto",
) -> TrainResult:
    """Train a clean model and write it as a model file. `dp_clip` and `dp_noise` train with DP-SGD.
    A seeded `defender_holdout` fraction of the training split is kept out of training (recorded in the
    manifest) for defenders' clean sets. An existing `out` is replaced only with `overwrite`. `device`:
    auto | cpu | cuda[:N] | mps (DP-SGD: the CPU only), recorded in the manifest."""
    out = check_model_output(out, overwrite=overwrite)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress)
    dp = DPSettings.from_options(dp_clip, dp_noise, dp_delta)
    dev = run_device(device, supported=("cpu",) if dp is not None else ("cpu", "cuda", "mps"),
                     what="train with DP-SGD" if dp is not None else "train")
    build_model(model, architecture_args(dataset_info(dataset)))  # validate names before loading anything
    train_set, holdout = split_holdout(load_dataset(dataset, "train", data_root), defender_holdout, seed)
    test_set = load_dataset(dataset, "test", data_root)
    return train_model(model, train_set, test_set, config, out, None, f"train {model}", dp=dp, holdout=holdout,
                       device=dev)


def attack(
    kind: str, dataset: str, model: str, out: str | Path, *, target: int = 0, trigger: str | None = None,
    trigger_options: dict[str, Any] | None = None, mode: str = "all-to-one", sources: tuple[int, ...] = (),
    poison_rate: float = 0.1, injection: str = "append", cover_rate: float = 0.0, epochs: int = 5, seed: int = 0, batch_size: int = 64,
    optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
    schedule: str = "cosine", data_root: str | Path | None = None, progress: bool = True,
    dp_clip: float | None = None, dp_noise: float | None = None, dp_delta: float = 1e-5,
    poisoning: str = "badnets", prune_accuracy_drop: float | None = None, clean_model: str | Path | None = None,
    attack_params: dict[str, Any] | None = None, overwrite: bool = False, defender_holdout: float = DEFAULT_HOLDOUT,
    device: str = "auto",
) -> TrainResult:
    """Poison the training set, train on it, and write the model file plus `<out>.attack.json`.

    `kind` is a data-poisoning attack (`ATTACKS`) or a model-level attack (`MODEL_ATTACKS`, e.g.
    "pruning-aware"): then `poisoning` names the data poisoning inside it, `attack_params` the model attack's
    own parameters (`prune_accuracy_drop` is the pruning-aware attack's, kept as a keyword for convenience) and
    `clean_model` an optional clean model file to start from (else one is trained first). For a data-poisoning
    attack, `attack_params` are its own `build` keywords (e.g. wanet's cross_ratio).
    `dp_clip` and `dp_noise` train on the poisoned data with DP-SGD (the defender controls training).
    A seeded `defender_holdout` fraction of the training split is kept out of poisoning and training (recorded
    in the manifest). An existing `out` (or its attack spec) is replaced only with `overwrite`. `device`: auto |
    cpu | cuda[:N] | mps for data poisoning (DP-SGD and model-level attacks: the CPU only), in the manifest."""
    image = (trigger.split(":", 1)[1] or None) if trigger and trigger.startswith("image:") else None
    out = check_model_output(out, inputs=[clean_model, image], side_files=[attack_spec_path(out)], overwrite=overwrite)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress)
    dp = DPSettings.from_options(dp_clip, dp_noise, dp_delta)
    info = dataset_info(dataset)
    build_model(model, architecture_args(info))
    model_attack = kind in MODEL_ATTACKS
    cpu_only = model_attack or dp is not None
    dev = run_device(device, supported=("cpu",) if cpu_only else ("cpu", "cuda", "mps"),
                     what=f"attack {kind}" + (" with DP-SGD" if dp is not None and not model_attack else ""))
    data_kind = poisoning if model_attack else kind
    options = {"trigger": trigger} if trigger else {}
    atk = make_attack(data_kind, num_classes=info.num_classes, channels=info.input_shape[0],
                      image_size=info.input_shape[1], trigger_options=trigger_options, target=target, mode=mode,
                      sources=tuple(sources), poison_rate=poison_rate, injection=injection, seed=seed,
                      cover_rate=cover_rate, **options, **({} if model_attack else attack_params or {}))
    train_set, holdout = split_holdout(load_dataset(dataset, "train", data_root), defender_holdout, seed)
    test_set = load_dataset(dataset, "test", data_root)
    if model_attack:
        if dp is not None:
            raise ConfigError(f"DP-SGD (--dp-clip/--dp-noise) applies to data-poisoning attacks, not to the "
                              f"model-level attack {kind!r}; drop the DP options")
        clean = load_model(clean_model).model if clean_model is not None else None
        params = dict(attack_params or {})
        if prune_accuracy_drop is not None:
            params["prune_accuracy_drop"] = prune_accuracy_drop
        trainer = MODEL_ATTACKS.create(kind, poisoning=atk, **params).trainer(model, train_set, config,
                                                                             clean_model=clean)
        return train_model(model, train_set, test_set, config, out, atk, kind, trainer, verb="attack",
                           holdout=holdout, device=dev)
    poisoned = atk.poison(train_set, torch.Generator().manual_seed(seed))
    return train_model(model, poisoned.dataset, test_set, config, out, atk, f"{kind} {model}", dp=dp,
                       holdout=holdout, device=dev)


def evaluate(model_path: str | Path, attack_spec: str | Path | None = None, *,
             data_root: str | Path | None = None, force: bool = False) -> EvaluationResult:
    """Clean accuracy on the test split of the model's dataset; with a spec, ASR and robust accuracy.
    A spec made for another model is refused unless `force`."""
    loaded = load_model(model_path)
    m = loaded.manifest
    atk = spec_for_model(attack_spec, m, force)
    test_set = load_dataset(m.dataset, "test", data_root)
    check_model_fits(m, test_set)
    result = evaluate_metrics(loaded.model, test_set, atk)
    return EvaluationResult(str(model_path), m.architecture, m.dataset, result)


def info(model_path: str | Path) -> dict[str, Any]:
    """The manifest of a model file (reads only the header; the full load checks the tensors too)."""
    load_model(model_path)  # verify before reporting: a manifest of a tampered file is not information
    return asdict(read_manifest(model_path))


def wrap(weights_path: str | Path, *, model: str, dataset: str, out: str | Path, overwrite: bool = False) -> Manifest:
    """Turn a bare safetensors state dict (e.g. converted from a trusted .pt) into a model file."""
    out = check_model_output(out, inputs=[weights_path], overwrite=overwrite)
    ds = dataset_info(dataset)
    args = architecture_args(ds)
    net = build_model(model, args)
    tensors = read_tensors(weights_path)
    check_tensors(net, tensors, str(weights_path))
    net.load_state_dict(tensors)
    manifest = Manifest(
        architecture=model, arch_args=args, dataset=ds.name, input_shape=list(ds.input_shape),
        num_classes=ds.num_classes, class_names=list(ds.class_names),
        training={"imported_from": str(weights_path), "versions": versions()},
    )
    return save_model(out, net, manifest)
