"""Shared test data of the ops tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

CustomerFeatures = Callable[[np.random.Generator, int, float, bool], pl.DataFrame]


def _customer_features(
    rng: np.random.Generator, n: int, shift: float, new_plan: bool
) -> pl.DataFrame:
    """Churn-like features: ``shift`` raises the support tickets, ``new_plan`` turns a third of
    the customers to a plan the reference never saw."""
    plans = rng.choice(["basic", "pro", "enterprise"], n, p=[0.5, 0.3, 0.2])
    if new_plan:
        plans[: n // 3] = "trial"
    return pl.DataFrame(
        {
            "logins_30d": rng.poisson(12, n),
            "monthly_spend": rng.gamma(2, 200, n),
            "support_tickets_30d": rng.poisson(1.0 + shift, n),
            "plan": plans,
        }
    )


@pytest.fixture(scope="session")
def customer_features() -> CustomerFeatures:
    return _customer_features
