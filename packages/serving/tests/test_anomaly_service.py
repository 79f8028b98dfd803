"""The anomaly detector served over HTTP: a tiny champion trained on Ray Train, scored on the
account-day the online store holds, and an honest 'not_found' for any other day."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from mlinfra_features import VIEWS, training_set
from mlinfra_models import (
    ANOMALY_LABEL,
    AnomalySettings,
    AnomalyWindow,
    RegistrySettings,
    load_anomaly_model,
    retrain_anomaly_detector,
)
from mlinfra_serving import ServingSettings, read_prediction_log

from .conftest import DemoHome

Serve = Callable[[ServingSettings], AbstractContextManager[str]]


def _account_days(demo: DemoHome, days: int) -> pl.DataFrame:
    """The newest ``days`` account-days of the offline store with the demo's hidden truth."""
    keys = pl.read_parquet(
        VIEWS["account_activity_daily"].table_path(demo.store.offline_dir),
        columns=["customer_id", "event_timestamp"],
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    end = keys["event_timestamp"].max()
    assert end is not None
    truth = (
        demo.warehouse.scan("anomaly_truth")
        .select(
            "customer_id",
            (pl.col("day").cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)).alias(
                "event_timestamp"
            ),
            pl.lit(True).alias(ANOMALY_LABEL),
        )
        .unique(["customer_id", "event_timestamp"])
        .collect()
    )
    return (
        keys.filter(pl.col("event_timestamp") > end - timedelta(days=days))  # type: ignore[operator]
        .join(truth, on=["customer_id", "event_timestamp"], how="left")
        .with_columns(pl.col(ANOMALY_LABEL).fill_null(False))
    )


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_anomaly_detector_scores_the_day_the_online_store_holds(
    demo_home: DemoHome, serve: Serve, tmp_path: Path
) -> None:
    registry = RegistrySettings(home=tmp_path)
    window = AnomalyWindow(
        train_days=7, evaluation_days=2, max_customers=300, bootstrap_resamples=10
    )
    result = retrain_anomaly_detector(
        _account_days(demo_home, 9),
        lambda service, rows: training_set(demo_home.store, service, rows),
        AnomalySettings(
            epochs=1,
            batch_size=256,
            num_workers=1,
            storage_path=str(tmp_path / "checkpoints"),
        ),
        window=window,
        registry=registry,
        report_dir=tmp_path / "reports",
        log=lambda _: None,
    )
    assert result.alias == "champion"
    model = load_anomaly_model("models:/anomaly_detector@champion")

    # Customers active on the newest day: the online store holds that day for each of them.
    activity = pl.read_parquet(
        VIEWS["account_activity_daily"].table_path(demo_home.store.offline_dir)
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    latest = (
        activity.filter(pl.col("event_timestamp") == pl.col("event_timestamp").max())
        .sort("customer_id")
        .head(20)
    )
    expected = model.score(latest)
    settings = ServingSettings(
        home=tmp_path, store=demo_home.store, registry=registry, models=("anomaly_detector",)
    )
    with serve(settings) as url:
        assert httpx.get(f"{url}/readyz").status_code == 200
        for row, want in zip(latest.iter_rows(named=True), expected, strict=True):
            day = (row["event_timestamp"] - timedelta(days=1)).date()
            body = {"customer_id": row["customer_id"], "day": day.isoformat()}
            got = httpx.post(f"{url}/v1/anomaly_detector/score", json=body).json()
            assert got["status"] == "scored", got
            assert got["score"] == pytest.approx(float(want), rel=1e-6)
            assert got["is_anomaly"] == (float(want) > model.threshold)
            assert got["threshold"] == pytest.approx(model.threshold)
            assert (got["version"], got["semver"]) == ("1", "1.0.0")
        earlier = {"customer_id": demo_home.customers[0], "day": "2026-11-01"}
        older = httpx.post(f"{url}/v1/anomaly_detector/score", json=earlier).json()
        nobody = httpx.post(
            f"{url}/v1/anomaly_detector/score", json={"customer_id": 9_000_000, "day": "2026-11-27"}
        ).json()
        churn = httpx.post(f"{url}/v1/churn/score", json={"customer_ids": [1]})
    assert older["status"] == "not_found" and older["score"] is None
    assert "holds customer" in older["reason"] and "2026-11-01" not in older["reason"]
    assert nobody["status"] == "not_found" and "no account activity" in nobody["reason"]
    assert churn.status_code == 404, "a model the service does not serve has no route"
    logged = read_prediction_log(tmp_path / "predictions", "anomaly_detector")
    assert logged.height == len(expected) and logged["day"].null_count() == 0
