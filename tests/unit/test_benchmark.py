"""`benchmark`: every registered attack against every registered mitigation and detector, resumable, with the
leaderboard rendered from its records; a plugin appears in it with nothing beyond its registration."""

from __future__ import annotations

import json

import pytest
import torch

from backdoor_arena import api
from backdoor_arena.api.benchmark import (
    DEFAULT_TARGET,
    HOLDOUT_FRACTION,
    HOLDOUT_SEED,
    TARGETS,
    BenchmarkConfig,
    TrainingBudget,
    read_records,
    render_leaderboard,
    training_subset,
)
from backdoor_arena.attacks import ATTACKS, make_attack
from backdoor_arena.data import dataset_info, load_dataset
from backdoor_arena.defenses import clean_holdout
from tests.helpers import run_cli


@pytest.fixture()
def toys():
    """The toy plugins of tests/toy_plugins, registered (by importing them) for one test only; taken out again,
    modules included, so that the next import registers them again."""
    import importlib
    import sys

    module = importlib.import_module("tests.toy_plugins")
    yield module
    module.unregister_all()
    for name in [m for m in sys.modules if m.startswith("tests.toy_plugins")]:
        del sys.modules[name]


def test_new_plugins_join_the_benchmark_by_registration_alone(toys):
    lists = BenchmarkConfig().resolved()
    assert "toy-corner" in lists["attacks"] and "toy-logit-gap" in lists["model_detectors"]
    assert {"pruning-aware", "nc-evasive", "badnets", "wanet"} <= set(lists["attacks"])
    assert {"fine-pruning", "nc-unlearning"} <= set(lists["mitigations"])
    assert "strip" in lists["input_detectors"] and "spectral" in lists["data_filters"]


@pytest.mark.parametrize("bad, match", [({"datasets": ("mnist", "svhn")}, "datasets"), ({"seeds": (0, 0)}, "seeds"),
                                        ({"attacks": ("badnet",)}, "attacks"), ({"epochs": 0}, "epochs"),
                                        ({"detectors": ("nc",)}, "detectors"), ({"train_size": 5}, "train_size"),
                                        ({"train_size": "most"}, "train_size"), ({"epochs": "2"}, "epochs")])
def test_bad_configs_are_one_line_errors(bad, match):
    with pytest.raises(api.ConfigError, match=match):
        BenchmarkConfig(**bad)


def test_each_dataset_trains_on_its_own_budget_unless_one_is_given():
    auto = BenchmarkConfig()
    # MNIST's budget is the one its committed records were made with (so their job ids are unchanged)
    assert auto.budget("mnist") == TrainingBudget(20000, 2, 0.0)
    assert auto.budget("gtsrb") == TrainingBudget(None, 3, 5e-4)  # the whole split: 2 epochs of 20,000 gave 53-84%
    given = BenchmarkConfig(train_size=None, epochs=1)
    assert given.budget("mnist") == TrainingBudget(None, 1, 0.0) and given.budget("gtsrb") == TrainingBudget(None, 1, 5e-4)


def test_the_cli_reads_auto_all_and_counts_and_refuses_the_rest(capsys, monkeypatch, tmp_path):
    for args, fragment in ((["--epochs", "two"], "--epochs takes an integer"),
                           (["--train-size", "most"], "--train-size takes an integer, all or auto"),
                           (["--train-size", "50"], "train_size must be an integer >= 100")):
        code, _, err = run_cli(["benchmark", "--out", str(tmp_path / "b"), *args], capsys, monkeypatch)
        assert code == 2 and fragment in " ".join(err.replace("│", " ").split()) and "Traceback" not in err, err
    assert not (tmp_path / "b").exists()


