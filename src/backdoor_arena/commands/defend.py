"""`defend pruning|fine-tuning|fine-pruning` and `defend compare`: thin layers over
`experiments.removal.defend()` and `experiments.removal.compare_defenses()`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from .options import DataRoot, Json, Quiet, pct

ModelFile = Annotated[Path, typer.Argument(help="The model file to repair (.safetensors).")]
Out = Annotated[Path, typer.Option("--out", "-o", help="The repaired model file (.safetensors); the curve is "
                                   "written beside it as OUT.curve.png and OUT.curve.jsonl.")]
CleanFraction = Annotated[float, typer.Option(
    help="The defender's clean set: this fraction of the training split (never the test split).")]
AttackSpec = Annotated[Path | None, typer.Option(
    help="Attack spec (F.attack.json): read by the evaluator only, to report ASR; the defense never sees it.")]
Seed = Annotated[int, typer.Option(help="Seed (clean hold-out draw, fine-tuning order).")]
MaxDrop = Annotated[float, typer.Option(
    help="Pruning stops before clean accuracy on the clean set drops by more than this fraction (0.04 = 4 points).")]
Epochs = Annotated[int, typer.Option(help="Fine-tuning epochs over the clean set.")]
Lr = Annotated[float, typer.Option(help="Fine-tuning learning rate (constant, SGD with momentum 0.9).")]


def _run(defense: str, model_file: Path, out: Path, clean_fraction: float, attack_spec: Path | None, seed: int,
         params: dict[str, Any], data_root: Path | None, quiet: bool, json_out: bool) -> None:
    from ..experiments.removal import defend

    r = defend(defense, model_file, out, clean_fraction=clean_fraction, attack_spec=attack_spec, seed=seed,
               params=params, data_root=data_root, progress=not quiet)
    if json_out:
        typer.echo(json.dumps(r, sort_keys=True))
        return
    wrote = r["out"] + (f" and {r['curve_png']}" if r["curve_png"] else "")
    typer.echo(f"wrote {wrote} ({defense}, {r['clean_samples']} clean samples, {r['wall_time_s']:.1f} s)")
    if r["fraction_pruned"] is not None:
        typer.echo(f"pruned {100 * r['fraction_pruned']:.1f}% of the last conv layer's channels")
    for when in ("before", "after"):
        m = r[when]
        line = f"{when:6} clean accuracy {pct(m['clean_accuracy'])}"
        if "attack_success_rate" in m:
            line += f", attack success rate {pct(m['attack_success_rate'])}"
        typer.echo(line)


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Removal defenses: repair a model file using only a clean set.")
    app.add_typer(group, name="defend")

    @group.command("pruning")
    def pruning(model_file: ModelFile, out: Out, clean_fraction: CleanFraction = 0.05, attack_spec: AttackSpec = None,
                max_accuracy_drop: MaxDrop = 0.04, seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False,
                json_out: Json = False) -> None:
        """Prune the last conv layer's least active channels (Liu et al. 2018)."""
        _run("pruning", model_file, out, clean_fraction, attack_spec, seed, {"max_accuracy_drop": max_accuracy_drop},
             data_root, quiet, json_out)

    @group.command("fine-tuning")
    def fine_tuning(model_file: ModelFile, out: Out, clean_fraction: CleanFraction = 0.05,
                    attack_spec: AttackSpec = None, epochs: Epochs = 10, lr: Lr = 0.01, seed: Seed = 0,
                    data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False) -> None:
        """Fine-tune on the clean set."""
        _run("fine-tuning", model_file, out, clean_fraction, attack_spec, seed, {"epochs": epochs, "lr": lr},
             data_root, quiet, json_out)

    @group.command("fine-pruning")
    def fine_pruning(model_file: ModelFile, out: Out, clean_fraction: CleanFraction = 0.05,
                     attack_spec: AttackSpec = None, max_accuracy_drop: MaxDrop = 0.04, epochs: Epochs = 10,
                     lr: Lr = 0.01, seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False,
                     json_out: Json = False) -> None:
        """Prune, then fine-tune with the pruned channels held at zero (Liu et al. 2018)."""
        _run("fine-pruning", model_file, out, clean_fraction, attack_spec, seed,
             {"max_accuracy_drop": max_accuracy_drop, "epochs": epochs, "lr": lr}, data_root, quiet, json_out)

    @group.command("nc-unlearning")
    def nc_unlearning(model_file: ModelFile, out: Out, clean_fraction: CleanFraction = 0.05,
                      attack_spec: AttackSpec = None, epochs: Annotated[int, typer.Option(
                          help="Unlearning epochs over the clean set.")] = 2,
                      stamp_fraction: Annotated[float, typer.Option(
                          help="Fraction of the clean set stamped with the reversed trigger (labels kept).")] = 0.2,
                      lr: Lr = 0.01, steps: Annotated[int, typer.Option(
                          help="Neural Cleanse optimisation steps (trigger reverse-engineering).")] = 200,
                      seed: Seed = 0, data_root: DataRoot = None, quiet: Quiet = False, json_out: Json = False) -> None:
        """Reverse-engineer the trigger with Neural Cleanse, then unlearn it (Wang et al. 2019)."""
        _run("nc-unlearning", model_file, out, clean_fraction, attack_spec, seed,
             {"epochs": epochs, "stamp_fraction": stamp_fraction, "lr": lr,
              "detector": {"steps": steps, "batch_size": 16}}, data_root, quiet, json_out)

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
    ) -> None:
        """Run every removal defense (and DP-SGD training) on BadNets and pruning-aware models; write a table
        (summary.md), records and figures into --out."""
        from ..experiments.removal import compare_defenses

        r = compare_defenses(out, gtsrb=gtsrb, mnist_model=mnist_model, mnist_clean_model=mnist_clean_model,
                             gtsrb_model=gtsrb_model, clean_fraction=clean_fraction,
                             max_accuracy_drop=max_accuracy_drop, tune_epochs=tune_epochs, tune_lr=tune_lr,
                             dp_clip=dp_clip, dp_noise=dp_noise, dp_epochs=dp_epochs, epochs=epochs, seed=seed,
                             data_root=data_root, progress=not quiet)
        if json_out:
            typer.echo(json.dumps({k: r[k] for k in ("config", "rows", "figures", "wall_time_s")}, sort_keys=True,
                                  default=str))
        else:
            typer.echo(r["table"])
            typer.echo(f"wrote {out}/summary.md, records.jsonl and {', '.join(Path(f).name for f in r['figures'])} "
                       f"({r['wall_time_s']:.0f} s)")
