"""`zoo build` and `zoo evaluate`: seeded zoos of clean and backdoored models and a detector's AUROC over
them, thin over `api.build_zoo()` and `api.evaluate_zoo()`; both run one sweep job per model through
--executor local|processes|ray and resume a killed run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .. import api
from .options import (
    DataRoot,
    Device,
    ExecutorName,
    Jobs,
    Json,
    Overwrite,
    Quiet,
    RayAddress,
    emit,
    make_executor,
    parse_numbers,
    parse_params,
)

Param = Annotated[list[str] | None, typer.Option("--param", "-p", help="Detector parameter key=value (repeatable), "
                                                 "e.g. -p steps=200.")]
CleanFraction = Annotated[float, typer.Option(help="Defender's clean hold-out: this fraction of the training split.")]
Seed = Annotated[int, typer.Option(help="Seed of the hold-out and of the detector.")]


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def register(app: typer.Typer) -> None:
    zoo_app = typer.Typer(no_args_is_help=True, help="Seeded zoos of clean and backdoored models, and detector "
                          "AUROC over them.")

    @zoo_app.command("build")
    def zoo_build(out: Annotated[Path, typer.Option("--out", "-o", help="Zoo folder.")],
                  dataset: Annotated[str, typer.Option(help="Dataset.")] = "mnist",
                  clean: Annotated[int, typer.Option(help="Clean models.")] = 10,
                  backdoored: Annotated[int, typer.Option(help="Backdoored models.")] = 10,
                  model: Annotated[str, typer.Option(help="Architecture id.")] = "badnet-mnist",
                  epochs: Annotated[int, typer.Option(help="Training epochs per model.")] = 2,
                  train_size: Annotated[int | None, typer.Option(help="Train on a seeded subset this large.")] = None,
                  max_epochs: Annotated[int | None, typer.Option(
                      help="Draw each model's epochs uniformly from --epochs to this.")] = None,
                  families: Annotated[str | None, typer.Option(
                      help="Comma-separated attack families the backdoored models cycle over (default: "
                           f"{','.join(api.zoo.DEFAULT_FAMILIES)}; also {','.join(api.zoo.EXTRA_FAMILIES)}).")] = None,
                  holdout_seed: Annotated[int | None, typer.Option(
                      help="Seed of the defenders' hold-out (default: --seed); zoos sharing it share the defenders' "
                           "clean set.")] = None,
                  poison_rates: Annotated[str | None, typer.Option(
                      help="Comma-separated poisoning rates the backdoored models draw from (default: "
                           f"{','.join(str(x) for x in api.zoo.POISON_RATES)}).")] = None,
                  blend_alphas: Annotated[str | None, typer.Option(
                      help="Comma-separated blend weights the blended families draw from (default: "
                           f"{','.join(str(x) for x in api.zoo.BLEND_ALPHAS)}).")] = None,
                  patch_sizes: Annotated[str | None, typer.Option(
                      help="Comma-separated patch sizes in pixels the patch families draw from (default: "
                           f"{','.join(str(x) for x in api.zoo.SIZES)}).")] = None,
                  threads: Annotated[int | None, typer.Option(
                      help="CPU threads in all (default: $BACKDOOR_ARENA_THREADS, else all cores); split among "
                           "--jobs workers.")] = None,
                  seed: Seed = 0, executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None,
                  device: Device = "auto", data_root: DataRoot = None, quiet: Quiet = False) -> None:
        """Train seeded clean and backdoored models (varied targets, trigger kinds, sizes, positions)."""
        ex = make_executor(executor, jobs, address, threads)
        draws = {k: v for k, v in (("poison_rates", parse_numbers(poison_rates, "--poison-rates")),
                                   ("blend_alphas", parse_numbers(blend_alphas, "--blend-alphas")),
                                   ("patch_sizes", parse_numbers(patch_sizes, "--patch-sizes", int))) if v is not None}
        if threads is not None:
            api.set_threads(threads)
        records = api.build_zoo(out, api.ZooConfig(dataset=dataset, architecture=model, clean=clean,
                                                   backdoored=backdoored, epochs=epochs, train_size=train_size,
                                                   seed=seed, max_epochs=max_epochs, holdout_seed=holdout_seed,
                                                   **({"families": tuple(f.strip() for f in families.split(","))}
                                                      if families else {}), **draws),
                                data_root=data_root, progress=not quiet, executor=ex, device=device)
        typer.echo(f"wrote {len(records)} models to {out / 'models'} (attack specs and truth in {out / 'specs'})")

    @zoo_app.command("evaluate")
    def zoo_evaluate(zoo_dir: Annotated[Path, typer.Argument(help="Zoo folder.")],
                     detector: Annotated[str, typer.Option(help="Model detector.")] = "neural-cleanse",
                     param: Param = None, clean_fraction: CleanFraction = 0.05, seed: Seed = 0,
                     out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the results.")] = None,
                     executor: ExecutorName = "local", jobs: Jobs = None, address: RayAddress = None,
                     device: Device = "auto", data_root: DataRoot = None, json_out: Json = False,
                     quiet: Quiet = False, overwrite: Overwrite = False) -> None:
        """AUROC (on scores), TPR at 5% FPR and target accuracy of a model detector over a zoo; ROC plot."""
        params = parse_params(param)
        s: dict[str, Any] = api.evaluate_zoo(zoo_dir, detector, params=params, clean_fraction=clean_fraction,
                                             seed=seed, data_root=data_root, progress=not quiet, out=out,
                                             overwrite=overwrite, executor=make_executor(executor, jobs, address),
                                             device=device)
        emit(s, json_out, [
            f"{detector} on {s['n_clean']} clean + {s['n_backdoored']} backdoored models: AUROC {_num(s['auroc'])}, "
            f"TPR@5%FPR {_num(s['tpr_at_5pct_fpr'])}, target accuracy {_num(s['target_accuracy'])}",
            f"results and ROC plot in {s['out']}"])

    app.add_typer(zoo_app, name="zoo")
