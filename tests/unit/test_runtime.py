"""Process settings: the thread count honours BACKDOOR_ARENA_THREADS and rejects nonsense in one line;
importing the library changes no process-wide setting (only an explicit `set_threads` call does)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.runtime import available_cores, seeded, set_threads


def test_thread_count_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("BACKDOOR_ARENA_THREADS", "1")
        assert set_threads() == 1 and torch.get_num_threads() == 1
        assert set_threads(2) == 2 and torch.get_num_threads() == 2  # an explicit argument wins
        assert set_threads(0) == 1  # 0 means "not given"
        monkeypatch.delenv("BACKDOOR_ARENA_THREADS")
        assert set_threads() == available_cores()
        for bad in ("0", "two", "-3"):
            monkeypatch.setenv("BACKDOOR_ARENA_THREADS", bad)
            with pytest.raises(ConfigError, match="BACKDOOR_ARENA_THREADS must be a positive integer"):
                set_threads()
        with pytest.raises(ConfigError, match="threads must be a positive integer"):
            set_threads(-2)
    finally:
        torch.set_num_threads(before)


def test_seeded_restores_the_global_generator() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with seeded(7):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)  # the block drew from its own stream
    with seeded(7):
        assert torch.equal(torch.rand(3), inside)


IMPORT_EVERYTHING = textwrap.dedent(
    """
    import importlib, pkgutil, torch
    torch.set_num_threads(3)  # a value nothing in the library would choose
    import backdoor_arena
    for mod in pkgutil.walk_packages(backdoor_arena.__path__, "backdoor_arena."):
        if mod.name.endswith("__main__"):  # `python -m backdoor_arena` runs the CLI: not an import
            continue
        importlib.import_module(mod.name)  # optional extras (h5py, ...) are imported lazily, never here
    print(torch.get_num_threads())
    """
)


def test_importing_the_library_sets_no_threads() -> None:
    """No module calls set_threads on import: with BACKDOOR_ARENA_THREADS=1 in the environment,
    any such call would change the 3 threads set before importing every module of the package."""
    env = {**os.environ, "BACKDOOR_ARENA_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["3"]
