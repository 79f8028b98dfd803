from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from mlinfra_models import compare, evaluate_binary, lift_top_decile


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = (rng.random(3000) < 0.1).astype(int)
    p = np.clip(0.1 + 0.25 * y + rng.normal(0, 0.12, y.size), 0.001, 0.999)
    return y, p


def test_metrics_equal_scikit_learn_with_intervals(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    ev = evaluate_binary(y, p, n_boot=100)
    assert ev.metrics["roc_auc"].value == pytest.approx(roc_auc_score(y, p))
    assert ev.metrics["pr_auc"].value == pytest.approx(average_precision_score(y, p))
    assert ev.metrics["brier"].value == pytest.approx(brier_score_loss(y, p))
    for name, est in ev.metrics.items():
        assert est.low <= est.value <= est.high, name
        assert est.high - est.low > 0, name
    assert ev.n == 3000 and ev.positives == int(y.sum())
    assert len(ev.calibration["mean_predicted"]) == 10
    assert ev.roc["fpr"][0] == 0 and ev.roc["tpr"][-1] == 1


def test_lift_top_decile() -> None:
    y = np.array([1] * 10 + [0] * 90)
    perfect = np.linspace(1, 0, 100)
    assert lift_top_decile(y, perfect) == pytest.approx(10.0)
    assert lift_top_decile(y, -perfect) == pytest.approx(0.0)


def test_paired_comparison_prefers_the_better_model(scored: tuple[np.ndarray, np.ndarray]) -> None:
    y, p = scored
    noisy = np.clip(p + np.random.default_rng(2).normal(0, 0.2, p.size), 0.001, 0.999)
    result = compare(y, p, noisy, n_boot=100)
    assert result.deltas["roc_auc"].low > 0
    assert result.worse_by("roc_auc") < 0
    assert result.worse_by("brier") < 0
    same = compare(y, p, p, n_boot=20)
    assert same.deltas["roc_auc"].value == 0


def test_bad_evaluation_sets_are_named() -> None:
    with pytest.raises(ValueError, match="single class"):
        evaluate_binary(np.zeros(10), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="empty"):
        evaluate_binary(np.array([]), np.array([]))
    with pytest.raises(ValueError, match="same length"):
        evaluate_binary(np.array([0, 1]), np.array([0.5]))
