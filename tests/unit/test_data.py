"""Dataset loading: real files from $BACKDOOR_ARENA_DATA, plus generated files for the failure paths.

No test touches the internet: every publisher mirror points at a dead local port unless a test
serves files from a local HTTP server (a thread running `http.server` on 127.0.0.1).
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import shutil
import socket
import stat
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backdoor_arena.data import (
    DataFolder,
    Dataset,
    DatasetStore,
    cache,
    cifar10,
    dataset_info,
    dataset_names,
    gtsrb,
    load_dataset,
    mnist,
    to_float,
)
from backdoor_arena.errors import ConfigError, DatasetError

MNIST_FILES = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
]
QMNIST_FILES = ["qmnist-train-labels-idx2-int.gz", "qmnist-test-labels-idx2-int.gz"]
GTSRB_ZIPS = [gtsrb.TRAIN_ZIP, gtsrb.TEST_ZIP, gtsrb.GT_ZIP]


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def everything_under(folder: Path) -> list[str]:
    """Files and folders: a failed load must not leave empty folders behind either."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


class Server:
    """A local HTTP server in a thread, serving `folder`; records the path of every GET."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.requests: list[str] = []
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:  # keep the test output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def put(self, relpath: str, data: bytes) -> str:
        """Serve `data` at `relpath`; returns its URL."""
        path = self.folder / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return self.base + relpath

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("served"))
    yield srv
    srv.close()


def dead_url() -> str:
    """A local port nobody listens on: connecting is refused at once, as on a machine with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every publisher mirror points at dead local ports: no test can reach the internet."""
    dead = [dead_url() + "a/", dead_url() + "b/"]
    for folder in mnist.URLS:
        monkeypatch.setitem(mnist.URLS, folder, tuple(dead))
    monkeypatch.setattr(cifar10, "URLS", (dead[0] + cifar10.ARCHIVE,))
    monkeypatch.setattr(gtsrb, "BASE_URL", dead[0])
    return dead


def copy_mnist(data_root: Path, root: Path) -> Path:
    """A writable copy of the real MNIST files (the shared folder is read-only)."""
    (root / "mnist").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copyfile(data_root / "mnist" / name, root / "mnist" / name)
    return root / "mnist"


def idx_gz(array: np.ndarray, dtype_code: int) -> bytes:
    header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    body = array.astype(">i4" if dtype_code == 0x0C else np.uint8).tobytes()
    return gzip.compress(header + body)


# ---------------------------------------------------------------- registry and API


def test_names_and_info_need_no_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BACKDOOR_ARENA_DATA", str(tmp_path / "nowhere"))
    assert set(dataset_names()) >= {"mnist", "fashion-mnist", "cifar10", "gtsrb"}
    info = dataset_info("gtsrb")
    assert info.num_classes == len(info.class_names) == 43
    assert info.class_names[14] == "Stop" and info.class_names[1] == "Speed limit (30km/h)"
    assert dataset_info("fashion-mnist").class_names[9] == "Ankle boot"
    assert dataset_info("mnist").input_shape == (1, 28, 28)
    assert dataset_info("cifar10").input_shape == (3, 32, 32)
    assert not (tmp_path / "nowhere").exists()


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="'train' or 'test'"):
        load_dataset("mnist", "validation")
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        load_dataset("mnsit")
    with pytest.raises(ConfigError, match="writer ids"):
        load_dataset("fashion-mnist", writers=True)


# ---------------------------------------------------------------- real data


def test_real_mnist(data_root: Path) -> None:
    store = DatasetStore(data_root)
    train = store.load("mnist", "train")
    test = load_dataset("mnist", "test", data_root, store=store)
    assert isinstance(train, Dataset)
    assert train.images.shape == (60000, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.labels.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert train.groups is None and int(train.images.max()) == 255
    assert to_float(test.images[:2]).max() <= 1.0
    # the store memoises; the function without a store reads the files again (no hidden cache)
    assert store.load("MNIST", "train") is train and load_dataset("mnist", "test", store=store) is test
    assert store.loaded() == [("mnist", "train", False), ("mnist", "test", False)]
    fresh = load_dataset("mnist", "test", data_root)
    assert fresh is not test and torch.equal(fresh.images, test.images)
    store.clear()
    assert store.loaded() == [] and store.load("mnist", "test") is not test


def test_real_mnist_writer_ids(data_root: Path) -> None:
    train = load_dataset("mnist", "train", data_root, writers=True)
    test = load_dataset("mnist", "test", data_root, writers=True)
    assert torch.equal(train.labels, load_dataset("mnist", "train", data_root).labels)
    writers, counts = train.groups.unique(return_counts=True)
    assert len(writers) == 539
    assert int(counts.min()) == 19 and int(counts.max()) == 131
    test_writers = test.groups.unique()
    assert len(test_writers) == 297
    assert not set(writers.tolist()) & set(test_writers.tolist())


def test_real_fashion_mnist(data_root: Path) -> None:
    train = load_dataset("fashion-mnist", "train", data_root)
    test = load_dataset("fashion-mnist", "test", data_root)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert test.labels.bincount().tolist() == [1000] * 10
    assert train.info.class_names[0] == "T-shirt/top"


def test_real_gtsrb(data_root: Path) -> None:
    train = load_dataset("gtsrb", "train", data_root)
    test = load_dataset("gtsrb", "test", data_root)
    assert train.images.shape == (39209, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (12630, 3, 32, 32)
    assert len(train.labels.unique()) == len(test.labels.unique()) == 43
    assert test.groups is None
    # one physical sign per group: a group never spans two classes
    groups = train.groups
    assert len(groups.unique()) == 1307
    assert torch.equal(groups // gtsrb.TRACK_STRIDE, train.labels)


# ---------------------------------------------------------------- data folder


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("BACKDOOR_ARENA_DATA", raising=False)
    assert cache.resolve_root(None) == (tmp_path / "home" / ".cache" / "backdoor-arena").resolve()
    monkeypatch.setenv("BACKDOOR_ARENA_DATA", str(tmp_path / "env"))
    assert cache.resolve_root(None) == (tmp_path / "env").resolve()
    assert cache.resolve_root(tmp_path / "arg") == (tmp_path / "arg").resolve()
    assert cache.resolve_root(str(tmp_path / "arg")) == (tmp_path / "arg").resolve()


def test_store_checks_arguments_and_touches_nothing(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "nowhere", download=False)
    assert store.root == (tmp_path / "nowhere").resolve() and not (tmp_path / "nowhere").exists()
    with pytest.raises(ConfigError, match="not the store's data folder"):
        load_dataset("mnist", "test", tmp_path / "elsewhere", store=store)
    with pytest.raises(ConfigError, match="writer ids"):
        store.load("gtsrb", "train", writers=True)
    with pytest.raises(DatasetError, match="download=False"):  # the store's setting is the default
        store.load("mnist", "test")
    assert store.loaded() == [] and not (tmp_path / "nowhere").exists()


# ---------------------------------------------------------------- missing files


def test_offline_lists_every_missing_file_fast_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "nonexistent" / "x"  # like `evaluate --data-root /nonexistent/x`
    start = time.perf_counter()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "test", root, writers=True)
    assert time.perf_counter() - start < 10  # refused connections fail at once, nothing retried
    message = str(err.value)
    assert "\n" not in message  # one line
    for name in MNIST_FILES + QMNIST_FILES:
        assert name in message
    assert str(root / "mnist") in message and str(root / "qmnist") in message
    assert "BACKDOOR_ARENA_DATA" in message and "connection refused" in message
    assert everything_under(tmp_path) == []  # pooch made the folder to download into; it is gone again


def test_mirrors_are_tried_in_order(tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(mnist.URLS, "mnist", (server.base + "first/", server.base + "second/"))
    with pytest.raises(DatasetError, match="HTTP 404") as err:
        load_dataset("mnist", "train", tmp_path)
    assert server.requests == [f"/first/{MNIST_FILES[0]}", f"/second/{MNIST_FILES[0]}"]  # then stop
    assert all(name in str(err.value) for name in MNIST_FILES)
    assert f"from {server.base}first/ or {server.base}second/" in str(err.value)
    assert everything_under(tmp_path) == []


def test_download_disabled_never_touches_network(
    tmp_path: Path, data_root: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in MNIST_FILES:  # the files are there to be had, yet never asked for
        server.put(f"fashion-mnist/{name}", (data_root / "fashion-mnist" / name).read_bytes())
    monkeypatch.setitem(mnist.URLS, "fashion-mnist", (server.base + "fashion-mnist/",))
    with pytest.raises(DatasetError, match="download=False") as err:
        load_dataset("fashion-mnist", "train", tmp_path, download=False)
    assert all(name in str(err.value) for name in MNIST_FILES)
    assert str(tmp_path / "fashion-mnist") in str(err.value)
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz"):
        load_dataset("cifar10", "test", tmp_path, download=False)
    assert server.requests == []
    assert everything_under(tmp_path) == []


@pytest.mark.parametrize("download", [True, False])
def test_gtsrb_offline_lists_npz_and_archives(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch, download: bool
) -> None:
    monkeypatch.setattr(gtsrb, "BASE_URL", server.base)  # serves nothing: 404
    with pytest.raises(DatasetError) as err:
        load_dataset("gtsrb", "train", tmp_path, download=download)
    message = str(err.value)
    assert all(name in message for name in [gtsrb.NPZ, *GTSRB_ZIPS])
    assert str(tmp_path / "gtsrb") in message and "BACKDOOR_ARENA_DATA" in message
    assert server.requests == ([f"/{gtsrb.TRAIN_ZIP}"] if download else [])
    assert everything_under(tmp_path) == []


def test_stalled_server_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host that accepts the connection but never answers must not hang the load."""
    monkeypatch.setattr(cache, "READ_TIMEOUT_S", 0.3)
    with socket.socket() as listener:  # listens (the kernel completes the handshake) but never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/f.bin"
        start = time.perf_counter()
        with pytest.raises(DatasetError, match="timed out"):
            cache.fetch(tmp_path, "thing/f.bin", [url], md5_bytes(b"x"))
        assert time.perf_counter() - start < 10
    assert everything_under(tmp_path) == []


