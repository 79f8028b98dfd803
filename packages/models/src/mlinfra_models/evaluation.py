"""Evaluation shared by every model: metrics with bootstrap intervals and paired comparisons.

Point estimates come from scikit-learn; intervals are percentile bootstraps over rows (seeded,
``n_boot`` resamples). Comparisons between two models are *paired*: both are scored on the same
rows and each resample draws the same rows for both, so the interval of the difference is much
tighter than the two separate intervals suggest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

__all__ = [
    "RANKING_METRICS",
    "BinaryEvaluation",
    "Comparison",
    "Estimate",
    "compare",
    "evaluate_binary",
    "lift_top_decile",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


def lift_top_decile(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Positive rate among the 10% highest scores divided by the overall positive rate."""
    n_top = max(1, int(np.ceil(0.1 * y_true.size)))
    top = np.argsort(-y_score, kind="stable")[:n_top]
    return float(y_true[top].mean() / y_true.mean())


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    return float(log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), labels=[0, 1]))


METRICS: dict[str, Metric] = {
    "roc_auc": lambda y, p: float(roc_auc_score(y, p)),
    "pr_auc": lambda y, p: float(average_precision_score(y, p)),
    "log_loss": _log_loss,
    "brier": lambda y, p: float(brier_score_loss(y, p)),
    "lift_top_decile": lift_top_decile,
}
#: Metrics where lower is better.
#: Metrics that need only a ranking of the scores (any real-valued score, not probabilities).
RANKING_METRICS: dict[str, Metric] = {k: METRICS[k] for k in ("roc_auc", "pr_auc")}

LOWER_IS_BETTER = frozenset({"log_loss", "brier"})


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


@dataclass(frozen=True)
class BinaryEvaluation:
    """Metrics of one model on one evaluation set, with 95% bootstrap intervals and curves."""

    n: int
    positives: int
    metrics: dict[str, Estimate]
    roc: dict[str, list[float]] = field(repr=False)
    calibration: dict[str, list[float]] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """``{prefix+metric: value, prefix+metric_low: ..., prefix+metric_high: ...}``."""
        out = {}
        for name, est in self.metrics.items():
            out[f"{prefix}{name}"] = est.value
            out[f"{prefix}{name}_low"] = est.low
            out[f"{prefix}{name}_high"] = est.high
        return out


def _check(y_true: np.ndarray, y_score: np.ndarray, name: str = "y_score") -> None:
    if y_true.ndim != 1 or y_true.shape != y_score.shape:
        raise ValueError(
            f"labels and {name} must be 1-D of the same length, got {y_true.shape} and "
            f"{y_score.shape}"
        )
    if y_true.size == 0:
        raise ValueError("the evaluation set is empty; expected labelled rows")
    classes = set(np.unique(y_true).tolist())
    if not classes <= {0, 1}:
        raise ValueError(f"labels must be 0/1, got values {sorted(classes)[:5]}")
    if len(classes) < 2:
        raise ValueError(
            f"the evaluation set has a single class ({classes.pop()}); expected both 0 and 1"
        )


def _resamples(y_true: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    while len(out) < n_boot:
        idx = rng.integers(0, y_true.size, y_true.size)
        if 0 < y_true[idx].sum() < idx.size:  # both classes, or AUC is undefined
            out.append(idx)
    return out


def evaluate_binary(
    y_true: np.ndarray,
    y_score: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    metrics: Mapping[str, Metric] | None = None,
) -> BinaryEvaluation:
    """ROC-AUC, PR-AUC, log loss, Brier, top-decile lift with intervals; ROC and reliability.

    ``metrics`` picks others (e.g. :data:`RANKING_METRICS` for scores that are not
    probabilities, such as anomaly scores); the reliability curve is drawn only when the scores
    are probabilities in [0, 1].
    """
    y_true = np.asarray(y_true).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    _check(y_true, y_score)
    samples = _resamples(y_true, n_boot, seed)
    estimates = {}
    for name, fn in dict(metrics or METRICS).items():
        boot = np.array([fn(y_true[i], y_score[i]) for i in samples])
        low, high = np.percentile(boot, [2.5, 97.5])
        estimates[name] = Estimate(fn(y_true, y_score), float(low), float(high))
    fpr, tpr, _ = roc_curve(y_true, y_score)
    keep = np.unique(np.linspace(0, fpr.size - 1, min(fpr.size, 200)).astype(int))
    calibration: dict[str, list[float]] = {}
    if y_score.min() >= 0 and y_score.max() <= 1:
        frac_pos, mean_pred = calibration_curve(y_true, y_score, n_bins=10, strategy="quantile")
        calibration = {
            "mean_predicted": mean_pred.tolist(),
            "fraction_positive": frac_pos.tolist(),
        }
    return BinaryEvaluation(
        n=int(y_true.size),
        positives=int(y_true.sum()),
        metrics=estimates,
        roc={"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
        calibration=calibration,
    )


@dataclass(frozen=True)
class Comparison:
    """``candidate - reference`` per metric on the same rows, with paired bootstrap intervals."""

    deltas: dict[str, Estimate]

    def worse_by(self, metric: str) -> float:
        """How much worse the candidate is on ``metric`` (negative when it is better)."""
        delta = self.deltas[metric].value
        return delta if metric in LOWER_IS_BETTER else -delta


def compare(
    y_true: np.ndarray,
    candidate: np.ndarray,
    reference: np.ndarray,
    *,
    metrics: Mapping[str, Metric] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of two score vectors on the same labelled rows."""
    y_true = np.asarray(y_true).astype(np.int64)
    candidate = np.asarray(candidate, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    _check(y_true, candidate, "candidate")
    _check(y_true, reference, "reference")
    chosen = dict(metrics or METRICS)
    samples = _resamples(y_true, n_boot, seed)
    deltas = {}
    for name, fn in chosen.items():
        boot = np.array(
            [fn(y_true[i], candidate[i]) - fn(y_true[i], reference[i]) for i in samples]
        )
        low, high = np.percentile(boot, [2.5, 97.5])
        deltas[name] = Estimate(
            fn(y_true, candidate) - fn(y_true, reference), float(low), float(high)
        )
    return Comparison(deltas)
