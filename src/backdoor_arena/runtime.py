"""Process-level settings: CPU threads, library versions, seeded scopes.

Importing this module changes nothing. `set_threads` is the one function here with a process-wide
effect (torch's intra-op thread count); it is called explicitly, once, by the CLI entry point and
by the verbs layer, or by a Python user. Library code below the verbs layer never calls it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread count for the whole process and return it.

    `threads` if given (0 or None: not given), else $BACKDOOR_ARENA_THREADS, else all the cores this process may run on
    (torch defaults to physical cores, often fewer). On a machine shared with other jobs, OpenMP
    threads that outnumber the free cores are many times slower than fewer threads (measured: 20x
    at load 8 on 2 cores), so shared machines set BACKDOOR_ARENA_THREADS.
    """
    if threads is not None and threads < 0:
        from .errors import ConfigError

        raise ConfigError(f"threads must be a positive integer (or 0 for the default), got {threads}")
    n = threads or _threads_from_env() or available_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def _threads_from_env() -> int | None:
    from .errors import ConfigError

    raw = os.environ.get("BACKDOOR_ARENA_THREADS", "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"BACKDOOR_ARENA_THREADS must be a positive integer, got {raw!r}; unset it to use all cores")
    return int(raw)


def versions() -> dict[str, str]:
    import numpy
    import safetensors

    from . import __version__

    return {
        "backdoor_arena": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
        "safetensors": safetensors.__version__, "python": platform.python_version(),
    }


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global generator inside the block only (weight init, dropout), then restore it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
