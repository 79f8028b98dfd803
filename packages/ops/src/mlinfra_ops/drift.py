"""Feature drift: population stability index (PSI) per feature against the training reference.

Numeric features are binned at the reference's deciles (open-ended first and last bins);
categorical ones (strings, booleans) by category, with unseen categories in one extra bin. With
``r`` and ``c`` the reference and current shares of a bin (floored at ``1e-4`` so empty bins
stay finite)::

    PSI = sum((c - r) * ln(c / r))

The usual reading: below 0.1 stable, 0.1-0.25 moderate shift, above 0.25 a significant one. A
feature is flagged at ``threshold`` (default 0.2); the dataset drifts when at least
``dataset_share`` of its features (default one in four) are flagged. Nulls are a bin of their
own, so a feature that starts arriving empty drifts too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

__all__ = ["DriftReport", "FeatureDrift", "detect_drift", "population_stability_index"]

_FLOOR = 1e-4


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    shares = counts / total if total else np.zeros_like(counts, dtype=np.float64)
    return np.maximum(shares, _FLOOR)


def population_stability_index(reference: pl.Series, current: pl.Series, bins: int = 10) -> float:
    """PSI of ``current`` against ``reference`` (see the module docstring)."""
    if reference.len() == 0 or current.len() == 0:
        raise ValueError(
            f"feature {reference.name!r}: reference has {reference.len()} rows and current "
            f"{current.len()}; expected rows in both"
        )
    if reference.dtype.is_numeric() and reference.dtype != pl.Boolean:
        ref = reference.drop_nulls().cast(pl.Float64).to_numpy()
        cur = current.drop_nulls().cast(pl.Float64).to_numpy()
        edges: np.ndarray = (
            np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
            if ref.size
            else np.empty(0)
        )
        ref_counts = np.bincount(
            np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1
        )
        cur_counts = np.bincount(
            np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1
        )
    else:
        ref_values = reference.drop_nulls().cast(pl.String)
        categories = ref_values.unique().sort().to_list()
        index = {c: i for i, c in enumerate(categories)}
        ref_counts = np.bincount(
            [index[v] for v in ref_values.to_list()], minlength=len(categories) + 1
        )
        cur_counts = np.bincount(
            [index.get(v, len(categories)) for v in current.drop_nulls().cast(pl.String).to_list()],
            minlength=len(categories) + 1,
        )
    ref_counts = np.r_[ref_counts, reference.null_count()].astype(np.float64)
    cur_counts = np.r_[cur_counts, current.null_count()].astype(np.float64)
    r, c = _shares(ref_counts), _shares(cur_counts)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    drifted: bool


@dataclass(frozen=True)
class DriftReport:
    features: list[FeatureDrift]
    threshold: float
    dataset_share: float

    @property
    def drifted_features(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def dataset_drift(self) -> bool:
        return len(self.drifted_features) >= self.dataset_share * len(self.features)


def detect_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    features: Sequence[str],
    *,
    threshold: float = 0.2,
    dataset_share: float = 0.25,
    bins: int = 10,
) -> DriftReport:
    """PSI of every feature, its flag, and the dataset-level flag."""
    if not features:
        raise ValueError("features is empty; expected the model's feature names")
    if not 0 < dataset_share <= 1:
        raise ValueError(f"dataset_share must be in (0, 1], got {dataset_share}")
    for frame, name in ((reference, "reference"), (current, "current")):
        missing = [f for f in features if f not in frame.columns]
        if missing:
            raise ValueError(f"the {name} frame lacks feature column(s) {missing}")
    drifts = []
    for feature in features:
        psi = population_stability_index(reference[feature], current[feature], bins)
        drifts.append(FeatureDrift(feature, psi, psi >= threshold))
    return DriftReport(drifts, threshold, dataset_share)
