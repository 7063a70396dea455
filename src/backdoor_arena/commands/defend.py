"""`defend <mitigation>` (one sub-command per registered mitigation, options generated from its constructor) and
`defend compare`: thin layers over `api.defend()` and `api.compare_defenses()`."""

from __future__ import annotations

import inspect
import json
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
    make_executor,
    parse_params,
    pct,
)

ModelFile = Annotated[Path, typer.Argument(help="The model file to repair (.safetensors).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="The repaired model file (.safetensors); the curve is "
                                   "written beside it as OUT.curve.png and OUT.curve.jsonl.")]
CleanFraction = Annotated[float, typer.Option(
    help="The defender's clean set: this fraction of the training split (never the test split).")]
AttackSpec = Annotated[Path | None, typer.Option(
    help="Attack spec (F.attack.json): read by the evaluator only, to report ASR; the defense never sees it.")]
Seed = Annotated[int, typer.Option(help="Seed (clean hold-out draw, the defense's own randomness).")]
Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter key=value (repeatable; "
                                                 "JSON values), for parameters without their own option.")]
MaxDrop = Annotated[float, typer.Option(
    help="Pruning stops before clean accuracy on the clean set drops by more than this fraction (0.04 = 4 points).")]
Epochs = Annotated[int, typer.Option(help="Fine-tuning epochs over the clean set.")]
Lr = Annotated[float, typer.Option(help="Fine-tuning learning rate (constant, SGD with momentum 0.9).")]
SHARED = ("seed", "progress", "device")  # given by the command's own options


def _common_options() -> list[inspect.Parameter]:
    def options(model_file: ModelFile, out: Out, clean_fraction: CleanFraction = 0.05,
                attack_spec: AttackSpec = None, seed: Seed = 0, param: Param = None, data_root: DataRoot = None,
                quiet: Quiet = False, json_out: Json = False, overwrite: Overwrite = False,
                force: Force = False, device: Device = "auto") -> None: ...

    return list(inspect.signature(options, eval_str=True).parameters.values())


def _print(r: api.DefenseResult, json_out: bool) -> None:
    if json_out:
        typer.echo(json.dumps(r.to_dict(), sort_keys=True))
        return
    wrote = str(r.out) + (f" and {r.curve_png}" if r.curve_png else "")
    typer.echo(f"wrote {wrote} ({r.defense}, {r.clean_samples} clean samples, {r.wall_time_s:.1f} s)")
    if r.fraction_pruned is not None:
        typer.echo(f"pruned {100 * r.fraction_pruned:.1f}% of the last conv layer's channels")
    for when, m in (("before", r.before), ("after", r.after)):
        line = f"{when:6} clean accuracy {pct(m['clean_accuracy'])}"
        if "attack_success_rate" in m:
            line += f", attack success rate {pct(m['attack_success_rate'])}"
        typer.echo(line)


def _mitigation_command(name: str) -> Any:
    factory = registries.MITIGATIONS.get(name)

    def body(**v: Any) -> None:
        params = {**parse_params(v["param"]), **given_plugin_params(factory, v, skip=SHARED, prefix="p_")}
        r = api.defend(name, v["model_file"], v["out"], clean_fraction=v["clean_fraction"],
                       attack_spec=v["attack_spec"], seed=v["seed"], params=params, data_root=v["data_root"],
                       progress=not v["quiet"], overwrite=v["overwrite"], force=v["force"], device=v["device"])
        _print(r, v["json_out"])

    return make_command(body, _common_options() + option_parameters(factory, skip=SHARED, prefix="p_"),
                        f"{first_line(factory)} Only the model and a clean hold-out reach the defense.")


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Removal defenses: repair a model file using only a clean set "
                        "(one sub-command per registered mitigation), or compare them all.")
    app.add_typer(group, name="defend")
    for name in registries.MITIGATIONS.names():
        group.command(name)(_mitigation_command(name))

    @group.command("compare")
    def compare(
        out: Annotated[Path, typer.Option("--out", "-o", help="Folder for records, table and figures.")]
        = Path("removal-report"),
        gtsrb: Annotated[bool, typer.Option("--gtsrb/--no-gtsrb", help="Also the GTSRB stop-sign model (slow).")]
        = False,
        mnist_model: Annotated[Path | None, typer.Option(
            help="Reuse this MNIST BadNets model file (its .attack.json beside it) instead of training one.")] = None,
        mnist_clean_model: Annotated[Path | None, typer.Option(
            help="Clean MNIST model the pruning-aware attacker starts from (else it trains one).")] = None,
        gtsrb_model: Annotated[Path | None, typer.Option(
            help="Reuse this GTSRB stop-sign model file (with its .attack.json) instead of training one.")] = None,
        clean_fraction: CleanFraction = 0.05, max_accuracy_drop: MaxDrop = 0.04,
        tune_epochs: Epochs = 10, tune_lr: Lr = 0.01,
        dp_clip: Annotated[float, typer.Option(help="DP-SGD clip norm.")] = 1.0,
        dp_noise: Annotated[float, typer.Option(help="DP-SGD noise multiplier.")] = 0.5,
        dp_epochs: Annotated[int, typer.Option(help="DP-SGD epochs.")] = 4,
        epochs: Annotated[int, typer.Option(help="Epochs of the MNIST models trained here.")] = 4,
        seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False,
        overwrite: Overwrite = False, executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None,
        device: Device = "auto",
    ) -> None:
        """Run every removal defense (and DP-SGD training) on BadNets and pruning-aware models; write a table
        (summary.md), records and figures into --out."""
        r = api.compare_defenses(out, gtsrb=gtsrb, mnist_model=mnist_model, mnist_clean_model=mnist_clean_model,
                             gtsrb_model=gtsrb_model, clean_fraction=clean_fraction,
                             max_accuracy_drop=max_accuracy_drop, tune_epochs=tune_epochs, tune_lr=tune_lr,
                             dp_clip=dp_clip, dp_noise=dp_noise, dp_epochs=dp_epochs, epochs=epochs, seed=seed,
                             data_root=data_root, progress=not quiet, overwrite=overwrite,
                             executor=make_executor(executor, jobs, address), device=device)
        if json_out:
            typer.echo(json.dumps({k: r[k] for k in ("config", "rows", "figures", "wall_time_s")}, sort_keys=True,
                                  default=str))
        else:
            typer.echo(r["table"])
            typer.echo(f"wrote {out}/summary.md, records.jsonl and {', '.join(Path(f).name for f in r['figures'])} "
                       f"({r['wall_time_s']:.0f} s)")