def test_unwritable_data_folder_is_reported(tmp_path: Path, server: Server) -> None:
    url = server.put("f.bin", b"data")
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(DatasetError, match="cannot write .*f.bin.*writable data folder"):
        cache.fetch(tmp_path / "a-file" / "data", "thing/f.bin", [url], md5_bytes(b"data"))
    assert everything_under(tmp_path) == ["a-file"]


# ---------------------------------------------------------------- corrupt files


def test_truncated_file_is_reported_and_kept(
    tmp_path: Path, data_root: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = copy_mnist(data_root, tmp_path) / "t10k-images-idx3-ubyte.gz"
    data = target.read_bytes()
    server.put(f"mnist/{target.name}", data)
    monkeypatch.setitem(mnist.URLS, "mnist", (server.base + "mnist/",))
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated") as err:
        load_dataset("mnist", "test", tmp_path)
    assert str(target) in str(err.value) and "Delete it" in str(err.value)
    assert target.stat().st_size == len(data) // 2  # reported, never deleted nor replaced
    assert server.requests == []
    # Without the md5 gate, the IDX reader itself reports the file, not a gzip traceback.
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz"):
        mnist.read_idx(target, dtype_code=0x08, ndim=3)


def test_corrupt_md5_is_reported(tmp_path: Path, data_root: Path) -> None:
    target = copy_mnist(data_root, tmp_path) / "train-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", "train", tmp_path, download=False)
    message = str(err.value)
    assert mnist.MD5["mnist"]["train-labels-idx1-ubyte.gz"] in message
    assert md5_bytes(bytes(data)) in message and str(target) in message
    assert target.exists()


