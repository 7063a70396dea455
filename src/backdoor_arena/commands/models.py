"""The core verbs on the command line: train, attack (one sub-command per registered attack), evaluate, info,
wrap, demo, list."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import api, registries
from .attack_options import (
    attack_option_parameters,
    given_attack_params,
    given_trigger_options,
    model_attack_option_parameters,
    trigger_option_parameters,
)
from .generate import first_line, given_plugin_params, make_command
from .options import DataRoot, Device, Force, Json, Overwrite, Quiet, emit, pct

Out = Annotated[Path, typer.Option("--out", "-o", help="Output model file (.safetensors).")]
Epochs = Annotated[int, typer.Option(help="Training epochs.")]
Seed = Annotated[int, typer.Option(help="Seed: same seed, same weights.")]
BatchSize = Annotated[int, typer.Option(help="Mini-batch size.")]
Optimizer = Annotated[str, typer.Option(help="sgd or adam.")]
Lr = Annotated[float, typer.Option(help="Learning rate (peak, for the cosine schedule).")]
Momentum = Annotated[float, typer.Option(help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(help="L2 weight decay.")]
Schedule = Annotated[str, typer.Option(help="constant or cosine.")]
DpClip = Annotated[float | None, typer.Option(
    help="DP-SGD: per-example gradient norm bound C (with --dp-noise; BatchNorm-free models only).")]
DpNoise = Annotated[float | None, typer.Option(help="DP-SGD: noise multiplier Z (noise std = Z * C).")]
Holdout = Annotated[float, typer.Option(
    "--defender-holdout", help="Fraction of the training split kept out of training (seeded by --seed) and "
    "recorded in the manifest: defenses draw their clean set from it. 0 trains on the whole split.")]
DpDelta = Annotated[float, typer.Option(help="DP-SGD: delta of the (epsilon, delta) guarantee recorded in the manifest.")]


def _privacy(manifest: Any) -> dict[str, Any]:
    p = manifest.training.get("privacy")
    return {"epsilon": p["epsilon"], "delta": p["delta"]} if p else {}


def _parse_position(text: str | None) -> Any:
    if text is None or "," not in text:
        return text
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise api.ConfigError(f"--position {text!r} must be a name (e.g. bottom-right) or two integers ROW,COL") from None
    return (row, col)


def _parse_color(text: str | None) -> Any:
    if text is None or "," not in text:
        return text
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise api.ConfigError(f"--color {text!r} must be a name (e.g. yellow) or R,G,B values in [0, 1]") from None



def train(
    dataset: Annotated[str, typer.Option(help="Dataset: mnist, fashion-mnist, gtsrb, cifar10.")],
    model: Annotated[str, typer.Option(help="Architecture id, e.g. badnet-mnist.")],
    out: Out, epochs: Epochs = 5, seed: Seed = 0, batch_size: BatchSize = 64, optimizer: Optimizer = "sgd",
    lr: Lr = 0.05, momentum: Momentum = 0.9, weight_decay: WeightDecay = 0.0, schedule: Schedule = "cosine",
    data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False,
    dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = 1e-5, overwrite: Overwrite = False,
    defender_holdout: Holdout = 0.05, device: Device = "auto",
) -> None:
    """Train a clean model and write it as a model file (with --dp-clip/--dp-noise: by DP-SGD)."""
    r = api.train(dataset, model, out, epochs=epochs, seed=seed, batch_size=batch_size, optimizer=optimizer, lr=lr,
                  momentum=momentum, weight_decay=weight_decay, schedule=schedule, data_root=data_root,
                  progress=not quiet, dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta,
                  overwrite=overwrite, defender_holdout=defender_holdout, device=device)
    privacy = _privacy(r.manifest)
    emit(r.to_dict(), json_out,
          [f"wrote {r.path}", f"clean accuracy {pct(r.metrics['clean_accuracy'])} "
           f"({r.manifest.training['wall_time_s']:.1f} s)"]
          + ([f"DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}"] if privacy else []))



def evaluate(
    model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    attack_spec: Annotated[Path | None, typer.Option(help="Attack spec (F.attack.json) for ASR.")] = None,
    data_root: DataRoot = None, json_out: Json = False, force: Force = False,
) -> None:
    """Clean accuracy on the test split; with --attack-spec, attack success rate and robust accuracy."""
    r = api.evaluate(model_file, attack_spec, data_root=data_root, force=force).to_dict()
    lines = [f"{r['model']} ({r['architecture']} on {r['dataset']})",
             f"clean accuracy       {pct(r['clean_accuracy'])} of {r['n_clean']}"]
    if "attack_success_rate" in r:
        lines += [f"attack success rate  {pct(r['attack_success_rate'])} of {r['n_triggered']} triggered",
                  f"robust accuracy      {pct(r['robust_accuracy'])}"]
    emit(r, json_out, lines)


def info(model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")]) -> None:
    """Print the manifest of a model file (after checking the file)."""
    typer.echo(json.dumps(api.info(model_file), indent=1, sort_keys=True))


def wrap(
    weights: Annotated[Path, typer.Argument(help="A bare safetensors state dict.")],
    model: Annotated[str, typer.Option(help="Architecture id the weights belong to.")],
    dataset: Annotated[str, typer.Option(help="Dataset the model classifies.")],
    out: Out, overwrite: Overwrite = False,
) -> None:
    """Make a model file from bare safetensors weights (e.g. converted from a trusted .pt file)."""
    m = api.wrap(weights, model=model, dataset=dataset, out=out, overwrite=overwrite)
    typer.echo(f"wrote {out} ({m.architecture}, {m.dataset})")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("demo-report"),
    epochs: Epochs = 4, seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False,
    overwrite: Overwrite = False, defender_holdout: Holdout = 0.05, device: Device = "auto",
) -> None:
    """Train a clean and a BadNets MNIST model, evaluate both, write a report folder (JSON + PNG)."""
    r = api.demo(out, epochs=epochs, seed=seed, data_root=data_root, progress=not quiet, overwrite=overwrite,
                 defender_holdout=defender_holdout, device=device)
    for line in r.lines:
        typer.echo(line)


def list_components(json_out: Json = False) -> None:
    """List every registered component: datasets, models, triggers, attacks, defenses, detectors, FL parts."""
    names = {kind: registry.names() for kind, registry in registries.KINDS.items()}
    emit(names, json_out, [f"{kind}: {', '.join(n)}" for kind, n in names.items()])




COMMON_ATTACK_DOC = ("Poison the training set, train on it, and write F.safetensors plus the attack spec F.attack.json. "
                     "With --dp-clip/--dp-noise the poisoned data is trained with DP-SGD (DP-SGD as a defense).")


def _attack_options() -> list[inspect.Parameter]:
    """The options every attack command shares (dataset, model, trigger, poisoning, training)."""

    def attack_options(
        dataset: Annotated[str, typer.Option(help="Dataset to poison.")],
        model: Annotated[str, typer.Option(help="Architecture id.")],
        out: Out,
        target: Annotated[int, typer.Option(help="Target class (all-to-one, source-specific).")] = 0,
        trigger: Annotated[str | None, typer.Option(
            help="A trigger kind: pixel, square, pattern, hollow-square, x or image:PATH for patch attacks (default "
            "pattern); noise or image:PATH for blended. `backdoor-arena list` shows every registered kind.")] = None,
        trigger_size: Annotated[int | None, typer.Option(help="Side of a square/pattern/image trigger, pixels.")] = None,
        color: Annotated[str | None, typer.Option(help="Trigger colour: white, yellow, ... or R,G,B in [0, 1].")] = None,
        position: Annotated[str | None, typer.Option(
            help="bottom-right (default), bottom-left, top-right, top-left, bottom-center, center, or ROW,COL "
            "(negative counts from the bottom/right).")] = None,
        margin: Annotated[int | None, typer.Option(help="Distance from the edge for named positions.")] = None,
        alpha: Annotated[float | None, typer.Option(help="Blend weight of the pattern (blended).")] = None,
        mode: Annotated[str, typer.Option(help="all-to-one, all-to-all or source-specific.")] = "all-to-one",
        source: Annotated[list[int] | None, typer.Option(help="Source class (source-specific; repeatable).")] = None,
        poison_rate: Annotated[float, typer.Option(help="Poisoned samples as a fraction of the training set.")] = 0.1,
        injection: Annotated[str, typer.Option(help="append (BadNets) or substitute.")] = "append",
        cover_rate: Annotated[float, typer.Option(
            help="Source-specific: triggered samples of other classes kept at their true label, as a fraction "
            "of the training set (TaCT), so that the trigger fires on the source classes only.")] = 0.0,
        epochs: Epochs = 5, seed: Seed = 0, batch_size: BatchSize = 64, optimizer: Optimizer = "sgd", lr: Lr = 0.05,
        momentum: Momentum = 0.9, weight_decay: WeightDecay = 0.0, schedule: Schedule = "cosine",
        data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False,
        dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = 1e-5, overwrite: Overwrite = False,
        defender_holdout: Holdout = 0.05, device: Device = "auto",
    ) -> None: ...

    return list(inspect.signature(attack_options, eval_str=True).parameters.values())


def _run_attack(kind: str, values: dict[str, Any], extra: dict[str, Any]) -> None:
    v = values
    options = {"size": v["trigger_size"], "color": _parse_color(v["color"]), "position": _parse_position(v["position"]),
               "margin": v["margin"], "alpha": v["alpha"], **given_trigger_options(v)}
    r = api.attack(kind, v["dataset"], v["model"], v["out"], target=v["target"], trigger=v["trigger"],
                   trigger_options=options, mode=v["mode"], sources=tuple(v["source"] or ()),
                   poison_rate=v["poison_rate"], injection=v["injection"], cover_rate=v["cover_rate"],
                   epochs=v["epochs"], seed=v["seed"], batch_size=v["batch_size"], optimizer=v["optimizer"],
                   lr=v["lr"], momentum=v["momentum"], weight_decay=v["weight_decay"], schedule=v["schedule"],
                   data_root=v["data_root"], progress=not v["quiet"], dp_clip=v["dp_clip"], dp_noise=v["dp_noise"],
                   dp_delta=v["dp_delta"], overwrite=v["overwrite"], defender_holdout=v["defender_holdout"],
                   device=v["device"], **extra)
    m = r.metrics
    privacy = _privacy(r.manifest)
    emit(r.to_dict(), v["json_out"],
         [f"wrote {r.path} and {r.spec_path}",
          f"clean accuracy {pct(m['clean_accuracy'])}, attack success rate {pct(m['attack_success_rate'])}"]
         + ([f"DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}"] if privacy else []))


def _data_attack_command(name: str) -> Callable[..., None]:
    def body(**values: Any) -> None:
        _run_attack(name, values, {"attack_params": given_attack_params(name, values) or None})

    factory = registries.ATTACKS.get(name)
    common = _attack_options()
    own = attack_option_parameters(name, {p.name for p in common})
    taken = {p.name for p in common} | {p.name.removeprefix("attack_param_") for p in own}
    return make_command(body, common + own + trigger_option_parameters(taken),
                        f"{first_line(factory)} {COMMON_ATTACK_DOC}")


def _model_attack_command(name: str) -> Callable[..., None]:
    factory = registries.MODEL_ATTACKS.get(name)
    own = model_attack_option_parameters(factory, {p.name for p in _attack_options()})
    extra_options = [
        inspect.Parameter("poisoning", inspect.Parameter.KEYWORD_ONLY, default="badnets", annotation=Annotated[
            str, typer.Option(help=f"The data poisoning inside: {', '.join(registries.ATTACKS.names())}.")]),
        inspect.Parameter("clean_model", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Path | None, typer.Option(help="Start from this clean model file instead of training one.")]),
    ]

    def body(**values: Any) -> None:
        params = given_plugin_params(factory, values, skip=("poisoning",), prefix="attack_")
        _run_attack(name, values, {"poisoning": values["poisoning"], "clean_model": values["clean_model"],
                                   "attack_params": params})

    taken = {p.name for p in _attack_options() + extra_options} | {p.name.removeprefix("attack_") for p in own}
    return make_command(body, _attack_options() + extra_options + own + trigger_option_parameters(taken),
                        f"{first_line(factory)} (a model-level attack) {COMMON_ATTACK_DOC}")


def register(app: typer.Typer) -> None:
    app.command()(train)
    group = typer.Typer(no_args_is_help=True, help="Backdoor a model: one sub-command per registered attack "
                        "(data poisoning, and model-level attacks such as pruning-aware).")
    for name in registries.ATTACKS.names():
        group.command(name)(_data_attack_command(name))
    for name in registries.MODEL_ATTACKS.names():
        group.command(name)(_model_attack_command(name))
    app.add_typer(group, name="attack")
    app.command()(evaluate)
    app.command()(info)
    app.command()(wrap)
    app.command()(demo)
    app.command("list")(list_components)
