"""Feature tables are computed as of their timestamp, from raw rows at or before it only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlinfra_features import Warehouse
from mlinfra_features.pipelines import snapshot_grid


def brute_force(warehouse: Warehouse, customer_id: int, at: datetime) -> dict[str, float | None]:
    """Recompute one customer's churn features from raw rows at or before ``at``.

    ``days_since_last_login`` is None (null) before the customer's first login.
    """
    logins = (
        warehouse.scan("logins")
        .filter((pl.col("customer_id") == customer_id) & (pl.col("timestamp") <= at))
        .collect()["timestamp"]
    )
    tickets = (
        warehouse.scan("support_tickets")
        .filter((pl.col("customer_id") == customer_id) & (pl.col("opened_at") <= at))
        .collect()["opened_at"]
    )
    weekly = np.array(
        [
            ((logins > at - timedelta(weeks=k)) & (logins <= at - timedelta(weeks=k - 1))).sum()
            for k in range(8, 0, -1)
        ],
        dtype=float,
    )
    slope = np.polyfit(np.arange(8), weekly, 1)[0]
    last = logins.max()
    return {
        "logins_30d": float((logins > at - timedelta(days=30)).sum()),
        "days_since_last_login": (at - last).total_seconds() / 86400 if last else None,
        "login_trend_8w": slope / (weekly.mean() + 0.5),
        "support_tickets_30d": float((tickets > at - timedelta(days=30)).sum()),
        "support_tickets_90d": float((tickets > at - timedelta(days=90)).sum()),
    }


def assert_match_brute_force(
    warehouse: Warehouse, logins: pl.DataFrame, support: pl.DataFrame, n: int
) -> None:
    """``n`` sampled rows of the login and support views, plus every row before a customer's
    first login, equal the brute-force computation."""
    keys = ["customer_id", "event_timestamp"]
    joined = logins.join(support, on=keys).sort(keys)  # sorted: the same sample every run
    no_login_yet = joined.filter(pl.col("days_since_last_login").is_null()).head(5)
    assert no_login_yet.height > 0
    for row in pl.concat([joined.sample(n, seed=3), no_login_yet]).iter_rows(named=True):
        assert_row_is_as_of(warehouse, row)


def assert_row_is_as_of(warehouse: Warehouse, row: dict[str, Any]) -> None:
    expected = brute_force(warehouse, row["customer_id"], row["event_timestamp"])
    for name, value in expected.items():
        if value is None:
            assert row[name] is None, (name, row)
        else:
            assert row[name] == pytest.approx(value, abs=1e-9), (name, row)


def test_churn_features_match_a_brute_force_as_of_computation(
    warehouse: Warehouse, tables: dict[str, pl.DataFrame]
) -> None:
    assert_match_brute_force(warehouse, tables["customer_logins"], tables["customer_support"], 40)


@pytest.mark.parametrize("cadence_days", [1, 5])
def test_windows_are_exact_on_any_cadence_and_end(warehouse: Warehouse, cadence_days: int) -> None:
    """Windows that are not whole multiples of the snapshot cadence (7 days on a 5-day grid)
    and an ``end`` before the newest data and off the day boundary stay exactly as of."""
    from mlinfra_features.pipelines import churn_features

    end = warehouse.data_end() - timedelta(days=9, hours=5, microseconds=3)
    views = churn_features(warehouse, cadence=timedelta(days=cadence_days), end=end)
    logins, support = views["customer_logins"].collect(), views["customer_support"].collect()
    assert logins["event_timestamp"].max() == end
    assert_match_brute_force(warehouse, logins, support, 25)


def test_windows_are_right_closed_at_their_edges(tmp_path: Path) -> None:
    """Events exactly at a window's start are out, a microsecond later in, at ``t`` in."""
    from mlinfra_features import SCHEMAS
    from mlinfra_features.pipelines import churn_features
    from mlinfra_features.sources import write_parquet_atomic

    end = datetime(2026, 3, 1, 6, tzinfo=UTC)
    us = timedelta(microseconds=1)
    day = timedelta(days=1)
    edges = [
        end - k * day + shift for k in (0, 7, 28, 30, 56, 60, 90) for shift in (-us, 0 * us, us)
    ]
    logins = [end - 150 * day, *edges]
    tables = {
        "customers": {
            "customer_id": [1, 2],
            "signup_at": [end - 200 * day, end - 40 * day],
            "plan": ["pro", "basic"],
            "seats": [3, 1],
            "monthly_spend": [75.0, 12.0],
            "region": ["eu", "na"],
        },
        "logins": {"customer_id": [1] * len(logins), "timestamp": logins},
        "support_tickets": {
            "customer_id": [2] * len(edges),
            "opened_at": edges,
            "severity": ["low"] * len(edges),
            "topic": ["bug"] * len(edges),
        },
        "churn_events": {"customer_id": [2], "churned_at": [end - 7 * day + us]},
    }
    warehouse = Warehouse(tmp_path)
    for name, columns in tables.items():
        write_parquet_atomic(pl.DataFrame(columns, schema=SCHEMAS[name]), warehouse.path(name))
    (tmp_path / "_manifest.json").write_text(json.dumps({"data_end": end.isoformat()}))

    views = {name: view.collect() for name, view in churn_features(warehouse).items()}
    keys = ["customer_id", "event_timestamp"]
    rows = views["customer_logins"].join(views["customer_support"], on=keys).sort(keys)
    assert rows.filter(pl.col("customer_id") == 2)["event_timestamp"].max() == end - 7 * day
    newest = rows.filter((pl.col("customer_id") == 1) & (pl.col("event_timestamp") == end))
    # (t - 30d, t]: 30 days before plus a microsecond, all three at 28 and 7, and two at t
    assert newest["logins_30d"].item() == 1 + 3 + 3 + 2
    for row in rows.iter_rows(named=True):
        assert_row_is_as_of(warehouse, row)