def test_idx_reader_validates_header_and_length(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(idx_gz(np.zeros((3, 28, 28), np.uint8), 0x08))
    assert mnist.read_idx(path, dtype_code=0x08, ndim=3).shape == (3, 28, 28)
    with pytest.raises(DatasetError, match="magic number"):
        mnist.read_idx(path, dtype_code=0x08, ndim=1)
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DatasetError, match="x.gz.*truncated"):
        mnist.read_idx(path, dtype_code=0x08, ndim=3)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="not a readable gzip"):
        mnist.read_idx(path, dtype_code=0x08, ndim=3)


def test_qmnist_rows_must_match_mnist_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    labels = {"train": rng.integers(0, 10, 6), "t10k": rng.integers(0, 10, 4)}
    files = {}
    for prefix, y in labels.items():
        files[f"mnist/{prefix}-images-idx3-ubyte.gz"] = idx_gz(rng.integers(0, 256, (len(y), 28, 28)), 0x08)
        files[f"mnist/{prefix}-labels-idx1-ubyte.gz"] = idx_gz(y, 0x08)
    table = np.zeros((6, 8), np.int64)
    table[:, 0], table[:, 2] = labels["train"], [7, 7, 8, 8, 9, 9]
    files["qmnist/qmnist-train-labels-idx2-int.gz"] = idx_gz(table, 0x0C)
    table = table.copy()
    table[:4, 0] = (labels["t10k"] + 1) % 10  # wrong classes
    files["qmnist/qmnist-test-labels-idx2-int.gz"] = idx_gz(table, 0x0C)
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
        folder, name = rel.split("/")
        monkeypatch.setitem(mnist.MD5[folder], name, md5_bytes(data))

    train = load_dataset("mnist", "train", tmp_path, writers=True)
    assert train.groups.tolist() == [7, 7, 8, 8, 9, 9]
    with pytest.raises(DatasetError, match="qmnist-test-labels-idx2-int.gz: row 0"):
        load_dataset("mnist", "test", tmp_path, writers=True)


