"""The Python API. Each CLI sub-command is a thin layer over the function of the same name."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .attacks import PoisoningAttack, load_attack_spec, make_attack
from .data import dataset_info, load_dataset
from .data.dataset import Dataset
from .errors import ConfigError, IncompatibleError
from .metrics import evaluate as evaluate_metrics
from .modelfile import Manifest, check_tensors, load_model, read_manifest, read_tensors, save_model
from .models import architecture_args, build_model
from .runtime import set_threads, versions
from .train import TrainConfig, create_model, fit


@dataclass(frozen=True)
class TrainOutcome:
    path: Path
    manifest: Manifest
    metrics: dict[str, Any]  # final evaluation on the test split (with ASR for attacks)
    history: list[dict[str, float]]
    spec_path: Path | None = None


def _check_out(out: str | Path) -> Path:
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out must end in .safetensors, got {str(out)!r}")
    if out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a folder; give a file name ending in .safetensors")
    return out


def _train_and_save(
    architecture: str, train_set: Dataset, test_set: Dataset, config: TrainConfig, out: Path,
    attack: PoisoningAttack | None, description: str, train_fn: Any = None,
) -> TrainOutcome:
    """`train_fn(model, monitor) -> (TrainHistory, spec_extra)` replaces plain `fit` (model-level attacks)."""
    model, args = create_model(architecture, train_set.info, config.seed)

    def monitor(m: torch.nn.Module) -> dict[str, float]:
        r = evaluate_metrics(m, test_set, attack)
        return {k: r[k] for k in ("clean_accuracy", "attack_success_rate") if k in r}

    started = time.perf_counter()
    if train_fn is None:
        history, spec_extra = fit(model, train_set, config, evaluate=monitor, description=description), {}
    else:
        history, spec_extra = train_fn(model, monitor)
    final = evaluate_metrics(model, test_set, attack)
    info = train_set.info
    # The training record goes to the defender with the model: it must not reveal the attack,
    # so it holds clean metrics only; ASR and the poisoning parameters go to the attack spec.
    training = {
        "config": {**config.to_dict(), "architecture": architecture, "dataset": info.name},
        "seed": config.seed, "epochs": config.epochs,
        "metrics": {"clean_accuracy": final["clean_accuracy"]},
        "history": [{k: v for k, v in e.items() if k != "attack_success_rate"} for e in history.epochs],
        "versions": versions(), "wall_time_s": round(time.perf_counter() - started, 3),
    }
    if history.privacy is not None:  # DP-SGD: the accountant's epsilon at delta (defenses/dp.py)
        training["privacy"] = history.privacy
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
    return TrainOutcome(out, manifest, final, history.epochs, spec_path)


def attack_spec_path(model_path: str | Path) -> Path:
    """`F.safetensors` -> `F.attack.json`, beside the model."""
    p = Path(model_path)
    return p.with_name(p.name.removesuffix(".safetensors") + ".attack.json")


def train(
    dataset: str, model: str, out: str | Path, *, epochs: int = 5, seed: int = 0, batch_size: int = 64,
    optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
    schedule: str = "cosine", data_root: str | Path | None = None, progress: bool = True,
    dp_clip: float | None = None, dp_noise: float | None = None, dp_delta: float = 1e-5,
) -> TrainOutcome:
    """Train a clean model and write it as a model file. `dp_clip` and `dp_noise` train with DP-SGD."""
    out = _check_out(out)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress,
                         dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta)
    build_model(model, architecture_args(dataset_info(dataset)))  # validate names before loading anything
    train_set = load_dataset(dataset, "train", data_root)
    test_set = load_dataset(dataset, "test", data_root)
    return _train_and_save(model, train_set, test_set, config, out, None, f"train {model}")


def attack(
    kind: str, dataset: str, model: str, out: str | Path, *, target: int = 0, trigger: str | None = None,
    trigger_options: dict[str, Any] | None = None, mode: str = "all-to-one", sources: tuple[int, ...] = (),
    poison_rate: float = 0.1, injection: str = "append", cover_rate: float = 0.0, epochs: int = 5, seed: int = 0, batch_size: int = 64,
    optimizer: str = "sgd", lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 0.0,
    schedule: str = "cosine", data_root: str | Path | None = None, progress: bool = True,
    dp_clip: float | None = None, dp_noise: float | None = None, dp_delta: float = 1e-5,
    poisoning: str = "badnets", prune_accuracy_drop: float = 0.04, clean_model: str | Path | None = None,
) -> TrainOutcome:
    """Poison the training set, train on it, and write the model file plus `<out>.attack.json`.

    `dp_clip` and `dp_noise` train on the poisoned data with DP-SGD (the defender controls training).
    kind "pruning-aware" is the model-level attack of attacks/pruning_aware.py: `poisoning` names the
    data poisoning inside it, `prune_accuracy_drop` its pruning rule, `clean_model` an optional clean
    model file to start from (else one is trained first)."""
    out = _check_out(out)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, seed=seed, progress=progress,
                         dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta)
    info = dataset_info(dataset)
    build_model(model, architecture_args(info))
    options = {"trigger": trigger} if trigger else {}
    model_attack = None
    if kind == "pruning-aware":
        from .attacks.pruning_aware import PruningAwareAttack

        kind, model_attack = poisoning, PruningAwareAttack
    atk = make_attack(kind, num_classes=info.num_classes, channels=info.input_shape[0], image_size=info.input_shape[1],
                      trigger_options=trigger_options, target=target, mode=mode, sources=tuple(sources),
                      poison_rate=poison_rate, injection=injection, seed=seed, cover_rate=cover_rate, **options)
    train_set = load_dataset(dataset, "train", data_root)
    test_set = load_dataset(dataset, "test", data_root)
    if model_attack is not None:
        clean = load_model(clean_model).model if clean_model is not None else None
        trainer = model_attack(atk, prune_accuracy_drop).trainer(model, train_set, config, clean_model=clean)
        return _train_and_save(model, train_set, test_set, config, out, atk, "pruning-aware", trainer)
    poisoned = atk.poison(train_set, torch.Generator().manual_seed(seed))
    return _train_and_save(model, poisoned.dataset, test_set, config, out, atk, f"{kind} {model}")


def evaluate(model_path: str | Path, attack_spec: str | Path | None = None, *,
             data_root: str | Path | None = None) -> dict[str, Any]:
    """Clean accuracy on the test split of the model's dataset; with a spec, ASR and robust accuracy."""
    set_threads()
    loaded = load_model(model_path)
    m = loaded.manifest
    atk = load_attack_spec(attack_spec, m.num_classes) if attack_spec is not None else None
    test_set = load_dataset(m.dataset, "test", data_root)
    if list(test_set.info.input_shape) != list(m.input_shape):
        raise IncompatibleError(f"model expects inputs {m.input_shape}, dataset {m.dataset!r} has {test_set.info.input_shape}")
    result = evaluate_metrics(loaded.model, test_set, atk)
    return {"model": str(model_path), "architecture": m.architecture, "dataset": m.dataset, **result}


def info(model_path: str | Path) -> dict[str, Any]:
    """The manifest of a model file (reads only the header; the full load checks the tensors too)."""
    load_model(model_path)  # verify before reporting: a manifest of a tampered file is not information
    return asdict(read_manifest(model_path))


def wrap(weights_path: str | Path, *, model: str, dataset: str, out: str | Path) -> Manifest:
    """Turn a bare safetensors state dict (e.g. converted from a trusted .pt) into a model file."""
    out = _check_out(out)
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
