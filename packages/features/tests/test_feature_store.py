"""The Feast store for real (SQLite online store, file offline store): materialization and its
ledger, freshness, point-in-time training sets, online reads and bad input."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from mlinfra_features import (
    VIEWS,
    FeatureStoreSettings,
    Ledger,
    MaterializationError,
    apply_repo,
    freshness,
    materialize,
    materialize_incremental,
    online_features,
    training_set,
    write_feature_tables,
)
from mlinfra_features.sources import write_parquet_atomic


def online_rows(settings: FeatureStoreSettings) -> list[tuple[object, ...]]:
    """Every row of the SQLite online store, in a stable order."""
    with sqlite3.connect(settings.feast_dir / "online.db") as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows: list[tuple[object, ...]] = []
        for table in sorted(tables):
            rows += [(table, *r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY 1, 2')]
    return rows


def test_feast_cli_lists_views_and_services(store: FeatureStoreSettings) -> None:
    feast = Path(sys.executable).parent / "feast"
    views = subprocess.run(
        [feast, "-c", store.feast_dir, "feature-views", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    services = subprocess.run(
        [feast, "-c", store.feast_dir, "feature-services", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for view in VIEWS:
        assert view in views
    for service in ("churn_v1", "churn_v2", "anomaly_detector_v1", "event_classifier_v1"):
        assert service in services


def test_every_run_is_in_the_ledger_and_fresh(store: FeatureStoreSettings) -> None:
    runs = Ledger(store.ledger_path).runs()
    assert {r.feature_view for r in runs} == set(VIEWS)
    assert all(r.status == "success" and r.rows and r.rows > 0 for r in runs)
    newest = max(r.max_event_timestamp for r in runs if r.max_event_timestamp)
    report = freshness(store, now=newest + timedelta(hours=1))
    assert {v.feature_view: v.state for v in report} == dict.fromkeys(VIEWS, "fresh")
    assert all(v.sla_seconds == 2 * 86400 for v in report)


def test_rerunning_a_window_leaves_the_online_store_identical(
    store: FeatureStoreSettings, as_of: datetime
) -> None:
    window = (as_of - timedelta(days=40), as_of + timedelta(seconds=1))
    materialize(store, None, *window)
    before = online_rows(store)
    assert before
    materialize(store, None, *window)
    assert online_rows(store) == before


def test_failed_run_keeps_the_watermark_and_the_next_run_covers_the_gap(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    settings = FeatureStoreSettings(home=tmp_path / "home")
    write_feature_tables(settings, tables)
    apply_repo(settings)
    view = "customer_support"
    t0, t1, t2, t3 = (as_of - timedelta(days=d) for d in (60, 30, 15, 0))
    materialize(settings, [view], t0, t1)
    ledger = Ledger(settings.ledger_path)
    assert ledger.watermark(view) == t1

    path = VIEWS[view].table_path(settings.offline_dir)
    good = path.read_bytes()
    path.write_bytes(b"not parquet")  # the upstream table is broken during this run
    with pytest.raises(MaterializationError, match=view):
        materialize_incremental(settings, [view], end=t2)
    assert ledger.runs(view)[-1].status == "failed"
    assert ledger.watermark(view) == t1

    path.write_bytes(good)
    newest = ledger.newest_event(view)
    assert newest is not None and newest <= t1
    (run,) = materialize_incremental(settings, [view], end=t3 + timedelta(seconds=1))
    assert run.window_start == newest, "the run starts at the newest materialized event"
    assert ledger.watermark(view) == t3 + timedelta(seconds=1)
    # the online store now holds the newest snapshot of every customer in the whole span
    latest = (
        tables[view]
        .filter(pl.col("event_timestamp") > t1)
        .sort("event_timestamp")
        .group_by("customer_id")
        .last()
        .sort("customer_id")
        .head(50)
    )
    online = online_features(settings, "churn_v2", latest["customer_id"].to_list())
    assert online["support_tickets_30d"].to_list() == latest["support_tickets_30d"].to_list()


def test_late_when_the_demo_delay_holds_data_back(tmp_path: Path, as_of: datetime) -> None:
    from mlinfra_features import DemoWarehouseSettings, feature_tables, generate_demo_warehouse

    warehouse = generate_demo_warehouse(
        DemoWarehouseSettings(n_customers=200, as_of=as_of, delay_hours=72), tmp_path / "wh"
    )
    settings = FeatureStoreSettings(home=tmp_path / "home")
    write_feature_tables(settings, feature_tables(warehouse))
    apply_repo(settings)
    materialize_incremental(settings, end=as_of)
    report = {v.feature_view: v for v in freshness(settings, now=as_of)}
    assert report["customer_logins"].state == "late"
    assert report["customer_logins"].age_seconds == pytest.approx(72 * 3600)
    assert report["customer_logins"].late_by_seconds == pytest.approx(24 * 3600)
    assert report["account_activity_daily"].state == "late"


def test_missing_and_failed_states(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    settings = FeatureStoreSettings(home=tmp_path / "home")
    assert {v.state for v in freshness(settings)} == {"missing"}
    write_feature_tables(settings, tables)
    apply_repo(settings)
    materialize(settings, ["customer_logins"], as_of - timedelta(days=30), as_of)
    VIEWS["customer_logins"].table_path(settings.offline_dir).unlink()
    with pytest.raises(MaterializationError, match="missing"):
        materialize(settings, ["customer_logins"], as_of - timedelta(days=1), as_of)
    (state,) = freshness(settings, ["customer_logins"], now=as_of)
    assert state.state == "failed"
    assert state.last_error is not None and "FileNotFoundError" in state.last_error


def test_training_set_is_point_in_time(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    """A customer whose ticket count jumps the day after the as-of time gets the old value."""
    day = as_of - timedelta(days=10)
    support = tables["customer_support"]
    jump = pl.DataFrame(
        {
            "customer_id": [1, 1],
            "event_timestamp": [day, day + timedelta(days=1)],
            "support_tickets_30d": [1, 9],
            "support_tickets_90d": [2, 10],
        },
        schema=support.schema,
    )
    settings = FeatureStoreSettings(home=tmp_path / "home")
    write_feature_tables(
        settings,
        {
            **tables,
            "customer_support": pl.concat([support.filter(pl.col("customer_id") != 1), jump]),
        },
    )
    apply_repo(settings)
    entity_df = pl.DataFrame(
        {
            "customer_id": [1, 1, 1],
            "event_timestamp": [day + timedelta(hours=23), day + timedelta(days=1), day],
            "label": [0, 1, 0],
        },
        schema={
            "customer_id": pl.Int64,
            "event_timestamp": pl.Datetime("us", "UTC"),
            "label": pl.Int64,
        },
    )
    result = training_set(settings, "churn_v2", entity_df)
    assert result["support_tickets_30d"].to_list() == [1, 9, 1]
    assert result["label"].to_list() == [0, 1, 0], "extra columns are carried through in order"
    assert result.columns[:3] == ["customer_id", "event_timestamp", "label"]


def test_no_training_row_gets_features_from_its_future(
    store: FeatureStoreSettings, tables: dict[str, pl.DataFrame]
) -> None:
    profile = tables["customer_profile"]
    sample = profile.sample(300, seed=5).select(
        "customer_id", (pl.col("event_timestamp") + pl.duration(days=3)).alias("event_timestamp")
    )
    result = training_set(store, "churn_v2", sample)
    expected = (
        sample.with_row_index()
        .join(profile, on="customer_id", suffix="_feature")
        .filter(pl.col("event_timestamp_feature") <= pl.col("event_timestamp"))
        .sort("event_timestamp_feature")
        .group_by("index")
        .last()
        .sort("index")
    )
    assert result["account_age_days"].to_list() == expected["account_age_days"].to_list()


def test_online_features_report_unknown_entities_as_null(store: FeatureStoreSettings) -> None:
    values = online_features(store, "churn_v1", [1, 10_000_000])
    assert values["customer_id"].to_list() == [1, 10_000_000]
    assert values["plan"][0] in {"basic", "pro", "enterprise"}
    assert values.row(1)[1:] == (None,) * (values.width - 1)


# --- bad input: a clear error naming the input, and nothing written to the online store ---


def test_unknown_feature_service(store: FeatureStoreSettings) -> None:
    entity_df = pl.DataFrame(
        {"customer_id": [1], "event_timestamp": [datetime(2026, 11, 1, tzinfo=UTC)]}
    )
    with pytest.raises(LookupError, match=r"unknown feature service 'churn_v9'.*churn_v2"):
        training_set(store, "churn_v9", entity_df)
    with pytest.raises(LookupError, match="churn_v9"):
        online_features(store, "churn_v9", [1])


def test_entity_df_without_event_timestamp(store: FeatureStoreSettings) -> None:
    with pytest.raises(ValueError, match=r"entity_df lacks column\(s\) \['event_timestamp'\]"):
        training_set(store, "churn_v2", pl.DataFrame({"customer_id": [1]}))
    naive = pl.DataFrame({"customer_id": [1], "event_timestamp": [datetime(2026, 11, 1)]})
    with pytest.raises(ValueError, match="timezone-aware"):
        training_set(store, "churn_v2", naive)


def test_feature_table_missing_a_column_writes_nothing(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    settings = FeatureStoreSettings(home=tmp_path / "home")
    with pytest.raises(ValueError, match=r"'customer_logins' lacks column\(s\) \['logins_30d'\]"):
        write_feature_tables(
            settings, {"customer_logins": tables["customer_logins"].drop("logins_30d")}
        )
    assert not VIEWS["customer_logins"].table_path(settings.offline_dir).exists()

    write_feature_tables(settings, tables)
    apply_repo(settings)
    write_parquet_atomic(
        tables["customer_logins"].drop("logins_30d"),
        VIEWS["customer_logins"].table_path(settings.offline_dir),
    )
    with pytest.raises(MaterializationError, match=r"lacks column\(s\) \['logins_30d'\]"):
        materialize(settings, ["customer_logins"], as_of - timedelta(days=30), as_of)
    assert online_rows(settings) == []
    assert Ledger(settings.ledger_path).watermark("customer_logins") is None


def test_empty_source_writes_nothing(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    settings = FeatureStoreSettings(home=tmp_path / "home")
    with pytest.raises(ValueError, match="'customer_support' is empty"):
        write_feature_tables(settings, {"customer_support": tables["customer_support"].clear()})
    write_feature_tables(settings, tables)
    apply_repo(settings)
    write_parquet_atomic(
        tables["customer_support"].clear(),
        VIEWS["customer_support"].table_path(settings.offline_dir),
    )
    with pytest.raises(MaterializationError, match="is empty"):
        materialize(settings, ["customer_support"], as_of - timedelta(days=30), as_of)
    assert online_rows(settings) == []


def test_window_end_before_start_writes_nothing(
    store: FeatureStoreSettings, as_of: datetime
) -> None:
    before = online_rows(store)
    runs = len(Ledger(store.ledger_path).runs())
    with pytest.raises(ValueError, match=r"window end .* precedes or equals its start"):
        materialize(store, None, as_of, as_of - timedelta(days=1))
    with pytest.raises(LookupError, match="unknown feature view"):
        materialize(store, ["no_such_view"], as_of - timedelta(days=1), as_of)
    assert online_rows(store) == before
    assert len(Ledger(store.ledger_path).runs()) == runs


def test_freshness_cli_prints_a_table_and_json(
    store: FeatureStoreSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from mlinfra_features.cli import main

    status = main(["--home", str(store.home), "freshness", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert {r["feature_view"] for r in report} == set(VIEWS)
    for row in report:
        assert {"feature_view", "state", "age_seconds", "sla_seconds"} <= row.keys()
        assert row["sla_seconds"] == 172800
    # the session's demo ends on a fixed date, so by now its views are late: exit status 1
    assert status == (0 if all(r["state"] == "fresh" for r in report) else 1)
    main(["--home", str(store.home), "freshness"])
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:2] == ["feature_view", "state"]
    assert "customer_logins" in table
    main(["--home", str(store.home), "runs", "--view", "customer_logins"])
    assert "success" in capsys.readouterr().out


def test_rows_that_arrive_late_are_still_materialized(
    tmp_path: Path, tables: dict[str, pl.DataFrame], as_of: datetime
) -> None:
    """The upstream job runs late: its rows are stamped before the last window's end."""
    settings = FeatureStoreSettings(home=tmp_path / "home")
    view = "customer_logins"
    cut = as_of - timedelta(days=10)
    early = {**tables, view: tables[view].filter(pl.col("event_timestamp") <= cut)}
    write_feature_tables(settings, early)
    apply_repo(settings)
    materialize_incremental(settings, [view], end=as_of)  # data only reaches `cut`
    write_feature_tables(settings, {view: tables[view]})  # the late rows land
    (run,) = materialize_incremental(settings, [view], end=as_of + timedelta(seconds=1))
    assert run.window_start <= cut
    (state,) = freshness(settings, [view], now=as_of)
    assert state.newest_event_timestamp == tables[view]["event_timestamp"].max()
