"""Our CBPE against NannyML's on the same reference and analysis data.

NannyML is not in the lock (it pins plotly < 6 and kaleido 0.2), so this runs where it is
installed: the ops member's isolated CI run adds ``--with nannyml --with statsmodels`` (NannyML
0.13 imports statsmodels without declaring it). Elsewhere the module is skipped.

Both estimate the ROC-AUC and the average precision of the *expected* curves: rows ranked by
their raw score, each a positive with its calibrated probability; both calibrate with isotonic
regression fitted on the labelled reference. The deliberate differences, none of which these
data exercise: tied scores are one threshold here (as in scikit-learn's metrics) while NannyML
breaks ties in the arbitrary order of ``np.argsort``; NannyML calibrates only when isotonic
regression lowers the expected calibration error in cross-validation on the reference, we
whenever the caller passes a calibration; and the intervals differ (a parametric bootstrap here,
+-3 standard errors from reference chunks in NannyML), so they are not compared.
"""

from __future__ import annotations

import os

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")  # read when nannyml is imported

import numpy as np
import pytest

from mlinfra_ops import average_precision, estimate_performance, fit_calibration, roc_auc

nml = pytest.importorskip("nannyml")
pd = pytest.importorskip("pandas")

CHUNK = 2_500
THRESHOLD = 0.05  # the y_pred NannyML's confusion matrix needs; it does not affect the AUCs


def scored(n: int, a: float, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities ~ Beta(a, b) and outcomes drawn from them."""
    rng = np.random.default_rng(seed)
    p = rng.beta(a, b, n)
    return p, rng.random(n) < p


def frame(scores: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "y_pred_proba": scores,
            "y_pred": (scores >= THRESHOLD).astype(int),
            "y_true": y.astype(int),
        }
    )


def nannyml_cbpe(
    reference: pd.DataFrame, analysis: pd.DataFrame, **options: object
) -> tuple[object, pd.DataFrame]:
    estimator = nml.CBPE(
        y_pred_proba="y_pred_proba",
        y_pred="y_pred",
        y_true="y_true",
        problem_type="classification_binary",
        metrics=["roc_auc", "average_precision", "confusion_matrix"],
        normalize_confusion_matrix="all",
        chunk_size=CHUNK,
        **options,
    )
    estimator.fit(reference)
    return estimator, estimator.estimate(analysis).filter(period="analysis").to_df()


def analysis_chunks(transform: object) -> tuple[np.ndarray, np.ndarray]:
    """Eight chunks of production scores whose population shifts half-way (more risky rows)."""
    parts = [scored(4 * CHUNK, 1.2, 6.0, 11), scored(4 * CHUNK, 2.0, 4.0, 12)]
    p = np.concatenate([q for q, _ in parts])
    y = np.concatenate([t for _, t in parts])
    return transform(p), y  # type: ignore[operator]


def compare(result: pd.DataFrame, scores: np.ndarray, y: np.ndarray, calibration: object) -> None:
    assert len(result) == scores.size // CHUNK
    for i, row in enumerate(result.itertuples(index=False)):
        values = dict(zip(result.columns, row, strict=True))
        s, t = scores[i * CHUNK : (i + 1) * CHUNK], y[i * CHUNK : (i + 1) * CHUNK]
        ours = estimate_performance(s, calibration, n_boot=20)  # type: ignore[arg-type]
        assert ours.roc_auc == pytest.approx(values[("roc_auc", "value")], abs=1e-6)
        assert ours.pr_auc == pytest.approx(values[("average_precision", "value")], abs=1e-6)
        # the expected positive rate is the estimated share of actual positives, TP + FN
        expected_positives = (
            values[("true_positive", "value")] + values[("false_negative", "value")]
        )
        assert ours.expected_positive_rate == pytest.approx(expected_positives, abs=1e-6)
        # and the realised metrics, once outcomes are in, are the same functions
        assert roc_auc(t, s) == pytest.approx(values[("roc_auc", "realized")], abs=1e-12)
        assert average_precision(t, s) == pytest.approx(
            values[("average_precision", "realized")], abs=1e-12
        )


def test_a_miscalibrated_model_is_estimated_as_nannyml_does() -> None:
    p_ref, y_ref = scored(20_000, 1.2, 6.0, 10)
    scores, y = analysis_chunks(lambda p: p**3)  # same ranking, badly calibrated
    estimator, result = nannyml_cbpe(frame(p_ref**3, y_ref), frame(scores, y))
    assert estimator.needs_calibration, "NannyML calibrates these scores too"  # type: ignore[attr-defined]
    calibration = fit_calibration(p_ref**3, y_ref)
    compare(result, scores, y, calibration)
    # the shift is seen: the riskier half is estimated (and realised) differently
    estimated = result[("roc_auc", "value")]
    assert estimated.iloc[4:].max() < estimated.iloc[:4].min()


def test_calibrated_scores_are_estimated_as_nannyml_does() -> None:
    p_ref, y_ref = scored(20_000, 1.2, 6.0, 20)
    scores, y = analysis_chunks(lambda p: p)
    # NannyML's no-op calibrator is our "no calibration": the scores are taken as probabilities
    _, result = nannyml_cbpe(
        frame(p_ref, y_ref), frame(scores, y), calibrator=nml.calibration.NoopCalibrator()
    )
    compare(result, scores, y, None)
