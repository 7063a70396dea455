"""The data folder: where it is, how files get there, and how we know they are intact.

Resolution order: an explicit `root`, then `$BACKDOOR_ARENA_DATA`, then `~/.cache/backdoor-arena`.
Every published file is checked against its md5. Missing files are downloaded with pooch: into a
temporary file in the target folder, renamed into place only once its md5 matches, so the cache
never holds a partial or corrupt file that we wrote. A corrupt file that is already there is
reported, never deleted. A load that fails leaves no new folder behind.

Nothing here is process-wide: the digests already checked are remembered by a `DataFolder`, an
object its caller owns (a `DatasetStore` holds one); the module-level functions use a fresh one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import DatasetError

ENV_VAR = "BACKDOOR_ARENA_DATA"
# Offline machines must fail fast instead of hanging: a short limit to reach a host, a longer one
# for each read of a slow but live transfer. One try per mirror, no retries.
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
USER_AGENT = "backdoor-arena"
_CHUNK = 1 << 20

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteFile:
    """A published file: where it lives under the data root, its mirrors and its md5."""

    relpath: str
    urls: tuple[str, ...]
    md5: str


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: `root` if given, else $BACKDOOR_ARENA_DATA, else ~/.cache/backdoor-arena.

    Only computes the path: nothing is created.
    """
    if root is None or os.fspath(root) == "":
        root = os.environ.get(ENV_VAR) or Path.home() / ".cache" / "backdoor-arena"
    return Path(root).expanduser().resolve()


def md5sum(path: str | Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _corrupt(path: Path, actual: str, md5: str) -> DatasetError:
    return DatasetError(
        f"{path} is corrupt or truncated: its md5 is {actual}, expected {md5}. "
        f"Delete it to download it again (or replace it with a good copy)."
    )


def verify(path: str | Path, md5: str) -> None:
    """Raise DatasetError if the file at `path` does not have the published md5 (hashes it every time)."""
    actual = md5sum(path)
    if actual != md5:
        raise _corrupt(Path(path), actual, md5)


class DataFolder:
    """One data folder, and the md5 digests of the files already checked in it.

    Each file is hashed once per `DataFolder` (keyed by path, size and modification time, so a
    replaced file is hashed again). The object is path-like: `Path(folder)` is its root.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = resolve_root(root)
        self._digests: dict[tuple[str, int, int], str] = {}

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"DataFolder({str(self.root)!r})"

    def digest(self, path: Path) -> str:
        """The md5 of `path`, hashed only if this folder has not seen this version of the file."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = md5sum(path)
        return self._digests[key]

    def verify(self, path: Path, md5: str) -> None:
        actual = self.digest(path)
        if actual != md5:
            raise _corrupt(path, actual, md5)

    def fetch_all(
        self, files: Sequence[RemoteFile], *, dataset: str, download: bool = True, hint: str = ""
    ) -> list[Path]:
        """Paths of `files` under the root, verified, downloading the missing ones if allowed.

        If any file cannot be had, one DatasetError lists every missing file and where to put it;
        `hint` is appended to that message.
        """
        paths = [self.root / f.relpath for f in files]
        missing = []
        for file, path in zip(files, paths, strict=True):
            if path.is_file():
                self.verify(path, file.md5)
            else:
                missing.append(file)
        if missing and not download:
            raise _missing_error(dataset, self.root, missing, "downloads are disabled (download=False)", hint)
        for i, file in enumerate(missing):
            try:
                self._download(self.root / file.relpath, file.urls, file.md5)
            except _DownloadFailed as e:
                raise _missing_error(dataset, self.root, missing[i:], str(e), hint) from None
        return paths

    def fetch(self, relpath: str, urls: Sequence[str], md5: str, *, download: bool = True) -> Path:
        """The verified file `relpath` under the root, downloaded from `urls` if missing."""
        dataset = Path(relpath).parts[0]
        return self.fetch_all([RemoteFile(relpath, tuple(urls), md5)], dataset=dataset, download=download)[0]

    def _download(self, path: Path, urls: Sequence[str], md5: str) -> None:
        """Try each mirror in order with pooch; the first that serves the right bytes wins.

        pooch creates the target folder before it connects; if every mirror fails, the folders
        this call created are removed again (when still empty), so a failed load leaves nothing.
        """
        created = _absent_folders(path.parent)
        try:
            failures = []
            for url in urls:
                reason = _retrieve(url, path, md5)
                if reason is None:
                    break
                failures.append(f"{url}: {reason}")
            else:
                raise _DownloadFailed(f"could not download {path.name} ({'; '.join(failures) or 'no mirror'})")
        except BaseException:
            _remove_empty(created)
            raise
        st = path.stat()  # the bytes were just verified: remember, so the next load does not hash them
        self._digests[(str(path), st.st_size, st.st_mtime_ns)] = md5


def as_folder(root: DataFolder | str | os.PathLike[str] | None) -> DataFolder:
    """`root` itself if it is a DataFolder, else a fresh one for that path (no digests remembered)."""
    return root if isinstance(root, DataFolder) else DataFolder(root)


class _DownloadFailed(DatasetError):
    pass


def _retrieve(url: str, path: Path, md5: str) -> str | None:
    """Download `url` to `path` through pooch, md5-checked; None on success, else why it failed."""
    import pooch  # lazy: only a download pays for importing pooch and requests
    import requests

    log.info("downloading %s to %s", url, path)
    bar = _ProgressBar(f"download {path.name}")
    downloader = pooch.HTTPDownloader(
        progressbar=bar, chunk_size=_CHUNK, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S),
        headers={"User-Agent": USER_AGENT},
    )
    pooch_log = pooch.get_logger()  # pooch announces every attempt on stderr; our own bar shows progress
    level = pooch_log.level
    pooch_log.setLevel("WARNING")
    try:
        pooch.retrieve(url, known_hash=f"md5:{md5}", fname=path.name, path=path.parent, downloader=downloader)
    except requests.exceptions.RequestException as e:  # an OSError: caught before the disk errors below
        return _network_reason(e)
    except ValueError as e:  # pooch: the md5 of the downloaded bytes is wrong (they were deleted)
        got = re.search(r"got (?:md5:)?([0-9a-f]{32})", str(e))
        return f"md5 {got[1]} instead of {md5}" if got else str(e).split(". ")[0]
    except OSError as e:
        raise DatasetError(
            f"cannot write {path}: {e.strerror or e}. Choose a writable data folder with root=... or ${ENV_VAR}."
        ) from None
    finally:
        pooch_log.setLevel(level)
        bar.close()
    with contextlib.suppress(OSError):  # e.g. another user's process delivered the file meanwhile
        os.chmod(path, 0o644)  # pooch's temporary file is 0600; a shared cache should stay readable
    return None


