"""Detection metrics against scikit-learn, on random scores with ties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from backdoor_arena.detection_metrics import (
    auroc,
    far_frr,
    precision_recall,
    roc_curve,
    threshold_at_frr,
    tpr_at_fpr,
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
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels.numpy(), scores.numpy()))
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
