"""Our PSI drift against Evidently's PSI test on the same data.

Evidently is not a dependency (it brings a second web framework, NLTK and usage telemetry for
one formula), so this runs where it is installed: the ops member's isolated CI run adds
``--with evidently``. Elsewhere the module is skipped.

Both compute ``sum((c - r) * ln(c / r))`` over bins with empty bins floored at ``1e-4``.
Categorical features are binned the same way (one bin per category, a category the reference
lacks in a bin of its own), so the values agree. Numeric binning differs on purpose: Evidently
takes equal-width (Sturges) bins over reference and current together, or one bin per value when
the reference has at most 20 distinct values; we take the reference's deciles, fixed by the
training data, and a bin for nulls. So for numeric features the verdicts are compared, not the
values.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("DO_NOT_TRACK", "1")  # Evidently's usage telemetry, read at import
os.environ.setdefault("EVIDENTLY_DISABLE_TELEMETRY", "1")

import numpy as np
import polars as pl
import pytest

from mlinfra_ops import detect_drift, population_stability_index

pytest.importorskip("evidently")
pd = pytest.importorskip("pandas")
from evidently.legacy.calculations.stattests.psi import _psi  # noqa: E402
from evidently.legacy.core import ColumnType  # noqa: E402

THRESHOLD = 0.2


def evidently_psi(reference: pl.Series, current: pl.Series) -> float:
    kind = ColumnType.Numerical if reference.dtype.is_numeric() else ColumnType.Categorical
    value, _ = _psi(reference.to_pandas(), current.to_pandas(), kind, THRESHOLD)
    return float(value)


@pytest.mark.parametrize(("shift", "new_plan"), [(0.0, False), (2.0, False), (0.0, True)])
def test_same_features_drift_as_in_evidently(
    customer_features: Any, shift: float, new_plan: bool
) -> None:
    rng = np.random.default_rng(5)
    reference = customer_features(rng, 5000, 0.0, False)
    current = customer_features(rng, 5000, shift, new_plan)
    ours = detect_drift(reference, current, reference.columns, threshold=THRESHOLD)
    theirs = sorted(
        c for c in reference.columns if evidently_psi(reference[c], current[c]) >= THRESHOLD
    )
    assert ours.drifted_features == theirs
    expected = (["support_tickets_30d"] if shift else []) + (["plan"] if new_plan else [])
    assert sorted(ours.drifted_features) == sorted(expected)


@pytest.mark.parametrize("new_plan", [False, True])
def test_categorical_psi_equals_evidentlys(customer_features: Any, new_plan: bool) -> None:
    rng = np.random.default_rng(6)
    reference = customer_features(rng, 5000, 0.0, False)["plan"]
    current = customer_features(rng, 5000, 0.0, new_plan)["plan"]
    assert population_stability_index(reference, current) == pytest.approx(
        evidently_psi(reference, current), rel=1e-9, abs=1e-12
    )