# ---------------------------------------------------------------- downloads (pooch, local server)


def test_download_writes_verified_files(
    tmp_path: Path, data_root: Path, server: Server, offline: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in MNIST_FILES:
        server.put(f"mnist/{name}", (data_root / "mnist" / name).read_bytes())
    monkeypatch.setitem(mnist.URLS, "mnist", (offline[0], server.base + "mnist/"))  # first mirror down
    store = DatasetStore(tmp_path / "data")
    test = store.load("mnist", "test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert server.requests == [f"/mnist/{n}" for n in MNIST_FILES]
    root = tmp_path / "data"
    assert files_under(root) == sorted(f"mnist/{n}" for n in MNIST_FILES)  # no temporary files left
    for name in MNIST_FILES:
        assert cache.md5sum(root / "mnist" / name) == mnist.MD5["mnist"][name]
        assert stat.S_IMODE((root / "mnist" / name).stat().st_mode) == 0o644
    # The store's folder verified the downloaded bytes: it does not hash them again...
    hashed: list[Path] = []
    monkeypatch.setattr(cache, "md5sum", lambda path: hashed.append(path) or "0" * 32)
    assert store.load("mnist", "train").images.shape == (60000, 1, 28, 28)
    assert hashed == [] and len(server.requests) == len(MNIST_FILES)
    # ...but the digests live in the object, not the process: a fresh folder hashes every file.
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        DataFolder(root).fetch(f"mnist/{MNIST_FILES[0]}", [], mnist.MD5["mnist"][MNIST_FILES[0]])
    assert hashed == [root / "mnist" / MNIST_FILES[0]]


def test_download_with_wrong_bytes_leaves_nothing(tmp_path: Path, server: Server) -> None:
    good, bad = b"the published bytes", b"a captive portal page"
    urls = [server.put("a/f.bin", bad), server.put("b/f.bin", bad)]
    with pytest.raises(DatasetError, match="f.bin") as err:
        cache.fetch(tmp_path / "root", "thing/f.bin", urls, md5_bytes(good))
    assert f"md5 {md5_bytes(bad)} instead of {md5_bytes(good)}" in str(err.value)
    assert server.requests == ["/a/f.bin", "/b/f.bin"]
    assert everything_under(tmp_path) == []  # neither the bad bytes nor the folder pooch made

    server.put("b/f.bin", good)  # first mirror still wrong, second serves the right bytes
    path = cache.fetch(tmp_path / "root", "thing/f.bin", urls, md5_bytes(good))
    assert path == tmp_path / "root" / "thing" / "f.bin"
    assert path.read_bytes() == good and files_under(tmp_path) == ["root/thing/f.bin"]


def test_atomic_write_keeps_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "built.npz"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with cache.atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert files_under(tmp_path) == ["built.npz"] and target.read_bytes() == b"old"
    with cache.atomic_write(target) as f:
        f.write(b"new")
    assert files_under(tmp_path) == ["built.npz"] and target.read_bytes() == b"new"


# ---------------------------------------------------------------- CIFAR-10 (binary format)


def cifar_tar(batches: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, (x, y) in batches.items():
            records = np.concatenate([y[:, None].astype(np.uint8), x.reshape(len(y), -1)], axis=1)
            data = records.tobytes()
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def install_cifar(root: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = root / "cifar10" / cifar10.ARCHIVE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    monkeypatch.setitem(cifar10.MD5, cifar10.ARCHIVE, md5_bytes(data))
    return path


def test_cifar10_binary_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        batches[name] = (rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 3))
    install_cifar(tmp_path, cifar_tar(batches), monkeypatch)

    train = load_dataset("cifar10", "train", tmp_path, download=False)
    test = load_dataset("cifar10", "test", tmp_path, download=False)
    assert train.images.shape == (15, 3, 32, 32) and test.images.shape == (3, 3, 32, 32)
    x1, y1 = batches["data_batch_1.bin"]
    assert torch.equal(train.images[:3], torch.from_numpy(x1))  # CHW planes, in file order
    assert train.labels[:3].tolist() == y1.tolist()
    assert torch.equal(test.images, torch.from_numpy(batches["test_batch.bin"][0]))


def test_cifar10_rejects_bad_archives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.zeros((2, 3, 32, 32), np.uint8)
    path = install_cifar(tmp_path, cifar_tar({"test_batch.bin": (x, np.array([3, 10]))}), monkeypatch)
    with pytest.raises(DatasetError, match="label 10"):
        cifar10.read_batches(path, ("test_batch.bin",))
    with pytest.raises(DatasetError, match="no member cifar-10-batches-bin/data_batch_1.bin"):
        load_dataset("cifar10", "train", tmp_path, download=False)

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
        info.size = 100
        tar.addfile(info, io.BytesIO(bytes(100)))
    path.write_bytes(buf.getvalue())
    with pytest.raises(DatasetError, match="whole number of 3073-byte records"):
        cifar10.read_batches(path, ("test_batch.bin",))
    path.write_bytes(buf.getvalue()[:60])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        cifar10.read_batches(path, ("test_batch.bin",))


# ---------------------------------------------------------------- GTSRB


def fake_gtsrb_archives() -> tuple[dict[str, bytes], dict[str, tuple[int, int, int]]]:
    """Tiny archives in the official layout; each image is one solid colour, so resizing keeps it."""
    from PIL import Image

    def ppm(color: tuple[int, int, int], size: tuple[int, int]) -> bytes:
        out = io.BytesIO()
        Image.new("RGB", size, color).save(out, format="PPM")
        return out.getvalue()

    colors = {}
    train = io.BytesIO()
    with zipfile.ZipFile(train, "w") as z:
        for cls in (0, 14):
            folder = f"GTSRB/Final_Training/Images/{cls:05d}/"
            rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
            for track in (0, 1):
                for idx in (0, 1):
                    name = f"{track:05d}_{idx:05d}.ppm"
                    color = (cls * 10, track * 100 + idx, 7)
                    colors[f"train/{cls}/{name}"] = color
                    z.writestr(folder + name, ppm(color, (40 + idx, 35)))
                    rows.append(f"{name};{40 + idx};35;5;5;30;30;{cls}")
            z.writestr(folder + f"GT-{cls:05d}.csv", "\n".join(rows) + "\n")
    test, gt = io.BytesIO(), io.BytesIO()
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    with zipfile.ZipFile(test, "w") as z:
        for i, cls in enumerate((14, 42, 0)):
            name = f"{i:05d}.ppm"
            colors[f"test/{name}"] = (200, i, cls)
            z.writestr(f"GTSRB/Final_Test/Images/{name}", ppm((200, i, cls), (50, 60)))
            rows.append(f"{name};50;60;5;5;40;40;{cls}")
    with zipfile.ZipFile(gt, "w") as z:
        z.writestr("GT-final_test.csv", "\n".join(rows) + "\n")
    archives = {gtsrb.TRAIN_ZIP: train.getvalue(), gtsrb.TEST_ZIP: test.getvalue(), gtsrb.GT_ZIP: gt.getvalue()}
    return archives, colors


def test_gtsrb_builds_cache_from_official_archives(
    tmp_path: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    archives, _ = fake_gtsrb_archives()
    for name, data in archives.items():
        monkeypatch.setitem(gtsrb.MD5, name, md5_bytes(data))
        server.put(f"gtsrb/{name}", data)
    monkeypatch.setattr(gtsrb, "BASE_URL", server.base + "gtsrb/")

    train = load_dataset("gtsrb", "train", tmp_path)
    assert files_under(tmp_path) == sorted(f"gtsrb/{n}" for n in [gtsrb.NPZ, *GTSRB_ZIPS])
    assert train.images.shape == (8, 3, 32, 32)
    assert train.labels.tolist() == [0, 0, 0, 0, 14, 14, 14, 14]
    assert train.groups.tolist() == [0, 0, 1, 1, 14000, 14000, 14001, 14001]
    assert train.images[5, :, 16, 16].tolist() == [140, 1, 7]  # class 14, track 0, image 1
    test = load_dataset("gtsrb", "test", tmp_path)
    assert test.labels.tolist() == [14, 42, 0] and test.groups is None
    assert test.images[1, :, 0, 0].tolist() == [200, 1, 42]
    with np.load(tmp_path / "gtsrb" / gtsrb.NPZ, allow_pickle=False) as z:
        assert z["x_train"].shape == (8, 32, 32, 3) and z["track_train"].tolist() == [0, 0, 1, 1] * 2


def test_gtsrb_without_pillow_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setattr(gtsrb, "BASE_URL", server.base)
    monkeypatch.setitem(sys.modules, "PIL", None)  # makes `from PIL import Image` fail
    with pytest.raises(DatasetError, match="pip install pillow"):
        load_dataset("gtsrb", "test", tmp_path)
    assert server.requests == []  # no archive download that could not be used
    assert everything_under(tmp_path) == []


def test_gtsrb_rejects_broken_npz(tmp_path: Path) -> None:
    path = tmp_path / "gtsrb" / gtsrb.NPZ
    path.parent.mkdir()
    arrays = dict(
        x_train=np.zeros((2, 32, 32, 3), np.uint8),
        y_train=np.array([0, 43]),
        track_train=np.zeros(2, np.int64),
        x_test=np.zeros((1, 32, 32, 3), np.uint8),
        y_test=np.array([1]),
    )
    np.savez(path, **arrays)
    assert load_dataset("gtsrb", "test", tmp_path).labels.tolist() == [1]
    with pytest.raises(DatasetError, match="labels outside 0..42"):
        load_dataset("gtsrb", "train", tmp_path)

    np.savez(path, **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(DatasetError, match="lacks the arrays y_test"):
        gtsrb.read_npz(path, "test")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        gtsrb.read_npz(path, "train")
    assert path.exists()
