"""Detection metrics against scikit-learn and scipy, on random scores with ties; the uncertainty intervals
(bootstrap AUROC, Wilson, Clopper-Pearson) against references and by their coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from backdoor_arena import detection_metrics
from backdoor_arena.detection_metrics import (
    auroc,
    auroc_bootstrap_ci,
    clopper_pearson_interval,
    far_frr,
    precision_recall,
    roc_curve,
    threshold_at_frr,
    tpr_at_fpr,
    wilson_interval,
)
from backdoor_arena.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 6)), min_size=2, max_size=40))
def test_roc_and_auroc_match_sklearn(pairs):
    labels = np.array([p[0] for p in pairs])
    scores = np.array([p[1] for p in pairs], dtype=float) / 3  # few distinct values: many ties
    if labels.min() == labels.max():
        with pytest.raises(ConfigError):
            auroc(torch.tensor(labels), torch.tensor(scores))
        return
    fpr, tpr, thr = roc_curve(torch.tensor(labels), torch.tensor(scores))
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr.numpy(), sk_fpr)
    np.testing.assert_allclose(tpr.numpy(), sk_tpr)
    np.testing.assert_allclose(thr.numpy()[1:], sk_thr[1:])
    assert auroc(torch.tensor(labels), torch.tensor(scores)) == pytest.approx(roc_auc_score(labels, scores))
    # TPR@FPR: the best sklearn point within the FPR budget
    for budget in (0.0, 0.05, 0.3, 1.0):
        want = sk_tpr[sk_fpr <= budget + 1e-12].max()
        assert tpr_at_fpr(torch.tensor(labels), torch.tensor(scores), budget) == pytest.approx(want)


def test_auroc_is_on_scores_not_verdicts():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.1, 0.2, 0.9, 0.5, 0.8, 1.0])
    # pairs (pos > neg): 0.5 beats 0.1, 0.2; 0.8 beats 0.1, 0.2; 1.0 beats all three -> 7 of 9
    assert auroc(labels, scores) == pytest.approx(7 / 9)
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))
    verdicts = (scores > 0.85).long()  # one point of the curve (TPR 1/3 at FPR 1/3): chance, not 7/9
    assert auroc(labels, verdicts) == pytest.approx(0.5)
    assert auroc(labels, 1 - scores) == pytest.approx(1 - auroc(labels, scores))


def test_threshold_at_frr_and_far_frr():
    clean = torch.arange(100, dtype=torch.float64)  # scores 0..99
    t = threshold_at_frr(clean, 0.01)
    assert t == 98.0 and float((clean > t).double().mean()) == pytest.approx(0.01)
    far, frr = far_frr(clean, torch.tensor([97.0, 99.5, 120.0]), t)
    assert frr == pytest.approx(0.01) and far == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="false-rejection"):
        threshold_at_frr(clean, 1.5)


def test_precision_recall():
    p, r = precision_recall(torch.tensor([1, 1, 0, 0, 1]), torch.tensor([1, 0, 0, 1, 1]))
    assert p == pytest.approx(2 / 3) and r == pytest.approx(2 / 3)


def test_bad_inputs_raise_config_error():
    with pytest.raises(ConfigError, match="same length"):
        auroc(torch.tensor([0, 1]), torch.tensor([0.1]))
    with pytest.raises(ConfigError, match="0 \\(negative\\) or 1"):
        auroc(torch.tensor([0, 2]), torch.tensor([0.1, 0.2]))
    with pytest.raises(ConfigError, match="finite"):
        auroc(torch.tensor([0, 1]), torch.tensor([0.1, float("nan")]))


# --------------------------------------------------------------------------- intervals
@pytest.mark.parametrize("k, n", [(0, 20), (1, 20), (5, 20), (19, 20), (20, 20), (3, 7), (0, 1), (40, 1000)])
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_wilson_and_clopper_pearson_match_scipy(k, n, level):
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    assert wilson_interval(k, n, level) == pytest.approx((ci.low, ci.high), abs=1e-12)
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    assert clopper_pearson_interval(k, n, level) == pytest.approx((ci.low, ci.high), abs=1e-9)


def test_wilson_known_values():
    # 0 of 20 clean models flagged: the 95% upper bound is z^2 / (n + z^2) = 3.8415 / 23.8415, not 0
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.16113), abs=1e-5)
    assert wilson_interval(5, 20) == pytest.approx((0.11186, 0.46870), abs=1e-5)
    lo, hi = wilson_interval(1, 20)
    assert lo < 1 / 20 < hi and clopper_pearson_interval(1, 20)[1] > hi  # the exact interval is wider


def test_bootstrap_ci_repeats_the_documented_draws():
    """The vectorised replicates equal sklearn's AUROC on the same resamples (the draws are documented)."""
    rng = np.random.default_rng(3)
    labels = np.array([1] * 9 + [0] * 14)
    rng.shuffle(labels)
    scores = np.round(rng.normal(size=23) + labels, 1)  # rounded: ties inside and across the classes
    pos, neg = scores[labels == 1], scores[labels == 0]
    g = torch.Generator().manual_seed(7)
    pi = torch.randint(len(pos), (300, len(pos)), generator=g).numpy()
    ni = torch.randint(len(neg), (300, len(neg)), generator=g).numpy()
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    reps = [roc_auc_score(y, np.r_[pos[pi[b]], neg[ni[b]]]) for b in range(300)]
    want = np.quantile(reps, [0.05, 0.95])
    got = auroc_bootstrap_ci(torch.tensor(labels), torch.tensor(scores), n_boot=300, seed=7, level=0.9)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert got == auroc_bootstrap_ci(torch.tensor(labels), torch.tensor(scores), n_boot=300, seed=7, level=0.9)
    assert got != auroc_bootstrap_ci(torch.tensor(labels), torch.tensor(scores), n_boot=300, seed=8, level=0.9)


