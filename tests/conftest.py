"""Shared fixtures. Real datasets are found through $BACKDOOR_ARENA_DATA (CI: ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The folder holding the real datasets; the test run fails (not skips) without MNIST."""
    root = Path(os.environ.get("BACKDOOR_ARENA_DATA", REPO / ".." / "shared" / "data")).resolve()
    needed = [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    missing = [name for name in needed if not (root / "mnist" / name).is_file()]
    if missing:
        pytest.fail(
            f"real MNIST files are missing from {root / 'mnist'}: {', '.join(missing)}. "
            f"Set BACKDOOR_ARENA_DATA to the folder holding mnist/, qmnist/, fashion-mnist/ and gtsrb/ "
            f"(CI uses ../shared/data relative to the repository root)."
        )
    return root


@pytest.fixture(scope="session", autouse=True)
def _tiny_datasets():
    """The synthetic test datasets, registered by name for the whole run (model files name their dataset)."""
    from tests.helpers import register_tiny_datasets

    register_tiny_datasets()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Library code never sets the thread count (the CLI does, at its entry); the test process does it once,
    as a Python user would (BACKDOOR_ARENA_THREADS, else every core this process may use)."""
    from backdoor_arena.runtime import set_threads

    set_threads()


@pytest.fixture(scope="session", autouse=True)
def _data_env(data_root):
    """Library defaults read $BACKDOOR_ARENA_DATA; point it at the real data for the whole run."""
    previous = os.environ.get("BACKDOOR_ARENA_DATA")
    os.environ["BACKDOOR_ARENA_DATA"] = str(data_root)
    yield
    if previous is None:
        os.environ.pop("BACKDOOR_ARENA_DATA", None)
    else:
        os.environ["BACKDOOR_ARENA_DATA"] = previous


@pytest.fixture(scope="session")
def tiny_mnist_model(tmp_path_factory, data_root):
    """A BadNets MNIST model from one short epoch on a subset: for plumbing tests, not for accuracy."""
    import torch

    from backdoor_arena.api import train_model
    from backdoor_arena.attacks import make_attack
    from backdoor_arena.data import load_dataset
    from backdoor_arena.train import TrainConfig

    out = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    train = load_dataset("mnist", "train", data_root).subset(torch.arange(3000))
    test = load_dataset("mnist", "test", data_root)
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, target=7, poison_rate=0.1)
    poisoned = atk.poison(train, torch.Generator().manual_seed(0))
    r = train_model("badnet-mnist", poisoned.dataset, test, TrainConfig(epochs=1, progress=False), out, atk, "t")
    return r.path, r.spec_path
