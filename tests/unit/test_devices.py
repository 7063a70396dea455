"""Devices and the executor seam on the remaining sweep-like verbs (issue 17).

Devices: `--device` is resolved once per run (runtime.run_device), reaches the training loop (train.fit) and
the plugins that take one, and is recorded with the run; on the CPU nothing changes (the same weights as
before, bit for bit); a device that is not here is one line naming it. The `gpu` tests run a tiny training,
an MNTD detection (its shadows trained on the GPU) and a Neural Cleanse scan where CUDA is present.

Executors: MNTD's shadow training, `scan-zoo` and `defend compare` run one sweep job per shadow / model /
(model, mitigation) and give the same records through `local` and `processes`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from backdoor_arena import api
from backdoor_arena.api.defending import compare_mitigations
from backdoor_arena.data import load_dataset
from backdoor_arena.defenses import MODEL_DETECTORS
from backdoor_arena.defenses import mntd_shadows as shadows
from backdoor_arena.errors import ConfigError
from backdoor_arena.modelfile import load_model, read_manifest
from backdoor_arena.runtime import describe_device, resolve_device, run_device
from backdoor_arena.sweep import Executor, stable_record
from backdoor_arena.train import TrainConfig, create_model, fit
from tests.helpers import run_cli

HAS_CUDA = torch.cuda.is_available()
NC_SMALL = {"steps": 12, "n_samples": 40, "batch_size": 8, "check_every": 3, "patience": 1}
MNTD_SMALL = {"n_clean": 2, "n_backdoored": 2, "shadow_epochs": 1, "meta_epochs": 3, "n_queries": 4,
              "optimizers": ["sgd"]}


@pytest.fixture()
def one_thread():
    """Local jobs at the thread count of a pool worker (threads change the order of float sums)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist_small(data_root):
    train = load_dataset("mnist", "train", data_root)
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(3))[:400].sort().values
    return train.subset(pick)


def _records(folder: Path) -> list[dict]:
    return [stable_record(json.loads(line)) for line in (folder / "records.jsonl").read_text().splitlines()]


# ---- devices on the CPU ------------------------------------------------------------------------------------


def test_fit_on_the_cpu_device_is_bit_identical_to_the_default(mnist_small):
    states = []
    for device in (None, torch.device("cpu"), "cpu"):
        model, _ = create_model("badnet-mnist", mnist_small.info, 7)
        fit(model, mnist_small, TrainConfig(epochs=1, seed=7, progress=False), device=device)
        states.append(model.state_dict())
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])


def test_cpu_needs_no_deterministic_switch_and_auto_is_a_real_device():
    before = torch.are_deterministic_algorithms_enabled()
    assert run_device("cpu") == torch.device("cpu")
    assert torch.are_deterministic_algorithms_enabled() == before  # nothing process-wide changed for the CPU
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if HAS_CUDA else "mps" if torch.backends.mps.is_available() else "cpu")
    assert resolve_device("auto", supported=("cpu",)) == torch.device("cpu")
    d = describe_device(torch.device("cpu"))
    assert d["device"] == "cpu" and d["deterministic"] is True and d["threads"] == torch.get_num_threads()


@pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("verb", ["train", "attack", "demo", "defend", "detect", "scan", "transfer"])
def test_cuda_without_cuda_is_one_line_naming_the_device_and_the_fix(verb, tiny_mnist_model, tmp_path, capsys,
                                                                     monkeypatch):
    model, spec = tiny_mnist_model
    args = {"train": ["train", "--dataset", "tiny28", "--model", "badnet-mnist", "--out", str(tmp_path / "m.safetensors")],
            "attack": ["attack", "badnets", "--dataset", "tiny28", "--model", "badnet-mnist", "--out",
                       str(tmp_path / "m.safetensors")],
            "demo": ["demo", "--out", str(tmp_path / "demo")],
            "defend": ["defend", "fine-tuning", str(model), "--out", str(tmp_path / "r.safetensors")],
            "detect": ["detect", "mntd", str(model)],
            "scan": ["scan", str(model), "--out", str(tmp_path / "scan")],
            "transfer": ["transfer", str(model), "--attack-spec", str(spec), "--task", "parity"]}[verb]
    code, _out, err = run_cli([*args, "--device", "cuda"], capsys, monkeypatch)
    assert code == 2 and err.count("\n") == 1, err
    assert "--device cuda: no CUDA device is available here" in err and "use --device cpu or auto" in err, err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_cpu_only_verb_refuses_an_explicit_gpu_with_the_reason(tiny_mnist_model, capsys, monkeypatch):
    model, _spec = tiny_mnist_model
    for args in (["detect", "neural-cleanse", str(model)], ["defend", "pruning", str(model), "--out", "r.safetensors"],
                 ["fl", "run", "configs/fl/quick.toml", "--out", "never"]):
        monkeypatch.chdir(Path(__file__).resolve().parents[2])
        code, _out, err = run_cli([*args, "--device", "mps"], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and "runs on cpu only so far" in err and "--device mps" in err, err
    assert not Path("never").exists()


def test_train_records_the_device_in_the_manifest(tmp_path, capsys, monkeypatch):
    out = tmp_path / "m.safetensors"
    code, _out, err = run_cli(["train", "--dataset", "tiny28", "--model", "badnet-mnist", "--epochs", "1",
                               "--out", str(out), "--device", "cpu", "-q"], capsys, monkeypatch)
    assert code == 0, err
    device = read_manifest(out).training["device"]
    assert device["device"] == "cpu" and device["deterministic"] is True and device["threads"] >= 1


def test_defend_detect_and_transfer_record_their_device(tiny_mnist_model, tmp_path, capsys, monkeypatch):
    model, spec = tiny_mnist_model
    code, _o, err = run_cli(["defend", "fine-tuning", str(model), "--out", str(tmp_path / "r.safetensors"),
                             "--epochs", "1", "--device", "cpu", "-q"], capsys, monkeypatch)
    assert code == 0, err
    assert read_manifest(tmp_path / "r.safetensors").training["device"]["device"] == "cpu"
    r = api.detect("mntd", model, params=dict(MNTD_SMALL), progress=False, device="cpu")
    assert r.values["device"]["device"] == "cpu" and "device" not in r.params
    t = api.transfer(model, spec, task="parity", epochs=1, train_size=300, device="cpu")
    assert t.device["device"] == "cpu"


def test_defend_without_a_test_curve_repairs_the_same_model(tiny_mnist_model, tmp_path):
    """curve_samples=0 and measure_before=False (what the leaderboard runs): no test evaluation along the way
    nor before the repair, the same repaired model."""
    model, spec = tiny_mnist_model
    params = {"epochs": 1, "step": 16, "full_curve": False}
    with_curve = api.defend("fine-pruning", model, tmp_path / "a.safetensors", attack_spec=spec, params=params,
                            curve_samples=200, clean_fraction=0.01, progress=False)
    without = api.defend("fine-pruning", model, tmp_path / "b.safetensors", attack_spec=spec, params=params,
                         curve_samples=0, clean_fraction=0.01, progress=False, measure_before=False)
    assert without.tensors_sha256 == with_curve.tensors_sha256 and without.after == with_curve.after
    # measure_before=False (also the leaderboard's): the model is not measured again, the repair is the same
    assert without.before == {} and set(with_curve.before) >= {"clean_accuracy", "attack_success_rate"}
    rows = [json.loads(line) for line in Path(without.curve_jsonl).read_text().splitlines()]
    assert rows and all("attack_success_rate" not in r and "clean_accuracy" not in r for r in rows)
    assert any("attack_success_rate" in json.loads(line) for line in Path(with_curve.curve_jsonl).read_text().splitlines())
    with pytest.raises(ConfigError, match="curve_samples must be a non-negative integer"):
        api.defend("fine-pruning", model, tmp_path / "c.safetensors", curve_samples=-1, progress=False)


# ---- the executor seam -------------------------------------------------------------------------------------


def test_mntd_shadows_local_and_processes_give_the_same_records_and_resume(mnist_small, tmp_path, one_thread,
                                                                          monkeypatch):
    plan = shadows.shadow_plan(2, 1, ("square",), 10, 28, ("sgd",), seed=4, poison_rates=(0.05, 0.1))
    built = {}
    for name, ex in (("local", Executor("local")), ("processes", Executor("processes", jobs=2, threads=2))):
        models = shadows.build_shadows(mnist_small, plan, "badnet-mnist", 1, "key-1", tmp_path / name, executor=ex)
        built[name] = (models, _records(tmp_path / name / "sweep"))
        assert sorted(p.name for p in (tmp_path / name).glob("shadow-*.safetensors")) == sorted(
            shadows.shadow_file_name(e) for e in plan)  # the cache's own format, one file per shadow
    assert built["local"][1] == built["processes"][1] and len(built["local"][1]) == 3
    for a, b in zip(built["local"][0], built["processes"][0], strict=True):
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    # resumable: a shadow whose file is gone is retrained, the others are loaded
    (tmp_path / "local" / shadows.shadow_file_name(plan[1])).unlink()
    trained = []
    real = shadows.train_shadow
    monkeypatch.setattr(shadows, "train_shadow", lambda entry, *a, **k: trained.append(entry["name"]) or real(entry, *a, **k))
    again = shadows.build_shadows(mnist_small, plan, "badnet-mnist", 1, "key-1", tmp_path / "local")
    assert trained == [plan[1]["name"]]
    assert all(torch.equal(x.state_dict()[k], y.state_dict()[k])
               for x, y in zip(again, built["local"][0], strict=True) for k in x.state_dict())


def test_mntd_refuses_an_unknown_executor():
    with pytest.raises(ConfigError, match="mntd: --executor must be one of"):
        MODEL_DETECTORS.create("mntd", executor="threads")


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    zoo = tmp_path_factory.mktemp("zoo") / "zoo"
    api.build_zoo(zoo, api.ZooConfig(clean=1, backdoored=1, epochs=1, train_size=600, seed=2), progress=False)
    return zoo


def test_scan_zoo_local_and_processes_give_the_same_records(tiny_zoo, tmp_path, one_thread):
    summaries = {}
    for name, ex in (("local", None), ("processes", Executor("processes", jobs=2, threads=2))):
        summaries[name] = api.scan_zoo(tiny_zoo, tmp_path / name, detectors=["neural-cleanse"],
                                       params={"neural-cleanse": NC_SMALL}, n_boot=50, progress=False, executor=ex,
                                       device="cpu")
    local, pool = _records(tmp_path / "local" / "sweep"), _records(tmp_path / "processes" / "sweep")
    assert local == pool and len(local) == 2
    assert all(set(r["detectors"]) == {"neural-cleanse"} and not r["failures"] for r in local)
    scores = {r["model"]: r["detectors"]["neural-cleanse"]["score"] for r in local}
    rows = [json.loads(line) for line in (tmp_path / "processes" / "scores.jsonl").read_text().splitlines()]
    assert {r["name"]: r["score"] for r in rows} == scores  # the summary is built from the sweep's scans
    assert summaries["processes"]["executor"]["executor"] == "processes" and summaries["local"]["device"] == "cpu"


def test_defend_compare_local_and_processes_give_the_same_records(tiny_mnist_model, tmp_path, one_thread):
    model, spec = tiny_mnist_model
    subjects = {"tiny": (Path(model), Path(spec), load_model(model).manifest.training)}
    out = {}
    for name, ex in (("local", None), ("processes", Executor("processes", jobs=2, threads=2))):
        out[name] = compare_mitigations(subjects, tmp_path / name, defenses=("pruning", "fine-tuning"),
                                            tune_epochs=1, clean_fraction=0.01, curve_samples=100, progress=False,
                                        executor=ex)
    assert _records(tmp_path / "local") == _records(tmp_path / "processes")
    rows = {n: [{k: v for k, v in r.items() if k != "wall_time_s"} for r in out[n][0]] for n in out}
    assert rows["local"] == rows["processes"] and [r["defense"] for r in rows["local"]] == ["none", "pruning",
                                                                                             "fine-tuning"]
    assert out["local"][1] == out["processes"][1] and {c["defense"] for c in out["local"][1]} == {"pruning",
                                                                                                  "fine-tuning"}


# ---- on a GPU (pytest -m gpu) ------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device here (torch.cuda.is_available())")
def test_tiny_train_mntd_and_scan_on_cuda(mnist_small, data_root, tmp_path):
    test = load_dataset("mnist", "test", data_root).subset(torch.arange(500))
    cfg = TrainConfig(epochs=2, seed=1, progress=False)
    cuda = run_device("cuda")
    on_gpu = api.train_model("badnet-mnist", mnist_small, test, cfg, tmp_path / "g.safetensors", device=cuda)
    on_cpu = api.train_model("badnet-mnist", mnist_small, test, cfg, tmp_path / "c.safetensors")
    assert on_gpu.manifest.training["device"]["device"].startswith("cuda")
    assert on_gpu.manifest.training["device"]["deterministic"] is True  # run_device set the deterministic mode
    assert abs(on_gpu.metrics["clean_accuracy"] - on_cpu.metrics["clean_accuracy"]) < 0.1
    again = api.train_model("badnet-mnist", mnist_small, test, cfg, tmp_path / "g2.safetensors", device=cuda)
    assert again.manifest.tensors_sha256 == on_gpu.manifest.tensors_sha256  # deterministic on this GPU
    assert all(t.device.type == "cpu" for t in load_model(on_gpu.path).model.state_dict().values())
    r = api.detect("mntd", on_gpu.path, params=dict(MNTD_SMALL), progress=False, device="cuda")
    assert r.values["device"]["device"].startswith("cuda") and r.values["score"] == r.values["score"]
    scan = api.scan(on_gpu.path, tmp_path / "scan", detectors=["neural-cleanse"],
                    params={"neural-cleanse": NC_SMALL}, progress=False, device="cuda")
    nc = scan.detectors["neural-cleanse"].values
    assert nc["device"]["device"] == "cpu"  # Neural Cleanse takes no device yet: it runs on the CPU, and says so
    assert nc["score"] == nc["score"]
