from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlinfra_models import CHURN_LABEL, ChurnSettings, RegistrySettings

SERVICES = {
    "churn_v1": ["plan", "seats", "monthly_spend", "logins_30d", "days_since_last_login"],
    "churn_v2": [
        "plan",
        "seats",
        "monthly_spend",
        "logins_30d",
        "days_since_last_login",
        "account_age_days",
        "login_trend_8w",
        "support_tickets_30d",
    ],
}


def synthetic_rows(n_customers: int = 400, n_dates: int = 16, seed: int = 0) -> pl.DataFrame:
    """Labelled weekly snapshots whose churn risk follows a known logistic model."""
    rng = np.random.default_rng(seed)
    end = datetime(2026, 11, 1, tzinfo=UTC)
    dates = [end - timedelta(weeks=k) for k in range(n_dates)][::-1]
    n = n_customers * n_dates
    trend = rng.normal(0, 0.15, n)
    tickets = rng.poisson(0.4, n)
    age = rng.gamma(1.2, 300, n)
    logins = rng.poisson(8 * np.exp(2 * np.minimum(trend, 0)), n)
    logit = -3.2 - 8 * trend + 0.6 * tickets - 0.002 * age - 0.08 * logins
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pl.DataFrame(
        {
            "customer_id": np.tile(np.arange(1, n_customers + 1), n_dates),
            "event_timestamp": np.repeat(np.array(dates, dtype="datetime64[us]"), n_customers),
            "plan": rng.choice(["basic", "pro", "enterprise"], n),
            "seats": rng.integers(1, 50, n),
            "monthly_spend": rng.gamma(2, 200, n),
            "logins_30d": logins,
            "days_since_last_login": rng.exponential(3, n),
            "account_age_days": age.astype(np.int64),
            "login_trend_8w": trend,
            "support_tickets_30d": tickets,
            CHURN_LABEL: label,
        }
    ).with_columns(pl.col("event_timestamp").dt.replace_time_zone("UTC"))


class FrameFeatureSource:
    """A feature source over an in-memory table (what Feast provides in production)."""

    def __init__(self, table: pl.DataFrame) -> None:
        self.table = table
        self.calls: list[str] = []

    def __call__(self, service: str, rows: pl.DataFrame) -> pl.DataFrame:
        if service not in SERVICES:
            raise LookupError(f"unknown feature service {service!r}")
        self.calls.append(service)
        keys = ["customer_id", "event_timestamp"]
        features = self.table.select(*keys, *SERVICES[service])
        return rows.join(features, on=keys, how="left")


@pytest.fixture(scope="session")
def rows() -> pl.DataFrame:
    return synthetic_rows()


@pytest.fixture
def registry(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(home=tmp_path / "home")


@pytest.fixture
def fast_settings() -> ChurnSettings:
    return ChurnSettings(
        iterations=120, early_stopping_rounds=30, thread_count=2, bootstrap_resamples=30
    )


@pytest.fixture(scope="session")
def frame_source() -> type[FrameFeatureSource]:
    return FrameFeatureSource
