"""One calibrated verdict: the calibration (logistic regression over detector scores, refitted on the detectors
that produced a score), `scan` with failing and over-budget detectors, and `scan-calibrate` / `scan-zoo` over a
tiny real zoo."""

from __future__ import annotations

import json
import time
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from backdoor_arena import api
from backdoor_arena.defenses import MODEL_DETECTORS, ModelVerdict
from backdoor_arena.defenses.base import check_clean_set
from backdoor_arena.errors import ConfigError
from backdoor_arena.verdict import Calibration, logistic_fit, logistic_probability
from tests.helpers import run_cli


def _table(n: int = 20, seed: int = 0) -> tuple[list[dict[str, Any]], list[int]]:
    """Synthetic scan reports: detector a separates the classes, b is noise, c is missing on some models."""
    g = np.random.default_rng(seed)
    reports, labels = [], []
    for i in range(n):
        y = i % 2
        dets = {"a": {"score": float(g.normal(3.0 * y, 1.0))}, "b": {"score": float(g.normal())}}
        if i % 5:
            dets["c"] = {"score": float(g.normal(2.0 * y, 1.0))}
        reports.append({"detectors": dets})
        labels.append(y)
    return reports, labels


def test_calibrated_probability_follows_the_informative_detector():
    calib = Calibration.from_reports(*_table())
    assert calib.detectors == ("a", "b", "c")
    low = calib.verdict({"a": -1.0, "b": 0.0, "c": 0.0})
    high = calib.verdict({"a": 4.0, "b": 0.0, "c": 2.0})
    assert 0 <= low.probability < 0.5 < high.probability <= 1
    assert high.flagged and not low.flagged
    assert high.coefficients["a"] > abs(high.coefficients["b"])  # the informative detector weighs most
    probs = [calib.verdict({"a": a, "b": 0.0}).probability for a in (-2.0, 0.0, 1.5, 3.0, 5.0)]
    assert probs == sorted(probs)  # monotone in the informative score


def test_a_detector_without_a_score_is_left_out_and_the_rest_decide():
    calib = Calibration.from_reports(*_table())
    v = calib.verdict({"a": 4.0, "b": 0.0, "c": None, "new": 1.0})
    assert v.used == ["a", "b"]
    assert "c" in v.left_out and "not in the calibration" in v.left_out["new"]
    assert v.calibration_rows == 20  # rows missing c still count when c is not used
    assert calib.verdict({"a": 4.0, "b": 0.0, "c": 1.0}).calibration_rows == 16
    assert calib.verdict({"a": float("nan")}).used == []
    nothing = calib.verdict({"a": None})
    assert nothing.probability is None and nothing.flagged is None


def test_the_fit_is_a_standardised_logistic_regression():
    x = np.array([[0.0, 1.0], [1.0, 3.0], [2.0, 2.0], [3.0, 5.0], [4.0, 4.0], [5.0, 7.0]])
    y = np.array([0, 0, 0, 1, 1, 1])
    coef, intercept, mean, std = logistic_fit(x, y, 1.0)
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=1.0).fit((x - x.mean(0)) / x.std(0), y)
    point = np.array([2.5, 4.0])
    assert logistic_probability(point, coef, intercept, mean, std) == pytest.approx(
        ref.predict_proba(((point - x.mean(0)) / x.std(0))[None])[0, 1])


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    calib = Calibration.from_reports(*_table(), source={"zoo": "z"})
    path = calib.save(tmp_path / "c.json")
    again = Calibration.load(path)
    assert again == calib
    assert again.verdict({"a": 2.0}).probability == calib.verdict({"a": 2.0}).probability
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    broken = calib.to_dict() | {"rows": [[1.0]]}
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    for name, match in (("missing.json", "does not exist"), ("bad.json", "not JSON"),
                        ("other.json", "not a backdoor-arena calibration"), ("broken.json", "entries")):
        with pytest.raises(ConfigError, match=match):
            Calibration.load(tmp_path / name)
    with pytest.raises(ConfigError, match="at least 2 backdoored"):
        Calibration(("a",), ((1.0,), (2.0,), (3.0,)), (0, 0, 1))


def test_too_few_calibration_rows_for_the_detectors_at_hand():
    calib = Calibration(("a", "b"), ((0.0, None), (0.1, None), (3.0, 1.0), (3.1, None)), (0, 0, 1, 1))
    with pytest.raises(ConfigError, match="too few calibration models with scores from a, b"):
        calib.verdict({"a": 1.0, "b": 1.0})
    assert calib.verdict({"a": 1.0}).used == ["a"]


class _Slow:
    example_params: ClassVar[dict[str, Any]] = {}

    def inspect(self, model, clean):
        time.sleep(120)
        return ModelVerdict(0.0, False, 1.0)


class _Broken:
    example_params: ClassVar[dict[str, Any]] = {}

    def inspect(self, model, clean):
        raise RuntimeError("the detector broke\nsecond line")


class _MeanLogit:
    """A real score: the largest mean logit's z-score over labels on clean data."""

    example_params: ClassVar[dict[str, Any]] = {}

    def inspect(self, model, clean):
        x = check_clean_set(model, clean, "mean-logit")[:64].float() / 255
        with torch.no_grad():
            m = model(x).mean(0)
        z = float(((m - m.mean()) / m.std()).max())
        return ModelVerdict(z, z > 2, 2.0, int(m.argmax()))


