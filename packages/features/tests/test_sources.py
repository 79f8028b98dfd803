"""Data tests of the demo warehouse: determinism, schema, the hidden process, bad sources."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from mlinfra_features import SCHEMAS, DemoWarehouseSettings, SourceError, Warehouse
from mlinfra_features.sources import demo_tables, write_parquet_atomic


def test_same_seed_and_as_of_give_identical_tables(as_of: datetime) -> None:
    settings = DemoWarehouseSettings(n_customers=300, as_of=as_of)
    first, second = demo_tables(settings), demo_tables(settings)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].equals(second[name]), name
    other_seed = demo_tables(DemoWarehouseSettings(n_customers=300, as_of=as_of, seed=8))
    assert not first["logins"].equals(other_seed["logins"])


def test_every_table_has_its_schema_and_ends_at_as_of(
    warehouse: Warehouse, as_of: datetime
) -> None:
    for table, schema in SCHEMAS.items():
        frame = warehouse.scan(table).collect()
        assert dict(frame.schema) == schema, table
    assert warehouse.data_end() == as_of
    assert warehouse.scan("logins").select(pl.col("timestamp").max()).collect().item() <= as_of
    newest = warehouse.scan("logins").select(pl.col("timestamp").max()).collect().item()
    assert as_of - newest < timedelta(days=1), "freshly generated data must be fresh"
    manifest = warehouse.manifest()
    assert manifest["rows"]["customers"] == 1500  # type: ignore[index]


def test_no_logins_after_churn_or_before_signup(warehouse: Warehouse) -> None:
    logins = warehouse.scan("logins").join(warehouse.scan("customers"), on="customer_id")
    logins = logins.join(warehouse.scan("churn_events"), on="customer_id", how="left").collect()
    assert (logins["timestamp"] >= logins["signup_at"]).all()
    churned = logins.filter(pl.col("churned_at").is_not_null())
    assert (churned["timestamp"] <= churned["churned_at"]).all()


def test_logins_fall_and_tickets_rise_before_churn(warehouse: Warehouse) -> None:
    """The generative process: churners' weekly logins decline over the ~8 weeks before."""
    churn = warehouse.scan("churn_events").collect()
    logins = warehouse.scan("logins").join(churn.lazy(), on="customer_id").collect()
    weeks_before = (pl.col("churned_at") - pl.col("timestamp")).dt.total_days() // 7
    per_week = (
        logins.with_columns(weeks_before=weeks_before)
        .filter(pl.col("weeks_before") < 10)
        .group_by("weeks_before")
        .len()
        .sort("weeks_before")
    )
    counts = dict(zip(per_week["weeks_before"], per_week["len"], strict=True))
    assert counts[0] < 0.5 * counts[9], counts
    assert counts[1] < counts[4] < counts[8], counts

    tickets = warehouse.scan("support_tickets").join(
        warehouse.scan("churn_events"), on="customer_id", how="left"
    )
    window = (pl.col("churned_at") - pl.col("opened_at")) < pl.duration(days=30)
    rate_near_churn = tickets.filter(pl.col("churned_at").is_not_null() & window).collect().height
    assert rate_near_churn / churn.height > 0.3  # churners file tickets shortly before leaving


def test_delay_holds_back_the_newest_data(as_of: datetime) -> None:
    delayed = demo_tables(DemoWarehouseSettings(n_customers=300, as_of=as_of, delay_hours=72))
    newest = delayed["logins"]["timestamp"].max()
    assert isinstance(newest, datetime)
    assert newest <= as_of - timedelta(hours=72)
    assert delayed["account_activity"]["day"].max() < (as_of - timedelta(hours=72)).date()


def test_anomaly_truth_points_at_unusual_days(warehouse: Warehouse) -> None:
    activity = warehouse.scan("account_activity")
    truth = warehouse.scan("anomaly_truth").collect()
    assert set(truth["kind"]) <= {"spike", "drop", "level_shift"}
    spikes = truth.filter(pl.col("kind") == "spike").join(
        activity.collect(), on=["customer_id", "day"]
    )
    medians = activity.group_by("customer_id").agg(pl.col("api_calls").median()).collect()
    joined = spikes.join(medians, on="customer_id", suffix="_median")
    assert (joined["api_calls"] > 2 * joined["api_calls_median"]).mean() > 0.9  # type: ignore[operator]


def test_missing_column_names_the_table_and_column(tmp_path: Path, warehouse: Warehouse) -> None:
    broken = Warehouse(tmp_path)
    customers = warehouse.scan("customers").collect().drop("plan")
    write_parquet_atomic(customers, broken.path("customers"))
    with pytest.raises(SourceError, match=r"'customers'.*lacks column\(s\) \['plan'\]"):
        broken.scan("customers")


def test_empty_and_absent_sources_are_rejected(tmp_path: Path, warehouse: Warehouse) -> None:
    broken = Warehouse(tmp_path)
    write_parquet_atomic(warehouse.scan("logins").collect().clear(), broken.path("logins"))
    with pytest.raises(SourceError, match=r"'logins'.*is empty"):
        broken.scan("logins")
    with pytest.raises(SourceError, match=r"'customers' is missing"):
        broken.scan("customers")


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(ValueError, match="n_customers"):
        DemoWarehouseSettings(n_customers=0).validate()
    with pytest.raises(ValueError, match="delay_hours"):
        DemoWarehouseSettings(delay_hours=-1).validate()


def test_as_of_defaults_to_now() -> None:
    resolved = DemoWarehouseSettings().resolved_as_of()
    assert abs((datetime.now(UTC) - resolved).total_seconds()) < 5


def test_block_size_does_not_change_the_tables(
    as_of: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large draws are taken in customer blocks; the blocks must not change a single number."""
    from mlinfra_features import sources

    settings = DemoWarehouseSettings(n_customers=700, as_of=as_of, anomaly_rate=0.05)
    whole = demo_tables(settings)
    monkeypatch.setattr(sources, "_BLOCK_CUSTOMERS", 97)
    blocked = demo_tables(settings)
    assert whole["anomaly_truth"].height > 0
    for name in whole:
        assert whole[name].equals(blocked[name]), name
