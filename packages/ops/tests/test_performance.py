"""Delayed-label monitoring: metrics, the CBPE estimate against outcomes drawn from known
probabilities, calibration, cohorts and maturity, and drift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlinfra_ops import (
    average_precision,
    cohort_performance,
    detect_drift,
    estimate_performance,
    fit_calibration,
    label_predictions,
    needs_calibration,
    population_stability_index,
    reference_calibration,
    roc_auc,
)


@pytest.mark.parametrize("seed", range(5))
def test_metrics_equal_scikit_learn_with_ties(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 20, 500) / 20  # many ties
    y = rng.random(500) < 0.2 + 0.5 * scores
    assert roc_auc(y, scores) == pytest.approx(metrics.roc_auc_score(y, scores), abs=1e-12)
    assert average_precision(y, scores) == pytest.approx(
        metrics.average_precision_score(y, scores), abs=1e-12
    )


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and outcomes drawn from them: a perfectly calibrated model."""
    rng = np.random.default_rng(seed)
    p = rng.beta(1.2, 6.0, n)
    return p, rng.random(n) < p


@pytest.mark.parametrize("seed", range(3))
def test_estimate_matches_realized_auc_of_a_calibrated_model(seed: int) -> None:
    p, y = calibrated(20_000, seed)
    estimate = estimate_performance(p, n_boot=100, seed=seed)
    realized = roc_auc(y, p)
    assert abs(estimate.roc_auc - realized) < 0.01
    assert estimate.roc_auc_low <= realized <= estimate.roc_auc_high
    assert estimate.roc_auc_high - estimate.roc_auc_low < 0.03
    assert estimate.expected_positive_rate == pytest.approx(y.mean(), abs=0.01)


def test_a_miscalibrated_model_needs_and_gets_calibration() -> None:
    p, y = calibrated(20_000, 7)
    scores = p**3  # same ranking, badly calibrated
    p_ref, y_ref = calibrated(20_000, 8)
    realized = roc_auc(y, scores)
    naive = estimate_performance(scores, n_boot=20)
    calibration = fit_calibration(p_ref**3, y_ref)
    corrected = estimate_performance(scores, calibration, n_boot=50)
    assert abs(naive.roc_auc - realized) > 0.05, "uncalibrated CBPE is biased"
    assert abs(corrected.roc_auc - realized) < 0.015
    assert np.all(np.diff(calibration.probabilities) >= 0), "calibration keeps the ranking"


def test_each_version_is_estimated_with_its_own_calibration() -> None:
    """After a retrain a cohort mixes two versions whose scores mean different things: each
    version's rows go through that version's calibration."""
    p_old, y_old = calibrated(20_000, 3)
    p_new, y_new = calibrated(20_000, 4)
    at = datetime(2026, 10, 5, tzinfo=UTC)
    rows = pl.DataFrame(
        {
            "predicted_at": [at] * 40_000,
            "score": np.r_[p_old**3, p_new],  # v1 miscalibrated, v2 calibrated
            "version": ["1"] * 20_000 + ["2"] * 20_000,
            "matured": [True] * 40_000,
            "label": np.r_[y_old, y_new],
        }
    )
    ref_p, ref_y = calibrated(20_000, 5)
    per_version = {"1": reference_calibration(ref_p**3, ref_y), "2": None}
    assert per_version["1"] is not None, "the miscalibrated version needs calibration"
    (cohort,) = cohort_performance(rows, calibration=per_version, n_boot=20)
    (single,) = cohort_performance(rows, calibration=per_version["1"], n_boot=20)
    probabilities = np.r_[p_old, p_new]  # the truth both versions' scores stand for
    assert cohort.estimated.expected_positive_rate == pytest.approx(probabilities.mean(), abs=0.005)
    assert abs(single.estimated.expected_positive_rate - probabilities.mean()) > 0.02
    with pytest.raises(ValueError, match="per-version calibrations need the column 'version'"):
        cohort_performance(rows.drop("version"), calibration=per_version)


