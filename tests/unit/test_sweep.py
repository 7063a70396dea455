"""Sweeps (backdoor_arena.sweep): deterministic job ids; the same records through every executor (local,
processes, Ray); a sweep whose runner is killed resumes to the records of an uninterrupted one; a worker
killed mid-job is retried by Ray (and reported, then resumed, by the process pool); zoo build and evaluate
through the executors give the models and scores of the serial run."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from backdoor_arena.errors import ConfigError
from backdoor_arena.sweep import (
    Executor,
    Job,
    JobContext,
    SweepError,
    process_alive,
    run_sweep,
    stable_record,
    sweep_job,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray is not installed (pip install 'ray>=2.9'): the ray executor "
                               "tests need it")

_TRAIN: dict[str, object] = {}


def _mnist():
    """MNIST's training split, loaded once per process (a pool or Ray worker runs several jobs)."""
    if "mnist" not in _TRAIN:
        from backdoor_arena.data import load_dataset

        _TRAIN["mnist"] = load_dataset("mnist", "train")
    return _TRAIN["mnist"]


@sweep_job("test-sweep-train")
def train_tiny(ctx: JobContext) -> dict:
    """A linear model on a seeded subset of 500 MNIST images, a few SGD steps: a real, deterministic job."""
    from backdoor_arena.data.dataset import to_float

    cfg = ctx.config
    time.sleep(cfg.get("sleep_s", 0))
    data = _mnist()
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(data), generator=g)[: cfg["n"]]
    x, y = to_float(data.images[idx]).flatten(1), data.labels[idx]
    w = torch.zeros(x.shape[1], 10, requires_grad=True)
    for step in range(cfg["steps"]):
        rows = torch.randint(len(x), (64,), generator=g)
        loss = torch.nn.functional.cross_entropy(x[rows] @ w, y[rows])
        loss.backward()
        with torch.no_grad():
            w -= cfg["lr"] * w.grad
            w.grad = None
        if step == 0:
            ctx.log(f"first loss {loss.item():.4f}")
    print("trained")  # printed output goes to the job's log
    with torch.no_grad():
        accuracy = float(((x @ w).argmax(1) == y).float().mean())
    return {"loss": float(loss.detach()), "train_accuracy": accuracy,
            "weights_sha256": hashlib.sha256(w.detach().numpy().tobytes()).hexdigest()}


@sweep_job("test-sweep-crash-once")
def crash_once(ctx: JobContext) -> dict:
    """The first attempt kills its own worker process (as the OOM killer or a lost node would); later ones run."""
    marker = Path(ctx.paths["marker"])
    if not marker.exists():
        marker.write_text("crashed once")
        os.kill(os.getpid(), signal.SIGKILL)
    return train_tiny(ctx)


@sweep_job("test-sweep-fails")
def fails(ctx: JobContext) -> dict:
    raise ConfigError(f"seed {ctx.seed} is refused\n(on purpose)")


def _jobs(n: int = 4, **extra) -> list[Job]:
    return [Job("test-sweep-train", {"n": 500, "steps": 15, "lr": 0.5, **extra}, seed=s, label=f"tiny-{s}")
            for s in range(n)]


def _stable(result) -> list[dict]:
    return [stable_record(r) for r in result.records]


