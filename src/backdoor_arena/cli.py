"""The `backdoor-arena` command: one sub-command per verb, each a thin layer over `api`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from . import api
from .commands.options import DataRoot, Json, Quiet, emit, pct
from .errors import ArenaError, ConfigError

app = typer.Typer(
    name="backdoor-arena", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Attack and defend neural networks against backdoors. Data: --data-root > $BACKDOOR_ARENA_DATA > "
    "~/.cache/backdoor-arena.",
)

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
        raise ConfigError(f"--position {text!r} must be a name (e.g. bottom-right) or two integers ROW,COL") from None
    return (row, col)


def _parse_color(text: str | None) -> Any:
    if text is None or "," not in text:
        return text
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--color {text!r} must be a name (e.g. yellow) or R,G,B values in [0, 1]") from None


@app.command()
def train(
    dataset: Annotated[str, typer.Option(help="Dataset: mnist, fashion-mnist, gtsrb, cifar10.")],
    model: Annotated[str, typer.Option(help="Architecture id, e.g. badnet-mnist.")],
    out: Out, epochs: Epochs = 5, seed: Seed = 0, batch_size: BatchSize = 64, optimizer: Optimizer = "sgd",
    lr: Lr = 0.05, momentum: Momentum = 0.9, weight_decay: WeightDecay = 0.0, schedule: Schedule = "cosine",
    data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False,
    dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = 1e-5,
) -> None:
    """Train a clean model and write it as a model file (with --dp-clip/--dp-noise: by DP-SGD)."""
    r = api.train(dataset, model, out, epochs=epochs, seed=seed, batch_size=batch_size, optimizer=optimizer, lr=lr,
                  momentum=momentum, weight_decay=weight_decay, schedule=schedule, data_root=data_root,
                  progress=not quiet, dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta)
    privacy = _privacy(r.manifest)
    emit({"model": str(r.path), "clean_accuracy": r.metrics["clean_accuracy"],
           "wall_time_s": r.manifest.training["wall_time_s"], **privacy}, json_out,
          [f"wrote {r.path}", f"clean accuracy {pct(r.metrics['clean_accuracy'])} "
           f"({r.manifest.training['wall_time_s']:.1f} s)"]
          + ([f"DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}"] if privacy else []))


@app.command()
def attack(
    kind: Annotated[str, typer.Argument(
        help="badnets, blended, or pruning-aware (the model-level attack of Fine-Pruning, with --poisoning).")],
    dataset: Annotated[str, typer.Option(help="Dataset to poison.")],
    model: Annotated[str, typer.Option(help="Architecture id.")],
    out: Out,
    target: Annotated[int, typer.Option(help="Target class (all-to-one, source-specific).")] = 0,
    trigger: Annotated[str | None, typer.Option(
        help="badnets: pixel, square, pattern or image:PATH (default pattern). blended: noise or image:PATH.")] = None,
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
    dp_clip: DpClip = None, dp_noise: DpNoise = None, dp_delta: DpDelta = 1e-5,
    poisoning: Annotated[str, typer.Option(help="pruning-aware: the data poisoning inside (badnets, blended).")]
    = "badnets",
    prune_accuracy_drop: Annotated[float, typer.Option(
        help="pruning-aware: the attacker prunes until clean accuracy would drop by more than this fraction.")] = 0.04,
    clean_model: Annotated[Path | None, typer.Option(
        help="pruning-aware: start from this clean model file instead of training one.")] = None,
) -> None:
    """Poison a dataset, train on it, and write F.safetensors plus the attack spec F.attack.json.
    With --dp-clip/--dp-noise the poisoned data is trained with DP-SGD (DP-SGD as a defense)."""
    options = {"size": trigger_size, "color": _parse_color(color), "position": _parse_position(position),
               "margin": margin, "alpha": alpha}
    r = api.attack(kind, dataset, model, out, target=target, trigger=trigger, trigger_options=options, mode=mode,
                   sources=tuple(source or ()), poison_rate=poison_rate, injection=injection,
                   cover_rate=cover_rate, epochs=epochs,
                   seed=seed, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                   weight_decay=weight_decay, schedule=schedule, data_root=data_root, progress=not quiet,
                   dp_clip=dp_clip, dp_noise=dp_noise, dp_delta=dp_delta, poisoning=poisoning,
                   prune_accuracy_drop=prune_accuracy_drop, clean_model=clean_model)
    m = r.metrics
    privacy = _privacy(r.manifest)
    emit({"model": str(r.path), "attack_spec": str(r.spec_path),
           **{k: m[k] for k in ("clean_accuracy", "attack_success_rate", "robust_accuracy")}, **privacy}, json_out,
          [f"wrote {r.path} and {r.spec_path}",
           f"clean accuracy {pct(m['clean_accuracy'])}, attack success rate {pct(m['attack_success_rate'])}"]
          + ([f"DP-SGD: epsilon {privacy['epsilon']:.3g} at delta {privacy['delta']:g}"] if privacy else []))


@app.command()
def evaluate(
    model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    attack_spec: Annotated[Path | None, typer.Option(help="Attack spec (F.attack.json) for ASR.")] = None,
    data_root: DataRoot = None, json_out: Json = False,
) -> None:
    """Clean accuracy on the test split; with --attack-spec, attack success rate and robust accuracy."""
    r = api.evaluate(model_file, attack_spec, data_root=data_root)
    lines = [f"{r['model']} ({r['architecture']} on {r['dataset']})",
             f"clean accuracy       {pct(r['clean_accuracy'])} of {r['n_clean']}"]
    if "attack_success_rate" in r:
        lines += [f"attack success rate  {pct(r['attack_success_rate'])} of {r['n_triggered']} triggered",
                  f"robust accuracy      {pct(r['robust_accuracy'])}"]
    emit(r, json_out, lines)


@app.command()
def info(model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")]) -> None:
    """Print the manifest of a model file (after checking the file)."""
    typer.echo(json.dumps(api.info(model_file), indent=1, sort_keys=True))


@app.command()
def wrap(
    weights: Annotated[Path, typer.Argument(help="A bare safetensors state dict.")],
    model: Annotated[str, typer.Option(help="Architecture id the weights belong to.")],
    dataset: Annotated[str, typer.Option(help="Dataset the model classifies.")],
    out: Out,
) -> None:
    """Make a model file from bare safetensors weights (e.g. converted from a trusted .pt file)."""
    m = api.wrap(weights, model=model, dataset=dataset, out=out)
    typer.echo(f"wrote {out} ({m.architecture}, {m.dataset})")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("demo-report"),
    epochs: Epochs = 4, seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False,
) -> None:
    """Train a clean and a BadNets MNIST model, evaluate both, write a report folder (JSON + PNG)."""
    from .demo import run_demo

    summary = run_demo(out, epochs=epochs, seed=seed, data_root=data_root, progress=not quiet)
    for line in summary["lines"]:
        typer.echo(line)


@app.command("list")
def list_components() -> None:
    """List the registered datasets, architectures, attacks and trigger kinds."""
    from .attacks import ATTACKS
    from .data import dataset_names
    from .models import model_names
    from .triggers import TRIGGERS

    for title, names in (("datasets", dataset_names()), ("models", model_names()), ("attacks", ATTACKS.names()),
                         ("triggers", TRIGGERS.names())):
        typer.echo(f"{title}: {', '.join(names)}")


def _register_command_modules() -> None:
    import importlib

    from .commands import COMMAND_MODULES

    for name in COMMAND_MODULES:
        importlib.import_module(f".commands.{name}", __package__).register(app)


_register_command_modules()


def main() -> None:
    """Entry point: one-line errors with an exit code per error class, never a traceback for bad input."""
    try:
        app(standalone_mode=False)
    except ArenaError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc.strerror}: {exc.filename}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
