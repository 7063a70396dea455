"""The data folder: where it is, how files get there, and how we know they are intact.

Resolution order: an explicit `root`, then `$BACKDOOR_ARENA_DATA`, then `~/.cache/backdoor-arena`.
Every published file is checked against its md5; a download goes to a temporary file in the
target folder and is renamed into place only once verified, so the cache never holds a partial or
corrupt file that we wrote. A corrupt file that is already there is reported, never deleted.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from ..errors import DatasetError

ENV_VAR = "BACKDOOR_ARENA_DATA"
TIMEOUT_S = 20.0  # per url and per socket operation: offline machines fail fast instead of hanging
_CHUNK = 1 << 20

log = logging.getLogger(__name__)

# (path, size, mtime_ns) -> md5 hex digest, so each file is hashed once per process.
_DIGESTS: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class RemoteFile:
    """A published file: where it lives under the data root, its mirrors and its md5."""

    relpath: str
    urls: tuple[str, ...]
    md5: str


def resolve_root(root: str | Path | None = None) -> Path:
    """The data folder: `root` if given, else $BACKDOOR_ARENA_DATA, else ~/.cache/backdoor-arena."""
    if root is None or str(root) == "":
        root = os.environ.get(ENV_VAR) or Path.home() / ".cache" / "backdoor-arena"
    return Path(root).expanduser().resolve()


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _cached_md5(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = md5sum(path)
    return _DIGESTS[key]


def verify(path: Path, md5: str) -> None:
    """Raise DatasetError if the file at `path` does not have the published md5."""
    actual = _cached_md5(path)
    if actual != md5:
        raise DatasetError(
            f"{path} is corrupt or truncated: its md5 is {actual}, expected {md5}. "
            f"Delete it to download it again (or replace it with a good copy)."
        )


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temporary file next to `path`; rename it to `path` only if the block succeeds.

    On any exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as e:
        raise DatasetError(
            f"cannot write {path}: {e.strerror or e}. Choose a writable data folder with root=... or ${ENV_VAR}."
        ) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache should stay readable
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _DownloadFailed(DatasetError):
    pass


def _download(path: Path, urls: Sequence[str], md5: str) -> None:
    """Try each mirror in order; the first that serves the right bytes wins."""
    failures = []
    for url in urls:
        log.info("downloading %s to %s", url, path)
        try:
            with atomic_write(path) as f:
                request = urllib.request.Request(url, headers={"User-Agent": "backdoor-arena"})
                digest = hashlib.md5(usedforsecurity=False)
                with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response, tqdm(
                    total=int(response.headers.get("Content-Length") or 0) or None, unit="B", unit_scale=True,
                    desc=f"download {path.name}", leave=False, mininterval=0.5,
                ) as bar:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        f.write(chunk)
                        bar.update(len(chunk))
                if digest.hexdigest() != md5:
                    raise _DownloadFailed(f"md5 {digest.hexdigest()} instead of {md5}")
        except (OSError, http.client.HTTPException, ValueError, _DownloadFailed) as e:
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            failures.append(f"{url}: {reason or type(e).__name__}")
            continue
        st = path.stat()  # the bytes were just verified: remember, so the next load is fast
        _DIGESTS[(str(path), st.st_size, st.st_mtime_ns)] = md5
        return
    raise _DownloadFailed(f"could not download {path.name} ({'; '.join(failures)})")


def _missing_error(dataset: str, root: Path, missing: Sequence[RemoteFile], why: str, hint: str) -> DatasetError:
    # Group by folder and name each mirror once (as a base URL) so the message stays readable.
    names: dict[Path, list[str]] = {}
    mirrors: dict[Path, list[str]] = {}
    for file in missing:
        folder, name = (root / file.relpath).parent, Path(file.relpath).name
        names.setdefault(folder, []).append(name)
        for url in file.urls:
            base = url[: -len(name)] if url.endswith(name) else url
            if base not in mirrors.setdefault(folder, []):
                mirrors[folder].append(base)
    places = " and ".join(
        f"{', '.join(names[folder])} in {folder} (from {' or '.join(mirrors[folder])})" for folder in names
    )
    return DatasetError(
        f"dataset {dataset!r}: {len(missing)} file(s) missing and {why}. Put {places}, or pass root=... "
        f"or set ${ENV_VAR} to a data folder that holds them.{' ' + hint if hint else ''}"
    )


def fetch_all(
    root: str | Path | None,
    files: Sequence[RemoteFile],
    *,
    dataset: str,
    download: bool = True,
    hint: str = "",
) -> list[Path]:
    """Paths of `files` under the data root, downloading the missing ones if allowed.

    If any file cannot be had, one DatasetError lists every missing file and where to put it;
    `hint` is appended to that message.
    """
    base = resolve_root(root)
    paths = [base / f.relpath for f in files]
    missing = []
    for file, path in zip(files, paths, strict=True):
        if path.is_file():
            verify(path, file.md5)
        else:
            missing.append(file)
    if missing and not download:
        raise _missing_error(dataset, base, missing, "downloads are disabled (download=False)", hint)
    for i, file in enumerate(missing):
        try:
            _download(base / file.relpath, file.urls, file.md5)
        except _DownloadFailed as e:
            raise _missing_error(dataset, base, missing[i:], str(e), hint) from None
    return paths


def fetch(root: str | Path | None, relpath: str, urls: Sequence[str], md5: str, *, download: bool = True) -> Path:
    """The verified file `relpath` under the data root, downloaded from `urls` if missing."""
    dataset = Path(relpath).parts[0]
    return fetch_all(root, [RemoteFile(relpath, tuple(urls), md5)], dataset=dataset, download=download)[0]