class _ProgressBar:
    """pooch's progress-bar protocol (total, update, reset, close) on a tqdm bar.

    The bar appears once the server answers (pooch sets `total` then), so nothing is drawn for a
    mirror that cannot be reached. pooch tests the bar's truth before it sets the size, which a
    tqdm bar without a size would refuse: this object is always true.
    """

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self._bar: Any = None

    def __bool__(self) -> bool:
        return True

    @property
    def total(self) -> float | None:
        return None if self._bar is None else self._bar.total

    @total.setter
    def total(self, size: int) -> None:
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(desc=self.desc, unit="B", unit_scale=True, leave=False, mininterval=0.5)
        self._bar.total = size or None  # 0: the server did not say
        self._bar.refresh()

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _network_reason(e: Exception) -> str:
    """One short phrase for a requests failure (its own messages span nested reprs)."""
    import requests

    if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
        return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
    if isinstance(e, requests.exceptions.Timeout):
        return "timed out"
    if isinstance(e, requests.exceptions.ConnectionError):
        text = str(e)
        if "NameResolution" in text or "Name or service not known" in text or "getaddrinfo" in text:
            return "host not found (offline?)"
        if "Connection refused" in text:
            return "connection refused"
        if "unreachable" in text:
            return "network is unreachable"
        return "no connection"
    return f"{type(e).__name__}: {e}".splitlines()[0]


def _absent_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    absent = []
    while not folder.exists() and folder.parent != folder:
        absent.append(folder)
        folder = folder.parent
    return absent


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # deepest first; stop at the first that is not empty (or not ours to remove)
        try:
            folder.rmdir()
        except OSError:
            return


def _missing_error(dataset: str, root: Path, missing: Sequence[RemoteFile], why: str, hint: str) -> DatasetError:
    # Group by folder and name each mirror once (as a base URL) so the message stays on one line.
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
    root: DataFolder | str | os.PathLike[str] | None,
    files: Sequence[RemoteFile],
    *,
    dataset: str,
    download: bool = True,
    hint: str = "",
) -> list[Path]:
    """`DataFolder.fetch_all` on `root` (a DataFolder, or a path for a fresh one)."""
    return as_folder(root).fetch_all(files, dataset=dataset, download=download, hint=hint)


def fetch(
    root: DataFolder | str | os.PathLike[str] | None,
    relpath: str,
    urls: Sequence[str],
    md5: str,
    *,
    download: bool = True,
) -> Path:
    """The verified file `relpath` under the data root, downloaded from `urls` if missing."""
    return as_folder(root).fetch(relpath, urls, md5, download=download)


@contextmanager
def atomic_write(path: str | Path) -> Iterator[BinaryIO]:
    """For files we build ourselves (the GTSRB npz): open a temporary file next to `path` and rename
    it to `path` only if the block succeeds. On any exception the temporary file is removed and
    `path` is left as it was.
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