@pytest.fixture(scope="module")
def one_thread():
    """Equal thread counts everywhere (pool workers and Ray tasks run one each here), so floats agree exactly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """The uninterrupted serial sweep every other run is compared with."""
    return run_sweep(_jobs(), tmp_path_factory.mktemp("reference"), progress=False)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance with 2 CPUs for this module (workers can import this test module)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),
                                       "BACKDOOR_ARENA_DATA": os.environ["BACKDOOR_ARENA_DATA"]}})
    yield ray
    ray.shutdown()


def test_job_ids_are_deterministic_hashes_of_kind_config_and_seed():
    a = Job("test-sweep-train", {"n": 500, "steps": 3, "lr": 0.5}, seed=1, paths={"out": "/x"})
    same = Job("test-sweep-train", {"lr": 0.5, "steps": 3, "n": 500}, seed=1, label="other", paths={"out": "/y"})
    assert a.id == same.id and a.id.startswith("test-sweep-train-") and len(a.id) == len("test-sweep-train-") + 12
    assert a.id != Job("test-sweep-train", {"n": 500, "steps": 3, "lr": 0.5}, seed=2).id
    assert a.id != Job("test-sweep-train", {"n": 500, "steps": 4, "lr": 0.5}, seed=1).id
    # a fixed value: the id is the same in every process and on every machine (not Python's salted hash)
    assert Job("test-sweep-train", {}, seed=0).id == "test-sweep-train-" + hashlib.sha256(json.dumps(
        {"config": {}, "seed": 0, "verb": "test-sweep-train"}, sort_keys=True).encode()).hexdigest()[:12]
    with pytest.raises(ConfigError, match="same job"):
        run_sweep([a, same], "unused-folder", progress=False)
    with pytest.raises(ConfigError, match="unknown sweep job"):
        run_sweep([Job("no-such-job")], "unused-folder", progress=False)
    with pytest.raises(ConfigError, match="--executor must be one of"):
        Executor("threads")
    with pytest.raises(ConfigError, match="needs --executor ray"):
        Executor("processes", address="auto")
    with pytest.raises(ConfigError, match="--jobs"):
        Executor("processes", jobs=0)
    assert not Path("unused-folder").exists()


def test_local_sweep_writes_one_record_and_log_per_job_and_merges_them(reference):
    folder = reference.folder
    assert reference.ran == 4 and reference.skipped == 0 and not reference.failures
    files = sorted((folder / "records").glob("*.json"))
    assert [f.stem for f in files] == sorted(j.id for j in _jobs())
    merged = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines()]
    assert merged == reference.records and [r["job"] for r in merged] == ["tiny-0", "tiny-1", "tiny-2", "tiny-3"]
    r = merged[0]
    assert r["verb"] == "test-sweep-train" and r["seed"] == 0 and r["config"]["steps"] == 15
    assert r["run"]["executor"] == "local" and r["run"]["wall_s"] >= 0 and "torch" in r["versions"]
    assert len({x["weights_sha256"] for x in merged}) == 4 and all(x["train_accuracy"] > 0.5 for x in merged)
    log = (folder / "logs" / f"{r['run_id']}.log").read_text()
    assert "first loss" in log and "trained" in log
    assert not list(folder.rglob(".*.tmp"))


def test_a_sweep_run_again_skips_complete_records_and_reruns_broken_ones(reference, tmp_path):
    folder = tmp_path / "again"
    first = run_sweep(_jobs(), folder, progress=False)
    assert _stable(first) == _stable(reference)
    victim = folder / "records" / f"{_jobs()[2].id}.json"
    victim.write_text('{"run_id": "truncated')  # a record that is not complete is not trusted
    before = {p.name: p.stat().st_mtime_ns for p in (folder / "records").glob("*.json") if p != victim}
    again = run_sweep(_jobs(), folder, progress=False)
    assert (again.ran, again.skipped) == (1, 3)
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "records").glob("*.json") if p != victim} == before
    assert _stable(again) == _stable(reference)


def test_failures_are_summarised_with_one_line_errors_and_retried_on_rerun(tmp_path, capsys, one_thread):
    jobs = [*_jobs(2), Job("test-sweep-fails", {}, seed=7, label="bad-7")]
    result = run_sweep(jobs, tmp_path / "f", progress=True)
    assert len(result.records) == 2 and [f.label for f in result.failures] == ["bad-7"]
    assert result.failures[0].error == "ConfigError: seed 7 is refused (on purpose)"
    err = capsys.readouterr().err
    assert "1 of 3 jobs failed" in err and "bad-7: ConfigError: seed 7 is refused (on purpose)" in err
    log = (tmp_path / "f" / "logs" / f"{jobs[2].id}.log").read_text()
    assert "Traceback" in log and "FAILED: ConfigError" in log
    assert json.loads((tmp_path / "f" / "failures.jsonl").read_text())["label"] == "bad-7"
    with pytest.raises(SweepError, match=r"1 of 3 sweep jobs failed \(bad-7: ConfigError: seed 7 .*run the same"):
        result.raise_for_failures()
    rerun = run_sweep(jobs[:2], tmp_path / "f", progress=False)  # the failing job dropped: nothing left to run
    assert (rerun.ran, rerun.skipped, rerun.failures) == (0, 2, []) and not (tmp_path / "f" / "failures.jsonl").exists()


def test_process_pool_gives_the_serial_records(reference, tmp_path):
    result = run_sweep(_jobs(), tmp_path / "p", Executor("processes", jobs=2), progress=False)
    assert not result.failures and _stable(result) == _stable(reference)
    assert {r["run"]["executor"] for r in result.records} == {"processes"}
    assert len({r["run"]["pid"] for r in result.records}) == 2 and os.getpid() not in {
        r["run"]["pid"] for r in result.records}


def test_a_sweep_whose_runner_is_killed_resumes_to_the_uninterrupted_records(reference, tmp_path):
    folder = tmp_path / "killed"
    jobs = _jobs()
    script = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]\n"
              "import torch; torch.set_num_threads(1)\n"
              "from test_sweep import _jobs\nfrom backdoor_arena.sweep import run_sweep\n"
              f"run_sweep([_jobs()[i] for i in range(4)], {str(folder)!r}, progress=False)\n")
    # the killed runner's jobs sleep first, so that the kill lands with some jobs done and others not
    script = script.replace("_jobs()[i]", "_jobs(sleep_s=0.6)[i]")
    slow = _jobs(sleep_s=0.6)
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "BACKDOOR_ARENA_THREADS": "1"})
    deadline = time.monotonic() + 60
    while len(list((folder / "records").glob("*.json"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = len(list((folder / "records").glob("*.json")))
    assert 2 <= kept < 4, "the runner was not killed half-way"
    resumed = run_sweep(slow, folder, progress=False)
    assert (resumed.skipped, resumed.ran) == (kept, 4 - kept) and not resumed.failures
    uninterrupted = run_sweep(slow, tmp_path / "whole", progress=False)
    assert _stable(resumed) == _stable(uninterrupted)
    # the sleep is configuration, not a result: the learned weights are those of the reference jobs
    assert [r["weights_sha256"] for r in resumed.records] == [r["weights_sha256"] for r in reference.records]
    assert [r["run_id"] for r in resumed.records] == [j.id for j in slow] != [j.id for j in jobs]


def test_a_pool_worker_killed_mid_job_is_reported_then_resumed(reference, tmp_path):
    jobs = [Job("test-sweep-crash-once", j.config, seed=j.seed, label=j.label, paths={"marker": str(tmp_path / "m")})
            for j in _jobs(2)]
    first = run_sweep(jobs, tmp_path / "s", Executor("processes", jobs=2), progress=False)
    assert first.failures and all("worker process died" in f.error for f in first.failures)
    second = run_sweep(jobs, tmp_path / "s", Executor("processes", jobs=2), progress=False)
    assert not second.failures and second.ran == len(first.failures)
    assert [r["weights_sha256"] for r in second.records] == [r["weights_sha256"] for r in reference.records[:2]]


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the pool's processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_pool_driver_leaves_no_worker_behind(tmp_path, sig):
    """Workers are the forkserver's children, so the driver's death closes nothing of theirs: they must see it."""
    script = (f"import sys; sys.path[:0] = [{str(REPO)!r}, {str(HERE)!r}]\n"
              "from test_sweep import _jobs\nfrom backdoor_arena.sweep import Executor, run_sweep\n"
              "if __name__ == '__main__':\n"
              f"    run_sweep(_jobs(4, sleep_s=120), {str(tmp_path / 's')!r}, Executor('processes', jobs=2), "
              "progress=False)\n")
    (tmp_path / "driver.py").write_text(script)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "driver.py")],
                            env={**os.environ, "BACKDOOR_ARENA_THREADS": "2"})
    deadline, workers = time.monotonic() + 60, []
    while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
        workers = [w for kid in _children(proc.pid) for w in _children(kid)]
    assert len(workers) == 2, "the pool's two workers did not start"
    helpers = _children(proc.pid)  # the forkserver and the resource tracker
    proc.send_signal(sig)
    proc.wait()
    deadline = time.monotonic() + 15
    while any(process_alive(p) for p in workers + helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p for p in workers + helpers if process_alive(p)]
    for p in left:  # never leave them to the next test
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes {left} outlived their driver (killed by {sig.name})"
    assert not list((tmp_path / "s" / "records").glob("*.json"))  # the sleeping jobs were never recorded


def test_ray_missing_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"needs Ray, which is not installed here: pip install"):
        run_sweep(_jobs(1), tmp_path / "r", Executor("ray"), progress=False)


@needs_ray
def test_ray_gives_the_serial_records(reference, ray_local, tmp_path):
    result = run_sweep(_jobs(), tmp_path / "ray", Executor("ray"), progress=False)
    assert not result.failures and _stable(result) == _stable(reference)
    assert {r["run"]["executor"] for r in result.records} == {"ray"}
    assert os.getpid() not in {r["run"]["pid"] for r in result.records}


@needs_ray
def test_ray_retries_a_job_whose_worker_was_killed(reference, ray_local, tmp_path):
    marker = tmp_path / "marker"
    jobs = [Job("test-sweep-crash-once", j.config, seed=j.seed, label=j.label, paths={"marker": str(marker)})
            for j in _jobs(2)]
    started = time.monotonic()
    result = run_sweep(jobs, tmp_path / "ray-crash", Executor("ray", max_retries=2), progress=False)
    assert time.monotonic() - started < 60
    assert marker.read_text() == "crashed once" and not result.failures and len(result.records) == 2
    assert [r["weights_sha256"] for r in result.records] == [r["weights_sha256"] for r in reference.records[:2]]


# ---- devices --------------------------------------------------------------------------------------------


def test_device_option_is_parsed_resolved_and_refused_with_a_reason():
    from backdoor_arena.runtime import describe_device, resolve_device

    assert resolve_device("auto", supported=("cpu",)) == torch.device("cpu") == resolve_device(" CPU ")
    assert resolve_device(None, supported=("cpu",)).type == "cpu"
    for bad in ("gpu", "cuda:", "cuda:x", "cpu:0", "mps:1", ""):
        with pytest.raises(ConfigError, match="--device must be one of auto, cpu, cuda, cuda:N, mps"):
            resolve_device(bad)
    with pytest.raises(ConfigError, match="zoo build runs on cpu only so far.*use --device cpu or auto"):
        resolve_device("cuda:0", supported=("cpu",), what="zoo build")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device is available here"):
            resolve_device("cuda")
        assert resolve_device("auto").type in ("cpu", "mps")
    else:  # a GPU machine: auto picks it, and a device number past the last is refused
        assert resolve_device("auto") == torch.device("cuda", 0)
        with pytest.raises(ConfigError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    d = describe_device(torch.device("cpu"))
    assert d["device"] == "cpu" and d["deterministic"] is True and d["threads"] == torch.get_num_threads()


# ---- zoo build and zoo evaluate through the executors ----------------------------------------------------

ZOO = dict(clean=1, backdoored=1, epochs=1, train_size=500, seed=5)
NC = {"steps": 10, "batch_size": 8}


def _truth(zoo: Path) -> list[dict]:
    from backdoor_arena import api

    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in api.read_truth(zoo)]


def _tensors(zoo: Path) -> dict[str, str]:
    from backdoor_arena.modelfile import read_manifest

    return {p.stem: read_manifest(p).tensors_sha256 for p in sorted((zoo / "models").glob("*.safetensors"))}


def _scores(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "detect_time_s"} for r in rows]


@pytest.fixture(scope="module")
def serial_zoo(tmp_path_factory, one_thread):
    """A two-model zoo (one clean, one backdoored; 500 images, 1 epoch) built serially, and its NC scores."""
    from backdoor_arena import api

    zoo = tmp_path_factory.mktemp("zoo") / "serial"
    api.build_zoo(zoo, api.ZooConfig(**ZOO), progress=False)
    api.evaluate_zoo(zoo, params=NC, progress=False)
    return zoo


def test_zoo_build_through_the_process_pool_gives_the_serial_zoo(serial_zoo, tmp_path, capsys, monkeypatch):
    from tests.helpers import run_cli

    zoo = tmp_path / "pool"
    args = ["zoo", "build", "--out", str(zoo), "--clean", "1", "--backdoored", "1", "--epochs", "1", "--train-size",
            "500", "--seed", "5", "--executor", "processes", "--jobs", "2", "-q"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    assert _truth(zoo) == _truth(serial_zoo) and _tensors(zoo) == _tensors(serial_zoo) and len(_tensors(zoo)) == 2
    built = json.loads((zoo / "zoo.json").read_text())
    assert built["executor"] == {"executor": "processes", "jobs": 2, "address": None} and built["device"] == "cpu"
    # one record per model, with the attack parameters: under specs/ (the evaluator's side), never beside the models
    records = [json.loads(p.read_text()) for p in (zoo / "specs" / "sweep" / "records").glob("*.json")]
    assert sorted(r["job"] for r in records) == sorted(_tensors(zoo)) and not list((zoo / "models").glob("*.json"))
    assert all(r["config"]["device"] == "cpu" and r["run"]["device"] == "cpu" for r in records)
    assert {r["model_sha256"] for r in records} == set(_tensors(zoo).values())
    # the device is checked before any work, with the reason
    code, out, err = run_cli([*args[:-1], "--device", "cuda", "-q"], capsys, monkeypatch)
    assert code == 2 and "--device cuda" in err and "use --device cpu" in err
    code, out, err = run_cli([*args[:-1], "--executor", "threads", "-q"], capsys, monkeypatch)
    assert code == 2 and "--executor must be one of local, processes, ray" in err and err.count("\n") == 1


def test_zoo_evaluate_through_the_pool_gives_the_serial_scores_and_resumes(serial_zoo, tmp_path):
    from backdoor_arena import api

    serial = serial_zoo / "eval-neural-cleanse"
    s = api.evaluate_zoo(serial_zoo, params=NC, out=tmp_path / "pool", executor=Executor("processes", jobs=2),
                         progress=False)
    assert _scores(tmp_path / "pool") == _scores(serial) and len(_scores(serial)) == 2
    assert s["auroc"] == json.loads((serial / "summary.json").read_text())["auroc"] and s["device"] == "cpu"
    # run again: every model's record is there, so no detector runs and the results are the same
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "pool" / "sweep" / "records").glob("*.json")}
    again = api.evaluate_zoo(serial_zoo, params=NC, out=tmp_path / "pool", progress=False)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps and again["auroc"] == s["auroc"]
    # other detector parameters are other jobs: nothing of the first evaluation is reused for them
    other = api.evaluate_zoo(serial_zoo, params={**NC, "steps": 11}, out=tmp_path / "pool", progress=False)
    assert len(list((tmp_path / "pool" / "sweep" / "records").glob("*.json"))) == 4 and other["params"]["steps"] == 11


@needs_ray
def test_zoo_evaluate_on_ray_gives_the_serial_scores(serial_zoo, ray_local, tmp_path):
    from backdoor_arena import api

    api.evaluate_zoo(serial_zoo, params=NC, out=tmp_path / "ray", executor=Executor("ray"), progress=False)
    assert _scores(tmp_path / "ray") == _scores(serial_zoo / "eval-neural-cleanse")


# ---- fl run over seeds ----------------------------------------------------------------------------------

QUICK = str(REPO / "configs" / "fl" / "quick.toml")
TINY_FL = ["federation.rounds=1", "federation.clients_per_round=2", "warmup.pretrain_samples=500", "warmup.rounds=0",
           "data.test_samples=200", "attack.epochs=1", 'federation.engine="sequential"']


def test_fl_run_over_seeds_through_the_pool_matches_single_runs_and_resumes(tmp_path, capsys, monkeypatch, one_thread):
    from backdoor_arena import api
    from tests.helpers import run_cli

    args = ["fl", "run", QUICK, *TINY_FL, "--out", str(tmp_path / "seeds"), "--seeds", "0,1", "--executor",
            "processes", "--jobs", "2", "--json", "-q"]
    code, out, err = run_cli(args, capsys, monkeypatch)
    assert code == 0, err
    per_seed = json.loads(out)
    single = api.fl_run(QUICK, tmp_path / "one", [*TINY_FL, "seed=1"], progress=False)[""].summary
    assert per_seed["1"]["run"] == {k: v for k, v in single.items() if k not in ("wall_s", "engine_timing")}
    assert per_seed["0"]["run"]["target_clients"] != per_seed["1"]["run"]["target_clients"]  # the seed took
    assert (tmp_path / "seeds" / "seed-0" / "records.jsonl").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "seeds" / "sweep" / "records").glob("*.json")}
    code, out, err = run_cli(args, capsys, monkeypatch)  # run again: both seeds are done, nothing runs
    assert code == 0 and json.loads(out) == per_seed and len(stamps) == 2
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    code, out, err = run_cli(["fl", "run", QUICK, "--out", str(tmp_path / "x"), "--executor", "processes"], capsys,
                             monkeypatch)
    assert code == 2 and "give --seeds" in err