def test_cohorts_are_estimated_until_they_mature() -> None:
    rng = np.random.default_rng(1)
    start = datetime(2026, 9, 7, tzinfo=UTC)
    n = 2000
    dates = [start + timedelta(weeks=w) for w in range(8)]
    predictions = pl.DataFrame(
        {
            "customer_id": np.tile(np.arange(n), len(dates)),
            "predicted_at": np.repeat(np.array(dates, dtype="datetime64[us]"), n),
            "score": rng.beta(1.2, 6.0, n * len(dates)),
        }
    ).with_columns(pl.col("predicted_at").dt.replace_time_zone("UTC"))
    churned = rng.random(n) < 0.3
    days = rng.integers(1, 70, churned.sum())
    outcomes = pl.DataFrame(
        {
            "customer_id": np.r_[np.arange(n)[churned], [10**6, 10**6 + 1]],  # two unknown
            "churned_at": [start + timedelta(days=int(d)) for d in days] + [start, start],
        }
    )
    data_end = start + timedelta(weeks=6)
    labelled, skipped = label_predictions(
        predictions, outcomes, horizon=timedelta(days=30), data_end=data_end
    )
    assert skipped == {"outcomes_for_unknown_entities": 2}
    cohorts = cohort_performance(labelled, n_boot=20)
    assert [c.n for c in cohorts] == [n] * len(dates)
    # a cohort has matured once its 30 days have passed by the data end
    assert [c.matured for c in cohorts] == [d + timedelta(days=30) <= data_end for d in dates]
    for cohort in cohorts:
        assert (cohort.realized_roc_auc is None) == (not cohort.matured)
        assert 0.3 < cohort.estimated.roc_auc < 1
    first = labelled.filter(pl.col("predicted_at") == start)
    expected = (
        outcomes.filter(pl.col("customer_id") < n)
        .filter((pl.col("churned_at") > start) & (pl.col("churned_at") <= start + timedelta(30)))
        .height
    )
    assert first["label"].sum() == expected


def test_drift_flags_the_injected_feature_only(customer_features: Any) -> None:
    rng = np.random.default_rng(2)

    def frame(shift: float, new_plan: bool) -> pl.DataFrame:
        return customer_features(rng, 5000, shift, new_plan)

    reference = frame(0.0, new_plan=False)
    stable = detect_drift(reference, frame(0.0, new_plan=False), reference.columns)
    assert stable.drifted_features == [] and not stable.dataset_drift
    drifted = detect_drift(reference, frame(2.0, new_plan=False), reference.columns)
    assert drifted.drifted_features == ["support_tickets_30d"]
    assert drifted.dataset_drift, "one of four features is the configured share"
    assert detect_drift(reference, frame(0.0, new_plan=True), ["plan"]).drifted_features == ["plan"]


def test_nulls_count_as_drift_and_bad_input_is_named() -> None:
    reference = pl.Series("x", np.arange(1000, dtype=float))
    emptying = pl.Series("x", [None] * 500 + list(range(500)), dtype=pl.Float64)
    assert population_stability_index(reference, emptying) > 1
    with pytest.raises(ValueError, match="lacks feature column"):
        detect_drift(pl.DataFrame({"x": [1.0]}), pl.DataFrame({"y": [1.0]}), ["x"])
    with pytest.raises(ValueError, match="expected rows in both"):
        population_stability_index(reference, pl.Series("x", [], dtype=pl.Float64))
    with pytest.raises(ValueError, match="not probabilities"):
        estimate_performance(np.array([0.2, 1.5]))
    with pytest.raises(ValueError, match="predictions lack column"):
        label_predictions(
            pl.DataFrame({"customer_id": [1]}),
            pl.DataFrame({"customer_id": [1], "churned_at": [datetime.now(UTC)]}),
            horizon=timedelta(days=30),
            data_end=datetime.now(UTC),
        )


def test_needs_calibration_only_for_miscalibrated_scores() -> None:
    rng = np.random.default_rng(5)
    p = rng.beta(1, 8, size=4000)
    y = rng.random(4000) < p
    # calibrated by construction: an isotonic fit can only add noise
    assert not needs_calibration(p, y)
    # the same ranking, squashed towards 0.5: the held-out calibration error drops after a fit
    assert needs_calibration(0.5 + (p - p.mean()) / 4, y)
    # a single outcome, or a perfect ranking, needs nothing
    assert not needs_calibration(p, np.zeros(4000, dtype=bool))
    with pytest.raises(ValueError, match="test_share"):
        needs_calibration(p, y, test_share=1.5)