def test_a_small_benchmark_runs_resumes_and_renders(toys, tmp_path, data_root):
    config = BenchmarkConfig(datasets=("mnist",), seeds=(0,), attacks=("toy-corner",), mitigations=("fine-tuning",),
                             detectors=("toy-logit-gap", "strip", "mntd"), train_size=1500, epochs=1, quick=True)
    s = api.benchmark(tmp_path / "run", config, data_root=data_root, progress=False, docs=tmp_path / "docs")
    assert (s["models"], s["defenses"], s["detections"], s["failures"]) == (2, 1, 5, [])
    records = read_records(tmp_path / "run" / "records.jsonl")
    models = {r["attack"]: r for r in records if r.get("row") == "model"}
    assert set(models) == {"clean", "toy-corner"} and models["clean"]["attack_success_rate"] is None
    assert 0 <= models["toy-corner"]["attack_success_rate"] <= 1
    (repair,) = [r for r in records if r.get("row") == "defense"]
    assert repair["defense"] == "fine-tuning" and repair["attack"] == "toy-corner"
    det = {(r["attack"], r["detector"]) for r in records if r.get("row") == "detection"}
    assert det == {("clean", "toy-logit-gap"), ("toy-corner", "toy-logit-gap"), ("toy-corner", "strip"),
                   ("clean", "mntd"), ("toy-corner", "mntd")}
    # MNTD's shadows were fitted once, before the sweep, and both jobs used that meta-classifier
    assert len(list((tmp_path / "run" / "mntd-shadows").glob("meta-*.json"))) == 1
    page = (tmp_path / "run" / "leaderboard.md").read_text()
    assert "`toy-corner`" in page and "after `fine-tuning`" in page and "`strip`" in page
    # the cost table: one row per job kind with its job count (two models were trained, both scanned by mntd)
    assert "### Wall time per model" in page and "| training | 2 |" in page and "| `mntd` | 2 |" in page
    # how the jobs ran, from their own records (each records its executor and threads)
    assert f"as the executor ran it (executor local, {torch.get_num_threads()} thread(s) per job:" in page
    assert "| `fine-tuning` | 1 |" in page and "| `strip` | 1 |" in page
    assert page == render_leaderboard(records)  # the page is its records' rendering
    assert (tmp_path / "docs" / "leaderboard.md").read_text() == page
    assert (tmp_path / "docs" / "figures" / "leaderboard-mnist-auroc.png").stat().st_size > 1000
    # run again: every job is kept, nothing retrains, the records are the same apart from wall times
    stamp = (tmp_path / "run" / "models" / "mnist-clean-s0.safetensors").stat().st_mtime_ns
    again = api.benchmark(tmp_path / "run", config, data_root=data_root, progress=False)
    assert (tmp_path / "run" / "models" / "mnist-clean-s0.safetensors").stat().st_mtime_ns == stamp
    strip = [{k: v for k, v in r.items() if k != "wall_time_s"} for r in read_records(tmp_path / "run" / "records.jsonl")]
    assert strip[1:] == [{k: v for k, v in r.items() if k != "wall_time_s"} for r in records][1:]
    assert again["failures"] == []
    json.dumps(records, allow_nan=False)


@pytest.mark.parametrize("dataset", ["mnist", "gtsrb"])
def test_every_clean_label_attack_can_poison_each_benchmark_models_training_set(dataset, data_root):
    """Clean-label attacks draw their rows from the target class: on GTSRB's class 0 (0.5% of the images) the
    defaults asked for 1,000 rows of 115 and both SIG and label-consistent failed, hence its own target."""
    config = BenchmarkConfig()
    target = TARGETS.get(dataset, (DEFAULT_TARGET,))[0]
    info = dataset_info(dataset)
    clean_label = [a for a in ATTACKS.names() if getattr(ATTACKS.get(a), "clean_label", False)]
    assert {"sig", "label-consistent"} <= set(clean_label)
    rest = clean_holdout(load_dataset(dataset, "train", data_root), HOLDOUT_FRACTION, HOLDOUT_SEED)[0]
    for seed in config.seeds:
        subset = training_subset(rest, config.budget(dataset).train_size, seed)
        share = float((subset.labels == target).float().mean())
        for name in clean_label:
            atk = make_attack(name, num_classes=info.num_classes, channels=info.input_shape[0],
                              image_size=info.input_shape[1], target=target, seed=seed)
            assert atk.poison_rate <= share, (name, seed, atk.poison_rate, share)
    if dataset == "gtsrb":  # and the first target would not have done
        assert float((training_subset(rest, config.budget(dataset).train_size, 0).labels == 0).float().mean()) < 0.01


def test_the_committed_leaderboard_is_its_records_rendering():
    """docs/leaderboard.md is what `benchmark --docs docs` rendered from docs/records/leaderboard.jsonl, and that
    run covered every attack, mitigation and detector registered now (a new plugin means a new run)."""
    from pathlib import Path

    from backdoor_arena.attacks import ATTACKS, MODEL_ATTACKS
    from backdoor_arena.defenses import DATA_FILTERS, INPUT_DETECTORS, MITIGATIONS, MODEL_DETECTORS

    docs = Path(__file__).resolve().parents[2] / "docs"
    records = read_records(docs / "records" / "leaderboard.jsonl")
    assert (docs / "leaderboard.md").read_text() == render_leaderboard(records)
    covered = next(r for r in records if r.get("row") == "run")["covered"]
    assert set(covered["attacks"]) == {*ATTACKS.names(), *MODEL_ATTACKS.names()}
    assert set(covered["mitigations"]) == set(MITIGATIONS.names())
    assert set(covered["model_detectors"] + covered["input_detectors"] + covered["data_filters"]) == {
        *MODEL_DETECTORS.names(), *INPUT_DETECTORS.names(), *DATA_FILTERS.names()}
    for dataset in next(r for r in records if r.get("row") == "run")["config"]["datasets"]:
        for kind in ("asr", "auroc"):
            assert (docs / "figures" / f"leaderboard-{dataset}-{kind}.png").stat().st_size > 1000
