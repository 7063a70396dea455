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
