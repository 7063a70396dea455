"""`backdoor-arena transfer`: retrain a (backdoored) model's fully connected head for another task and measure
whether the backdoor survives (api.transfer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .. import api
from .options import DataRoot, Device, Force, Json, emit, pct


def transfer(
    model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    attack_spec: Annotated[Path, typer.Option(help="The attack spec whose trigger is measured (F.attack.json).")],
    task: Annotated[str, typer.Option(help="The new task: gtsrb-categories (43 signs -> 6 categories) or parity "
                                      "(MNIST digits -> even/odd).")],
    epochs: Annotated[int, typer.Option(help="Epochs of head retraining.")] = 2,
    lr: Annotated[float, typer.Option(help="SGD learning rate of the head retraining.")] = 0.01,
    train_size: Annotated[int | None, typer.Option(help="Retrain on this many seeded training images (default: "
                                                   "all).")] = None,
    factor: Annotated[float, typer.Option(help="Strengthening: scale the backdoor channels by this factor first.")
                      ] = 1.0,
    channels: Annotated[int, typer.Option(help="Strengthening: how many last-conv channels (those the trigger raises "
                                          "most).")] = 0,
    from_scratch: Annotated[bool, typer.Option(help="Re-initialise every fully connected layer before retraining "
                                               "(BadNets' setting); default: only the output layer is new.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the new output layer and the batches.")] = 0,
    data_root: DataRoot = None, force: Force = False, json_out: Json = False, device: Device = "auto",
) -> None:
    """Transfer learning (BadNets, Section 5.3): retrain the model's fully connected layers for a new task, its
    convolutional features frozen; report clean and triggered accuracy on the new task."""
    r = api.transfer(model_file, attack_spec, task=task, epochs=epochs, lr=lr, train_size=train_size, factor=factor,
                     channels=channels, from_scratch=from_scratch, seed=seed, data_root=data_root, force=force,
                     device=device)
    b, a = r.before, r.after
    emit(r.to_dict(), json_out, [
        f"before (original task): clean accuracy {pct(b['clean_accuracy'])}, ASR {pct(b.get('attack_success_rate'))}",
        f"after ({task}): clean accuracy {pct(a['clean_accuracy'])}, accuracy on triggered inputs "
        f"{pct(a['triggered_accuracy'])} (clean, same inputs: {pct(a['clean_accuracy_on_eligible'])}); with the "
        f"trigger on every test input {pct(a['triggered_accuracy_all'])}",
    ] + ([f"strengthened channels {r.strengthened_channels} by x{r.factor:g}"] if r.strengthened_channels else []))


def register(app: typer.Typer) -> None:
    app.command()(transfer)