def test_population_is_signed_up_and_not_churned(
    warehouse: Warehouse, tables: dict[str, pl.DataFrame]
) -> None:
    profile = tables["customer_profile"].join(
        warehouse.scan("customers").collect(), on="customer_id", suffix="_raw"
    )
    assert (profile["signup_at"] <= profile["event_timestamp"]).all()
    assert (profile["account_age_days"] >= 0).all()
    churned = profile.join(warehouse.scan("churn_events").collect(), on="customer_id")
    assert (churned["churned_at"] > churned["event_timestamp"]).all()


def test_future_raw_rows_do_not_change_past_features(
    warehouse: Warehouse, tables: dict[str, pl.DataFrame], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Add a burst of tickets one day after a snapshot: that snapshot's features stay the same."""
    from mlinfra_features.pipelines import churn_features
    from mlinfra_features.sources import write_parquet_atomic

    copy = Warehouse(tmp_path_factory.mktemp("future"))
    for table in ("customers", "logins", "support_tickets", "churn_events"):
        write_parquet_atomic(warehouse.scan(table).collect(), copy.path(table))
    (copy.root / "_manifest.json").write_text((warehouse.root / "_manifest.json").read_text())
    support = tables["customer_support"]
    snapshot = sorted(support["event_timestamp"].unique())[-3]
    customer = support.filter(pl.col("event_timestamp") == snapshot)["customer_id"][0]
    burst = pl.DataFrame(
        {
            "customer_id": [customer] * 5,
            "opened_at": [snapshot + timedelta(days=1)] * 5,
            "severity": ["high"] * 5,
            "topic": ["billing"] * 5,
        },
        schema=warehouse.scan("support_tickets").collect_schema(),
    )
    write_parquet_atomic(
        pl.concat([warehouse.scan("support_tickets").collect(), burst]),
        copy.path("support_tickets"),
    )
    after = churn_features(copy)["customer_support"].collect()
    key = (pl.col("customer_id") == customer) & (pl.col("event_timestamp") == snapshot)
    assert after.filter(key).equals(support.filter(key))
    next_key = (pl.col("customer_id") == customer) & (
        pl.col("event_timestamp") == snapshot + timedelta(days=7)
    )
    before_next = support.filter(next_key)["support_tickets_30d"].item()
    assert after.filter(next_key)["support_tickets_30d"].item() == before_next + 5


def test_anomaly_z_scores_flag_injected_spikes(
    warehouse: Warehouse, tables: dict[str, pl.DataFrame]
) -> None:
    daily = tables["account_activity_daily"].with_columns(
        day=(pl.col("event_timestamp") - pl.duration(days=1)).dt.date()
    )
    truth = warehouse.scan("anomaly_truth").filter(pl.col("kind") == "spike").collect()
    spikes = daily.join(truth, on=["customer_id", "day"])
    normal = daily.join(truth, on=["customer_id", "day"], how="anti")
    assert spikes["api_calls_z"].median() > 5  # type: ignore[operator]
    assert abs(normal["api_calls_z"].median()) < 0.5  # type: ignore[arg-type]


def test_snapshot_grid_rejects_an_inverted_window() -> None:
    end = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="precedes its start"):
        snapshot_grid(end, end + timedelta(days=1), timedelta(days=7))
    assert snapshot_grid(end, end - timedelta(days=14), timedelta(days=7)).height == 3


def test_churn_views_come_out_in_the_same_order_every_run(warehouse: Warehouse) -> None:
    from mlinfra_features.pipelines import churn_features

    first, second = (pl.collect_all(list(churn_features(warehouse).values())) for _ in range(2))
    for one, other in zip(first, second, strict=True):
        assert one.equals(other)
        assert one.select(pl.col("customer_id").is_sorted()).item()  # as the customers table