@pytest.fixture()
def test_detectors():
    with MODEL_DETECTORS.temporarily("t-slow", _Slow), MODEL_DETECTORS.temporarily("t-broken", _Broken), \
            MODEL_DETECTORS.temporarily("t-mean-logit", _MeanLogit):
        yield


def test_scan_reports_failures_and_over_budget_detectors_and_keeps_the_rest(test_detectors, tiny_mnist_model,
                                                                             tmp_path):
    model, _spec = tiny_mnist_model
    calib = Calibration(("t-mean-logit", "t-slow"), ((0.5, 0.0), (1.0, 0.0), (2.5, 1.0), (3.5, 1.0)), (0, 0, 1, 1))
    started = time.perf_counter()
    r = api.scan(model, tmp_path / "scan", detectors=["t-slow", "t-broken", "t-mean-logit"], time_budget_s=12.0,
                 calibration=calib.save(tmp_path / "calib.json"), progress=False)
    assert time.perf_counter() - started < 100  # the slow detector was stopped, not waited for
    assert set(r.detectors) == {"t-mean-logit"}, r.failures
    assert r.failures["t-slow"]["status"] == "over budget" and r.failures["t-slow"]["wall_time_s"] >= 12.0
    assert r.failures["t-broken"] == {"status": "error", "error": "RuntimeError: the detector broke",
                                      "wall_time_s": r.failures["t-broken"]["wall_time_s"]}
    assert r.verdict.used == ["t-mean-logit"] and "t-slow" in r.verdict.left_out
    expected = calib.verdict({"t-mean-logit": r.detectors["t-mean-logit"].values["score"]}).probability
    assert r.verdict.probability == pytest.approx(expected)
    report = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert set(report["wall_time_s"]) == {"t-slow", "t-broken", "t-mean-logit"}
    assert report["verdict"]["probability"] == pytest.approx(expected)
    assert not (tmp_path / "scan" / "t-broken.error.txt").exists()


def test_scan_bad_input_is_one_line(test_detectors, tiny_mnist_model, tmp_path, capsys, monkeypatch):
    model, _spec = tiny_mnist_model
    for args, match in ((["-d", "nope"], "unknown model detectors"), (["--time-budget", "0"], "time budget"),
                        (["--calibration", str(tmp_path / "none.json")], "does not exist"),
                        (["-p", "t-mean-logit.x=1"], "bad parameter")):
        code, out, err = run_cli(["scan", str(model), "-o", str(tmp_path / "o"), "-d", "t-mean-logit", *args, "-q"],
                                 capsys, monkeypatch)
        assert code == 2 and match in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not (tmp_path / "o").exists()  # nothing written for a refused run


def test_scan_calibrate_and_scan_zoo_on_a_tiny_zoo(test_detectors, tmp_path, capsys, monkeypatch):
    zoo = tmp_path / "zoo"
    api.build_zoo(zoo, api.ZooConfig(clean=2, backdoored=2, epochs=1, train_size=1500, seed=3), progress=False)
    code, out, err = run_cli(["scan-calibrate", str(zoo), "-o", str(tmp_path / "calib.json"), "-d", "t-mean-logit",
                              "-d", "t-broken", "-q"], capsys, monkeypatch)
    assert code == 0, err
    calib = Calibration.load(tmp_path / "calib.json")
    assert calib.labels.count(1) == 2 and len(calib.rows) == 4
    assert [r[calib.detectors.index("t-broken")] for r in calib.rows] == [None] * 4
    code, out, err = run_cli(["scan-zoo", str(zoo), "-o", str(tmp_path / "eval"), "-d", "t-mean-logit", "-d",
                              "t-broken", "--calibration", str(tmp_path / "calib.json"), "--json", "-q"],
                             capsys, monkeypatch)
    assert code == 0, err
    s = json.loads(out)
    assert set(s["detectors"]) == {"t-mean-logit", "t-broken", "verdict"}
    assert s["detectors"]["t-broken"]["n_failed"] == 4
    assert s["detectors"]["verdict"]["n_failed"] == 0 and s["detectors"]["verdict"]["n_clean"] == 2
    rows = [json.loads(line) for line in (tmp_path / "eval" / "scores.jsonl").read_text().splitlines()]
    verdicts = {r["name"]: r["score"] for r in rows if r["detector"] == "verdict"}
    scores = {r["name"]: r["score"] for r in rows if r["detector"] == "t-mean-logit"}
    calib_direct = {n: calib.verdict({"t-mean-logit": sc, "t-broken": None}).probability for n, sc in scores.items()}
    assert verdicts == pytest.approx(calib_direct)
    by_score = sorted(scores, key=scores.get)
    assert sorted(verdicts, key=verdicts.get) in (by_score, by_score[::-1])  # monotone in the one input
    assert (tmp_path / "eval" / "roc.png").stat().st_size > 1000
    # resumable: a second run reuses every model's scan
    stamp = (tmp_path / "eval" / "scans" / rows[0]["name"] / "scan.json").stat().st_mtime_ns
    api.scan_zoo(zoo, tmp_path / "eval", detectors=["t-mean-logit", "t-broken"], progress=False)
    assert (tmp_path / "eval" / "scans" / rows[0]["name"] / "scan.json").stat().st_mtime_ns == stamp
