"""Detectors on real MNIST models (short training on a subset): the infected model is flagged and the
clean one is not; STRIP and SentiNet separate triggered from clean inputs; Spectral Signatures finds the
poisons; the commands print one JSON object; a tiny zoo is built and evaluated; bad input is one line."""

from __future__ import annotations

import json

import pytest
import torch

from backdoor_arena import api
from backdoor_arena.api import detect, train_model
from backdoor_arena.attacks import make_attack
from backdoor_arena.data import load_dataset
from backdoor_arena.defenses import clean_holdout
from backdoor_arena.train import TrainConfig
from tests.helpers import run_cli

NC_FAST = ["-p", "steps=150", "-p", "batch_size=16"]


@pytest.fixture(scope="module")
def mnist_pair(tmp_path_factory, data_root):
    """A clean and a BadNets (4x4 white square, bottom-right, target 7, 10%) badnet-mnist, same seed,
    trained 2 epochs on 12,000 training images (the defender's 5% hold-out excluded)."""
    out = tmp_path_factory.mktemp("detection")
    train = load_dataset("mnist", "train", data_root)
    rest, _held = clean_holdout(train, 0.05, 0)
    rest = rest.subset(torch.arange(12_000))
    test = load_dataset("mnist", "test", data_root)
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="square",
                      trigger_options={"size": 4}, target=7, poison_rate=0.1, seed=0)
    poisoned = atk.poison(rest, torch.Generator().manual_seed(0)).dataset
    config = TrainConfig(epochs=2, progress=False)
    bad = train_model("badnet-mnist", poisoned, test, config, out / "bad.safetensors", atk, "bad")
    clean = train_model("badnet-mnist", rest, test, config, out / "clean.safetensors", None, "clean")
    assert bad.metrics["attack_success_rate"] > 0.95 and clean.metrics["clean_accuracy"] > 0.96
    return bad.path, bad.spec_path, clean.path



