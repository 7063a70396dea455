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
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed torch's global generator inside the block only (weight init, dropout), then restore it. With a
    CUDA `device`, that device's generator too (dropout on the GPU draws from it)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def use_deterministic(device: torch.device) -> bool:
    """Deterministic algorithms for a run on `device`, where the device allows; returns whether results are
    then reproducible bit for bit. CPU: nothing to change (the kernels here are deterministic at a fixed
    thread count). CUDA: cuBLAS needs CUBLAS_WORKSPACE_CONFIG before its first use, and
    `torch.use_deterministic_algorithms(True, warn_only=True)` picks deterministic kernels where they exist and
    warns (rather than failing) where an operation has none. MPS: no deterministic mode; stated in the record
    (`describe_device`). A process-wide setting: the verbs layer calls it, once per run."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        return True
    return device.type == "cpu"


def run_device(spec: str | None, *, supported: tuple[str, ...] = ("cpu", "cuda", "mps"),
               what: str = "this command") -> torch.device:
    """`resolve_device` for a verb that is about to run: the device, with deterministic algorithms set where
    the device allows (`use_deterministic`)."""
    device = resolve_device(spec, supported=supported, what=what)
    use_deterministic(device)
    return device


DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")


def resolve_device(spec: str | None = "auto", *, supported: tuple[str, ...] = ("cpu", "cuda", "mps"),
                   what: str = "this command") -> torch.device:
    """`--device auto|cpu|cuda[:N]|mps` as a torch.device that exists on this machine, or a ConfigError.

    `supported` lists the kinds of device the verb's computation can run on; `auto` is the first available
    of cuda, mps, cpu among them, and an explicit device outside them is refused with the reason (rather than
    silently running elsewhere)."""
    from .errors import ConfigError

    raw = "auto" if spec is None else str(spec).strip().lower()
    kind, _, index = raw.partition(":")
    if kind not in ("auto", "cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())) or \
            (raw.endswith(":") and not index):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} (N a CUDA device number), got {spec!r}")
    if kind == "auto":
        for candidate in ("cuda", "mps", "cpu"):
            if candidate in supported and (candidate == "cpu" or _available(candidate)):
                return torch.device(candidate, 0) if candidate == "cuda" else torch.device(candidate)
        raise ConfigError(f"{what} runs on {', '.join(supported)} only, and none is available here")
    if kind not in supported:
        raise ConfigError(f"{what} runs on {' or '.join(supported)} only so far (its training or detection code takes "
                          f"no other device yet); got --device {spec}; use --device {supported[0]} or auto")
    if kind == "cpu":
        return torch.device("cpu")
    if not _available(kind):
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise ConfigError(f"--device {spec}: no {kind.upper()} device is available here (torch {torch.__version__}, "
                          f"{build if kind == 'cuda' else 'MPS needs Apple silicon'}); use --device cpu or auto")
    if kind == "mps":
        return torch.device("mps")
    n = int(index or 0)
    count = torch.cuda.device_count()
    if n >= count:
        raise ConfigError(f"--device {spec}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", n)


def _available(kind: str) -> bool:
    if kind == "cuda":
        return torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def describe_device(device: torch.device) -> dict[str, object]:
    """What a run record says about its device: the device, its name, and whether results are bit-for-bit
    reproducible there (CPU: yes at a fixed thread count; CUDA: only with deterministic algorithms, which
    some operations lack, and with CUBLAS_WORKSPACE_CONFIG set; MPS: not guaranteed)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        deterministic = torch.are_deterministic_algorithms_enabled() and bool(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    elif device.type == "mps":
        name, deterministic = "Apple MPS", False
    else:
        name, deterministic = platform.processor() or platform.machine(), True
    return {"device": str(device), "device_name": name, "deterministic": deterministic,
            "threads": torch.get_num_threads()}
