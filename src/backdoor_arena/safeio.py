"""Reading and writing files the way every external input and output needs it: only regular files are read
(a FIFO, device or socket would block or never end), with a size limit, and every failure is one
ArenaError naming the path; writes are atomic (a temp file beside the target, then a rename), so a failure
never leaves a half-written file and never replaces a good one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import ArenaError, ConfigError

MiB = 1 << 20


def shown(path: str | os.PathLike[str]) -> str:
    """A path as it appears in a one-line message: quoted, control characters (a newline) escaped."""
    return repr(str(path))


def check_regular_file(path: str | os.PathLike[str], what: str, error: type[ArenaError] = ConfigError,
                       max_bytes: int | None = None) -> Path:
    """`path` as a Path after checking that it is an existing, readable regular file (within `max_bytes`)."""
    p = Path(path)
    if str(path) == "":
        raise error(f"{what}: the path is empty; give a file name")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise error(f"{what} {shown(p)} does not exist; check the path") from None
    except NotADirectoryError:
        raise error(f"{what} {shown(p)} does not exist (a part of the path is a file, not a folder)") from None
    except PermissionError:
        raise error(f"{what} {shown(p)} cannot be read (permission denied)") from None
    except OSError as exc:
        raise error(f"{what} {shown(p)} cannot be read ({exc.strerror or exc})") from None
    except ValueError:  # a NUL byte in the path
        raise error(f"{what} {shown(p)} is not a valid path (it holds a NUL character)") from None
    if stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {shown(p)} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise error(f"{what} {shown(p)} is {kind}, not a regular file; give a file")
    if max_bytes is not None and st.st_size > max_bytes:
        raise error(f"{what} {shown(p)} is {st.st_size} bytes, more than the {max_bytes} this input may have; "
                    "is it the right file?")
    if not os.access(p, os.R_OK):
        raise error(f"{what} {shown(p)} cannot be read (permission denied)")
    return p


def read_bytes(path: str | os.PathLike[str], what: str, error: type[ArenaError] = ConfigError,
               max_bytes: int = 64 * MiB) -> bytes:
    """The bytes of a regular file; opened without blocking, so that a FIFO swapped in after the check
    is refused rather than waited on."""
    p = check_regular_file(path, what, error, max_bytes)
    try:
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise error(f"{what} {shown(p)} cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise error(f"{what} {shown(p)} is not a regular file; give a file")
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise error(f"{what} {shown(p)} is more than {max_bytes} bytes; is it the right file?")
    return data


def read_text(path: str | os.PathLike[str], what: str, error: type[ArenaError] = ConfigError,
              max_bytes: int = 16 * MiB) -> str:
    """The UTF-8 text of a regular file."""
    data = read_bytes(path, what, error, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {shown(path)} is not UTF-8 text (byte {exc.start}); is it the right file?") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside `path`; renamed onto `path` when the block succeeds, removed when it fails."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _nearest_existing(p: Path) -> Path:
    for candidate in (p, *p.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path("/")


def check_writable_location(path: Path, what: str) -> None:
    """`path` (a file or folder to be created) can be created: the nearest existing ancestor is a writable
    folder on a writable file system. Nothing is created."""
    base = _nearest_existing(path.parent if path.name else path)
    if not base.is_dir():
        raise ConfigError(f"{what} {shown(path)} cannot be created: {shown(base)} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {shown(path)} cannot be created: {shown(base)} is not writable")
    try:  # access() says yes on read-only mounts and pseudo file systems (/proc, /sys): probe for real
        fd, probe = tempfile.mkstemp(prefix=".backdoor-arena-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = "read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise ConfigError(f"{what} {shown(path)} cannot be created in {shown(base)} ({reason})") from None


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return Path(a).resolve() == Path(b).resolve()


@contextlib.contextmanager
def output_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Create `path` (and missing parents) for the block's outputs; if the block fails, remove whatever of it
    this call created, so a failing command leaves no empty or half-filled folder behind."""
    p = Path(path)
    created = [q for q in (p, *p.parents) if not os.path.lexists(q)]
    p.mkdir(parents=True, exist_ok=True)
    try:
        yield p
    except BaseException:
        if created:
            shutil.rmtree(created[-1], ignore_errors=True)  # the top-most folder this call made
        raise