def test_neural_cleanse_flags_the_infected_model_and_names_the_target(mnist_pair, capsys, monkeypatch, tmp_path):
    bad, _spec, clean = mnist_pair
    code, out, err = run_cli(["detect", "neural-cleanse", str(bad), "--json", "-q", "-o", str(tmp_path), *NC_FAST],
                         capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    assert isinstance(r["anomaly_index"], float) and r["anomaly_index"] > 2
    assert r["flagged"] is True and r["suspected_target"] == 7
    assert (tmp_path / "reversed_triggers.png").stat().st_size > 1000
    code, out, err = run_cli(["detect", "neural-cleanse", str(clean), "--json", "-q", *NC_FAST], capsys, monkeypatch)
    c = json.loads(out)
    assert c["anomaly_index"] < 2 and c["flagged"] is False and c["suspected_target"] is None


def test_strip_and_sentinet_separate_triggered_inputs(mnist_pair):
    bad, spec, _clean = mnist_pair
    s = detect("strip", bad, attack_spec=spec, n_eval=200, params={"n_overlays": 50, "n_fit": 300},
               progress=False)
    assert s["auroc"] > 0.95 and s["far"] < 0.1 and s["frr"] < 0.08
    t = detect("sentinet", bad, attack_spec=spec, n_eval=150, params={"n_clean": 30, "n_fit": 200},
               progress=False)
    assert t["auroc"] > 0.8


def test_spectral_signatures_find_the_poisons(data_root, tmp_path):
    """1% poisoning (~9% of the target class: the paper's small-epsilon regime) on 12,000 images."""
    from backdoor_arena.defenses.spectral import SpectralSignatures
    from backdoor_arena.detection_metrics import auroc, precision_recall

    rest = clean_holdout(load_dataset("mnist", "train", data_root), 0.05, 0)[0].subset(torch.arange(12_000))
    atk = make_attack("badnets", num_classes=10, channels=1, image_size=28, trigger="square",
                      trigger_options={"size": 4}, target=7, poison_rate=0.01, seed=0)
    p = atk.poison(rest, torch.Generator().manual_seed(0))
    r = train_model("badnet-mnist", p.dataset, load_dataset("mnist", "test", data_root),
                        TrainConfig(epochs=2, progress=False), tmp_path / "low.safetensors", atk, "low")
    flt = SpectralSignatures(epsilon=0.1)
    scores = flt.score(_load(r.path), p.dataset)
    flagged = flt.flag(_load(r.path), p.dataset, scores)
    in_target = p.dataset.labels == 7
    precision, recall = precision_recall(flagged[in_target], p.poisoned_mask[in_target])
    # Short training leaves a weaker signature than the docs' 4-epoch model (recall 99.7%); chance would
    # give recall 0.15 and precision 0.09 (15% of the class removed, ~9% poisons).
    assert recall > 0.5 and precision > 0.3
    assert auroc(p.poisoned_mask[in_target].long(), scores[in_target]) > 0.85


def _load(path):
    from backdoor_arena.modelfile import load_model

    return load_model(path).model


def test_zoo_plan_covers_every_family_and_both_optimisers():
    """The wider plan (no training): every family, both optimisers balanced, epochs over the range, positions
    including the centre, sizes up to 8, one target per model except all-to-all; seeded."""
    from backdoor_arena.api import ZooConfig, zoo_plan
    from backdoor_arena.api.zoo import DEFAULT_FAMILIES, OPTIMIZER_LR

    config = ZooConfig(clean=20, backdoored=24, epochs=2, max_epochs=6, train_size=12_000, seed=3)
    plan = zoo_plan(config)
    assert plan == zoo_plan(config) != zoo_plan(ZooConfig(clean=20, backdoored=24, epochs=2, max_epochs=6, seed=4))
    clean, bad = [e for e in plan if not e["backdoored"]], [e for e in plan if e["backdoored"]]
    assert sorted(e["name"] for e in plan) == [f"model-{i:02d}" for i in range(44)]
    assert len({e["subset_seed"] for e in plan}) == 44  # every model its own training subset
    assert [e["optimizer"] for e in clean].count("sgd") == [e["optimizer"] for e in clean].count("adam") == 10
    assert all(e["lr"] == OPTIMIZER_LR[e["optimizer"]] for e in plan)
    assert {e["epochs"] for e in plan} == {2, 3, 4, 5, 6}
    assert {e["family"] for e in clean} == {"clean"}
    for fam in DEFAULT_FAMILIES:  # 24 over 6 families: 4 each, two per optimiser
        members = [e for e in bad if e["family"] == fam]
        assert len(members) == 4 and sorted(e["optimizer"] for e in members) == ["adam", "adam", "sgd", "sgd"]
    assert "center" in {e["position"] for e in bad} and max(e["size"] or 0 for e in bad) == 8
    for e in bad:
        assert (e["target"] is None) == (e["family"] == "all-to-all")
        assert e["attack"] == ("blended" if e["family"] == "blended" else "badnets")
        if e["family"] == "source-specific":
            assert len(e["sources"]) == 2 and e["target"] not in e["sources"]
    with pytest.raises(api.ConfigError, match="max_epochs"):
        ZooConfig(epochs=3, max_epochs=2)
    with pytest.raises(api.ConfigError, match="families"):
        ZooConfig(families=("square", "warp"))


def test_tiny_zoo_build_and_evaluate(tmp_path, capsys, monkeypatch):
    from sklearn.metrics import roc_auc_score

    from backdoor_arena.detection_metrics import wilson_interval

    zoo = tmp_path / "zoo"
    build = ["zoo", "build", "--out", str(zoo), "--clean", "2", "--backdoored", "2", "--epochs", "1",
             "--train-size", "3000", "-q"]
    code, out, err = run_cli(build, capsys, monkeypatch)
    assert code == 0, err
    models = sorted((zoo / "models").glob("*.safetensors"))
    assert len(models) == 4
    assert len(list((zoo / "specs").glob("*.attack.json"))) == 2  # specs apart from models
    assert not list((zoo / "models").glob("*.json"))
    truth = {r["name"]: r for r in api.read_truth(zoo)}
    assert sorted(r["family"] for r in truth.values() if not r["backdoored"]) == ["clean", "clean"]
    fams = [r["family"] for r in truth.values() if r["backdoored"]]
    assert len(set(fams)) == 2  # backdoored models cycle over the families
    assert {r["optimizer"] for r in truth.values() if not r["backdoored"]} == {"sgd", "adam"}
    assert all(r["epochs"] == 1 and r["clean_accuracy"] > 0.5 for r in truth.values())
    # resuming the same zoo trains nothing; other settings are refused rather than mixed into it
    stamps = [m.stat().st_mtime_ns for m in models]
    code, out, err = run_cli(build, capsys, monkeypatch)
    assert code == 0, err
    assert [m.stat().st_mtime_ns for m in models] == stamps
    code, out, err = run_cli([*build[:-1], "--epochs", "2", "-q"], capsys, monkeypatch)
    assert code == 2 and "built with other settings" in err and "epochs" in err

    code, out, err = run_cli(["zoo", "evaluate", str(zoo), "--json", "-q", "-p", "steps=40",
                              "-p", "batch_size=8"], capsys, monkeypatch)
    assert code == 0, err
    s = json.loads(out)
    rows = [json.loads(line) for line in (zoo / "eval-neural-cleanse" / "scores.jsonl").read_text().splitlines()]
    assert sorted(r["name"] for r in rows) == sorted(truth) and s["n_clean"] == s["n_backdoored"] == 2
    # the summary is what the scores say: AUROC on the scores (sklearn), verdicts = score above the threshold
    labels, scores = [int(r["backdoored"]) for r in rows], [r["score"] for r in rows]
    assert s["auroc"] == pytest.approx(roc_auc_score(labels, scores))
    assert s["auroc_ci"][0] <= s["auroc"] <= s["auroc_ci"][1] and s["n_boot"] == 2000
    assert all(r["flagged"] == (r["score"] > r["threshold"]) and r["threshold"] == 2 for r in rows)
    fp = sum(r["flagged"] for r in rows if not r["backdoored"])
    assert s["n_clean_flagged"] == fp and s["verdict_fpr"] == fp / 2
    assert s["verdict_fpr_ci"] == pytest.approx(list(wilson_interval(fp, 2)))
    assert sorted(s["per_family"]) == sorted(fams)
    assert all(f["n_backdoored"] == 1 and f["n_clean"] == 2 for f in s["per_family"].values())
    assert sum(c["n_clean"] for c in s["clean_by_optimizer"].values()) == 2
    assert s["clean_scores"]["min"] == min(sc for sc, y in zip(scores, labels, strict=True) if not y)
    text = (zoo / "eval-neural-cleanse" / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))  # never a bare NaN
    assert (zoo / "eval-neural-cleanse" / "roc.png").stat().st_size > 1000