def test_bootstrap_ci_loop_path_agrees(monkeypatch):
    labels = torch.tensor([0, 1] * 15)
    scores = torch.arange(30, dtype=torch.float64) % 7 + labels
    fast = auroc_bootstrap_ci(labels, scores, n_boot=200, seed=1)
    monkeypatch.setattr(detection_metrics, "MAX_PAIRS", 0)  # force the per-replicate loop
    assert auroc_bootstrap_ci(labels, scores, n_boot=200, seed=1) == pytest.approx(fast, abs=1e-12)


def test_bootstrap_ci_behaviour():
    perfect = torch.tensor([0.0, 0.1, 0.2, 0.9, 1.0])
    labels = torch.tensor([0, 0, 0, 1, 1])
    assert auroc_bootstrap_ci(labels, perfect, n_boot=500) == (1.0, 1.0)  # separation survives any resample
    g = torch.Generator().manual_seed(0)
    small = torch.tensor([0] * 10 + [1] * 10)
    large = torch.tensor([0] * 200 + [1] * 200)
    s_small = torch.randn(20, generator=g) + 0.5 * small
    s_large = torch.randn(400, generator=g) + 0.5 * large
    lo_s, hi_s = auroc_bootstrap_ci(small, s_small)
    lo_l, hi_l = auroc_bootstrap_ci(large, s_large)
    assert lo_s <= auroc(small, s_small) <= hi_s and lo_l <= auroc(large, s_large) <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 2  # 20x the data: a much narrower interval
    lo80, hi80 = auroc_bootstrap_ci(small, s_small, level=0.8)
    assert lo_s <= lo80 and hi80 <= hi_s


def test_bootstrap_ci_covers_the_true_auroc():
    """Scores N(0, 1) for negatives and N(1, 1) for positives: the true AUROC is Phi(1 / sqrt 2) = 0.760.
    Over 200 seeded data sets of 40 + 40 the 95% interval covers it close to 95% of the time."""
    true = norm.cdf(1 / np.sqrt(2))
    g = torch.Generator().manual_seed(11)
    labels = torch.tensor([0] * 40 + [1] * 40)
    hits = 0
    for i in range(200):
        scores = torch.randn(80, generator=g, dtype=torch.float64) + labels
        lo, hi = auroc_bootstrap_ci(labels, scores, n_boot=400, seed=i)
        hits += lo <= true <= hi
    assert 0.88 <= hits / 200 <= 0.99


@pytest.mark.parametrize("call, message", [
    (lambda: wilson_interval(3, 2), "0 <= k <= n"),
    (lambda: wilson_interval(0, 0), "n >= 1"),
    (lambda: wilson_interval(1, 10, level=1.0), "level"),
    (lambda: clopper_pearson_interval(1.5, 10), "integer"),
    (lambda: auroc_bootstrap_ci(torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), n_boot=0), "n_boot"),
    (lambda: auroc_bootstrap_ci(torch.tensor([0, 1]), torch.tensor([0.1, 0.2]), level=95), "level"),
    (lambda: auroc_bootstrap_ci(torch.tensor([1, 1]), torch.tensor([0.1, 0.2])), "one positive and one negative"),
])
def test_interval_bad_inputs(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
