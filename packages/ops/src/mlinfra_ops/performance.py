"""Delayed-label monitoring: how a binary model does in production, before and after outcomes.

Churn outcomes arrive weeks after a prediction. Until they do, performance is *estimated* from
the predicted probabilities alone, by confidence-based performance estimation (CBPE, the method
NannyML implements): if the probabilities are calibrated, a prediction ``p`` is a positive with
probability ``p``, so the expected confusion matrix at every threshold, and hence the expected
ROC curve and its AUC (and the expected precision-recall curve and its average precision),
follow from the scores. Calibration is checked (and corrected) on a labelled reference set: an
isotonic regression of the outcomes on the scores, the calibrator NannyML's CBPE uses, so the
two estimates agree (``packages/ops/tests/test_nannyml.py``). The interval is that of the AUC
one would realise on these rows if outcomes were drawn from the calibrated probabilities (a
parametric bootstrap; NannyML gives +-3 standard errors estimated from reference chunks
instead), so it covers the sampling noise of the cohort's eventual realised value.

Once a prediction's horizon has passed (30 days for churn), its outcome is known: each weekly
cohort then also gets its realised ROC-AUC, PR-AUC and observed vs expected positive rate, side
by side with the estimate made before, and the offline AUC of the serving version.

Plain NumPy and Polars (no scikit-learn here); the tests check the metrics against
scikit-learn and the estimate against outcomes drawn from known probabilities.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from mlinfra_ops._atomic import write_text_atomic
from mlinfra_ops.drift import DriftReport

__all__ = [
    "Calibration",
    "CohortPerformance",
    "PerformanceEstimate",
    "average_precision",
    "cohort_performance",
    "estimate_performance",
    "fit_calibration",
    "label_predictions",
    "reference_calibration",
    "render_performance_report",
    "roc_auc",
    "write_text_atomic",
]


def _ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    _, first, counts = np.unique(sorted_values, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(average, counts)
    return ranks


def _check_labels(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool)
    s = np.asarray(s, dtype=np.float64)
    if y.shape != s.shape or y.ndim != 1:
        raise ValueError(f"labels and scores must be 1-D of one length, got {y.shape}, {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores have NaN or infinite values; expected finite scores")
    return y, s


def roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC (Mann-Whitney U with tied scores counted half); NaN with a single class."""
    y, s = _check_labels(y, s)
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = _ranks(s)
    u = ranks[y].sum() - positives * (positives + 1) / 2.0
    return float(u / (positives * negatives))


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """PR-AUC as average precision (scikit-learn's definition); NaN without positives."""
    y, s = _check_labels(y, s)
    if not y.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    y_sorted, s_sorted = y[order], s[order]
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(y_sorted)[last_of_tie]
    seen = np.arange(1, y.size + 1)[last_of_tie]
    precision = tp / seen
    recall = tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Calibration:
    """A non-decreasing map from score to probability, fitted on labelled reference rows:
    linear between its points, constant beyond the first and last (scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")``, the calibrator NannyML's CBPE uses)."""

    scores: list[float]  # increasing score thresholds
    probabilities: list[float]  # calibrated probability at each threshold (non-decreasing)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.scores, self.probabilities)