@pytest.mark.parametrize("args, code, message", [
    (["detect", "neural-cleanse", "missing.safetensors"], 4, "does not exist"),
    (["detect", "strip", "{bad}", "-p", "frr=2"], 2, "frr must be"),
    (["detect", "neural-cleanse", "{bad}", "-p", "stepz=3"], 2, "bad parameter"),
    (["detect", "neural-cleanse", "{bad}", "--clean-dataset", "fashion-mnist"], 5, "trained on 'mnist'"),
    (["detect", "spectral", "{bad}", "-p", "epsilon=0"], 2, "epsilon"),
    (["zoo", "evaluate", "{tmp}"], 2, "not a zoo folder"),
    (["zoo", "build", "--out", "{tmp}/z", "--clean", "0", "--backdoored", "0"], 2, "at least one model"),
])
def test_bad_input_is_a_one_line_error(args, code, message, mnist_pair, capsys, monkeypatch, tmp_path):
    bad, _spec, _clean = mnist_pair
    args = [a.replace("{bad}", str(bad)).replace("{tmp}", str(tmp_path)) for a in args]
    got, _out, err = run_cli(args, capsys, monkeypatch)
    assert got == code, err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_scan_writes_one_report(mnist_pair, capsys, monkeypatch, tmp_path):
    bad, _spec, _clean = mnist_pair
    code, out, err = run_cli(["scan", str(bad), "-o", str(tmp_path / "scan"), "--json", "-q",
                          "-p", "neural-cleanse.steps=150", "-p", "neural-cleanse.batch_size=16"], capsys, monkeypatch)
    assert code == 0, err
    r = json.loads(out)
    # the scan's verdict is its detectors' verdict: the infected model is flagged, with the right target
    nc = r["detectors"]["neural-cleanse"]
    assert r["flagged"] is any(d["flagged"] for d in r["detectors"].values()) is True
    assert nc["flagged"] is True and nc["suspected_target"] == 7 and nc["params"] == {"steps": 150, "batch_size": 16}
    # the report on disk is what was printed, and the per-detector result file is the same result
    on_disk = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert on_disk == {k: v for k, v in r.items() if k != "report"}
    assert json.loads((tmp_path / "scan" / "neural-cleanse.json").read_text())["anomaly_index"] == nc["anomaly_index"]
    assert (tmp_path / "scan" / "reversed_triggers.png").stat().st_size > 1000