def fit_calibration(scores: np.ndarray, labels: np.ndarray) -> Calibration:
    """Isotonic regression of the labels on the scores (pool adjacent violators, tied scores
    pooled first), so calibration keeps the ranking of scores. Only the points where the fitted
    step function changes are kept; :meth:`Calibration.apply` interpolates between them."""
    y, s = _check_labels(labels, scores)
    if y.size < 2 or y.all() or not y.any():
        raise ValueError(
            f"the calibration reference has {y.size} rows with {int(y.sum())} positives; "
            "expected labelled rows of both outcomes"
        )
    order = np.argsort(s, kind="mergesort")
    x, first, counts = np.unique(s[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(y[order].astype(np.float64), first)
    # pool adjacent violators: blocks of [sum of labels, rows, unique scores]
    blocks: list[list[float]] = []
    for total, count in zip(sums.tolist(), counts.tolist(), strict=True):
        blocks.append([total, count, 1.0])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] >= blocks[-1][0] * blocks[-2][1]:
            total2, count2, width2 = blocks.pop()
            blocks[-1] = [blocks[-1][0] + total2, blocks[-1][1] + count2, blocks[-1][2] + width2]
    fitted = np.repeat([t / c for t, c, _ in blocks], [int(w) for _, _, w in blocks])
    # keep each constant run's first and last point (what linear interpolation needs)
    keep = np.ones(x.size, dtype=bool)
    keep[1:-1] = (fitted[:-2] != fitted[1:-1]) | (fitted[1:-1] != fitted[2:])
    return Calibration(scores=x[keep].tolist(), probabilities=fitted[keep].tolist())


def needs_calibration(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    splits: int = 10,
    test_share: float = 0.1,
    bins: int = 10,
    seed: int = 42,
) -> bool:
    """Whether an isotonic calibration fitted on these labelled rows improves held-out
    calibration: NannyML's rule before CBPE. Over ``splits`` stratified random splits, fit on
    the rest and calibrate each held-out ``test_share``; pool the held-out rows and compare the
    expected calibration error (``bins`` equal-count bins) before and after.
    """
    y, s = _check_labels(labels, scores)
    if y.all() or not y.any() or roc_auc(y, s) > 0.999:
        return False
    if not 0 < test_share < 1 or splits < 1 or bins < 2:
        raise ValueError(
            f"needs_calibration: expected splits >= 1, 0 < test_share < 1 and bins >= 2, got "
            f"{splits}, {test_share}, {bins}"
        )
    rng = np.random.default_rng(seed)
    classes = [np.flatnonzero(y), np.flatnonzero(~y)]
    held_y, raw, calibrated = [], [], []
    for _ in range(splits):
        test = np.concatenate(
            [rng.permutation(c)[: max(1, round(test_share * c.size))] for c in classes]
        )
        train = np.ones(y.size, dtype=bool)
        train[test] = False
        if y[train].all() or not y[train].any():
            return False  # too few rows of one outcome to calibrate on at all
        held_y.append(y[test])
        raw.append(s[test])
        calibrated.append(fit_calibration(s[train], y[train]).apply(s[test]))
    truth = np.concatenate(held_y).astype(np.float64)
    before = _expected_calibration_error(truth, np.concatenate(raw), bins)
    after = _expected_calibration_error(truth, np.concatenate(calibrated), bins)
    return bool(before > after)


def reference_calibration(scores: np.ndarray, labels: np.ndarray) -> Calibration | None:
    """The calibration CBPE should apply to a model's scores, from its labelled reference rows
    (NannyML's procedure): isotonic when :func:`needs_calibration` says it improves held-out
    calibration, else ``None`` (the scores are taken as calibrated)."""
    return fit_calibration(scores, labels) if needs_calibration(scores, labels) else None


def _expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int) -> float:
    """Mean |predicted - observed| over equal-count bins of the sorted predictions."""
    order = np.argsort(p, kind="mergesort")
    edges = np.linspace(0, p.size, min(bins, max(p.size // 2, 1)) + 1).astype(int)
    total = 0.0
    for left, right in itertools.pairwise(edges.tolist()):
        if right > left:
            chunk = order[left:right]
            total += (right - left) / p.size * abs(p[chunk].mean() - y[chunk].mean())
    return total


@dataclass(frozen=True)
class PerformanceEstimate:
    """CBPE estimate for one set of predictions."""

    n: int
    roc_auc: float
    roc_auc_low: float
    roc_auc_high: float
    pr_auc: float
    expected_positive_rate: float
    expected_brier: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def estimate_performance(
    scores: np.ndarray,
    calibration: Calibration | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> PerformanceEstimate:
    """Expected ROC-AUC (with a 95% interval), PR-AUC, positive rate and Brier score, without
    labels."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"scores must be a non-empty 1-D array, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores have NaN or infinite values; expected finite scores")
    p = calibration.apply(s) if calibration is not None else s
    return _estimate(s, p, n_boot=n_boot, seed=seed)


def _estimate(s: np.ndarray, p: np.ndarray, *, n_boot: int, seed: int) -> PerformanceEstimate:
    """CBPE of scores ``s`` whose calibrated probabilities are ``p``."""
    if (p < 0).any() or (p > 1).any():
        raise ValueError("scores are not probabilities in [0, 1]; pass a calibration")
    rng = np.random.default_rng(seed)
    draws = [roc_auc(rng.random(p.size) < p, s) for _ in range(n_boot)]
    finite = np.asarray([d for d in draws if np.isfinite(d)])
    low, high = np.percentile(finite, [2.5, 97.5]) if finite.size else (np.nan, np.nan)
    return PerformanceEstimate(
        n=int(s.size),
        roc_auc=_expected_auc_of_scores(s, p),
        roc_auc_low=float(low),
        roc_auc_high=float(high),
        pr_auc=_expected_average_precision(s, p),
        expected_positive_rate=float(p.mean()),
        expected_brier=float(np.mean(p * (1 - p))),
    )


def _expected_auc_of_scores(s: np.ndarray, p: np.ndarray) -> float:
    """AUC of the expected ROC curve: rows ranked by score, each positive with probability
    ``p`` (the expected true and false positives above every threshold)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, p_sorted = s[order], p[order]
    positives, negatives = p.sum(), (1 - p).sum()
    if positives <= 0 or negatives <= 0:
        return float("nan")
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tpr = np.r_[0.0, np.cumsum(p_sorted)[last_of_tie] / positives]
    fpr = np.r_[0.0, np.cumsum(1 - p_sorted)[last_of_tie] / negatives]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _expected_average_precision(s: np.ndarray, p: np.ndarray) -> float:
    """Average precision of the expected precision-recall curve (same ranking and expected
    counts as :func:`_expected_auc_of_scores`; tied scores are one threshold)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, p_sorted = s[order], p[order]
    positives = p.sum()
    if positives <= 0:
        return float("nan")
    last_of_tie = np.r_[np.diff(s_sorted) != 0, True]
    tp = np.cumsum(p_sorted)[last_of_tie]
    seen = np.arange(1, s.size + 1)[last_of_tie]
    return float(np.sum(np.diff(np.r_[0.0, tp / positives]) * tp / seen))


def label_predictions(
    predictions: pl.DataFrame,
    outcomes: pl.DataFrame,
    *,
    horizon: timedelta,
    data_end: datetime,
    entity: str = "customer_id",
    predicted_at: str = "predicted_at",
    outcome_at: str = "churned_at",
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Each prediction with ``matured`` (its horizon has passed by ``data_end``) and ``label``
    (an outcome within ``(predicted_at, predicted_at + horizon]``; null while not matured).

    Outcomes for entities never predicted are skipped and counted, not an error."""
    for frame, name, cols in (
        (predictions, "predictions", [entity, predicted_at]),
        (outcomes, "outcomes", [entity, outcome_at]),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lack column(s) {missing}; expected {cols}")
    known = predictions.select(entity).unique()
    unknown = outcomes.join(known, on=entity, how="anti").height
    first_outcome = (
        outcomes.join(known, on=entity, how="semi")
        .group_by(entity)
        .agg(pl.col(outcome_at).min().alias("_outcome_at"))
    )
    labelled = (
        predictions.join(first_outcome, on=entity, how="left")
        .with_columns(
            (pl.col(predicted_at) + horizon <= data_end).alias("matured"),
            (
                (pl.col("_outcome_at") > pl.col(predicted_at))
                & (pl.col("_outcome_at") <= pl.col(predicted_at) + horizon)
            )
            .fill_null(False)
            .alias("label"),
        )
        .with_columns(pl.when(pl.col("matured")).then(pl.col("label")).alias("label"))
        .drop("_outcome_at")
    )
    return labelled, {"outcomes_for_unknown_entities": unknown}


@dataclass(frozen=True)
class CohortPerformance:
    cohort: str  # week start (ISO date)
    n: int
    matured: bool
    estimated: PerformanceEstimate
    realized_roc_auc: float | None
    realized_pr_auc: float | None
    observed_positive_rate: float | None

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "estimated"}
        out |= {f"estimated_{k}": v for k, v in self.estimated.as_dict().items() if k != "n"}
        return out


def cohort_performance(
    labelled: pl.DataFrame,
    *,
    score: str = "score",
    predicted_at: str = "predicted_at",
    calibration: Calibration | Mapping[str, Calibration | None] | None = None,
    version: str = "version",
    every: str = "1w",
    n_boot: int = 200,
    seed: int = 0,
) -> list[CohortPerformance]:
    """Estimated performance for every cohort, realised performance for matured ones.

    ``calibration`` is one calibration for every row, or one per model version (the ``version``
    column; a version without one is taken as calibrated), since each version's scores have
    their own calibration."""
    if labelled.is_empty():
        raise ValueError("no predictions to evaluate; expected rows of the prediction log")
    if isinstance(calibration, Mapping) and version not in labelled.columns:
        raise ValueError(
            f"per-version calibrations need the column {version!r}; the predictions have "
            f"{labelled.columns}"
        )
    frame = labelled.with_columns(pl.col(predicted_at).dt.truncate(every).alias("_cohort"))
    out = []
    for (cohort,), rows in sorted(frame.group_by("_cohort"), key=lambda kv: kv[0][0]):
        scores = rows[score].to_numpy().astype(np.float64)
        if isinstance(calibration, Mapping):
            probabilities = scores.copy()
            versions = rows[version].cast(pl.String).to_numpy()
            for name, fitted in calibration.items():
                if fitted is not None:
                    mask = versions == name
                    probabilities[mask] = fitted.apply(scores[mask])
        else:
            probabilities = calibration.apply(scores) if calibration is not None else scores
        matured = bool(rows["matured"].all())
        realized_auc = realized_ap = observed = None
        if matured:
            y = rows["label"].to_numpy().astype(bool)
            realized_auc, realized_ap = roc_auc(y, scores), average_precision(y, scores)
            observed = float(y.mean())
        out.append(
            CohortPerformance(
                cohort=cohort.date().isoformat(),
                n=rows.height,
                matured=matured,
                estimated=_estimate(scores, probabilities, n_boot=n_boot, seed=seed),
                realized_roc_auc=realized_auc,
                realized_pr_auc=realized_ap,
                observed_positive_rate=observed,
            )
        )
    return out


def render_performance_report(
    *,
    title: str,
    cohorts: Sequence[CohortPerformance],
    offline_roc_auc: Mapping[str, float],
    drift: DriftReport | None,
    facts: Mapping[str, str],
    charts: Sequence[str] = (),
) -> str:
    """A self-contained HTML page: facts, the cohort table (estimated vs realised), drift per
    feature. ``charts`` are inline SVG strings drawn by the caller."""

    def number(value: float | None) -> str:
        return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"

    rows = "".join(
        "<tr>"
        f"<td>{c.cohort}</td><td>{c.n}</td><td>{'yes' if c.matured else 'not yet'}</td>"
        f"<td>{number(c.estimated.roc_auc)} [{number(c.estimated.roc_auc_low)}, "
        f"{number(c.estimated.roc_auc_high)}]</td>"
        f"<td>{number(c.realized_roc_auc)}</td><td>{number(c.estimated.pr_auc)}</td>"
        f"<td>{number(c.realized_pr_auc)}</td>"
        f"<td>{number(c.estimated.expected_positive_rate)}</td>"
        f"<td>{number(c.observed_positive_rate)}</td>"
        "</tr>"
        for c in cohorts
    )
    offline = ", ".join(f"v{v}: {auc:.4f}" for v, auc in offline_roc_auc.items()) or "-"
    drift_html = ""
    if drift is not None:
        drift_rows = "".join(
            f"<tr><td>{html.escape(f.feature)}</td><td>{f.psi:.4f}</td>"
            f"<td>{'DRIFT' if f.drifted else 'ok'}</td></tr>"
            for f in drift.features
        )
        drift_html = (
            f"<h2>Drift against the training reference (PSI, flag at {drift.threshold})</h2>"
            f"<p>dataset drift: <b>{'yes' if drift.dataset_drift else 'no'}</b></p>"
            f"<table><tr><th>feature</th><th>PSI</th><th></th></tr>{drift_rows}</table>"
        )
    fact_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in facts.items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{fact_rows}<tr><th>offline ROC-AUC of the served versions</th><td>{offline}</td></tr></table>
<h2>Weekly cohorts: estimated before outcomes (CBPE, 95% interval) and realised after</h2>
<table><tr><th>cohort</th><th>predictions</th><th>outcomes matured</th>
<th>estimated ROC-AUC</th><th>realised ROC-AUC</th>
<th>estimated PR-AUC</th><th>realised PR-AUC</th>
<th>expected positive rate</th><th>observed positive rate</th></tr>{rows}</table>
{"".join(charts)}
{drift_html}
</body></html>
"""
