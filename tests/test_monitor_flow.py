"""The monitor flow: late feature views and failed flow runs become one alert per incident, sent
to a real webhook on 127.0.0.1, suppressed on later checks and closed with a recovery. Bad
input: bad SLAs and sinks are refused at config load; failing sinks are retried and counted
while the others and the monitor go on; the prediction log of the model-performance flow may
miss partitions."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from prefect import flow

from flows.config import load
from flows.materialize import materialize
from flows.model_performance import read_predictions
from flows.monitor import downstream_jobs, feature_slas, load_config, monitor
from mlinfra_features import VIEWS
from mlinfra_ops import read_alert_log


@flow(name="mlinfra-test-broken-job")
def broken_job() -> None:
    raise RuntimeError("the upstream export is missing")


def test_downstream_jobs_come_from_the_model_configs(tmp_path: Path) -> None:
    jobs = downstream_jobs(load("monitor", [f"paths.home={tmp_path}"]))
    assert jobs["customer_logins"] == ["retrain churn"]
    assert jobs["account_activity_daily"] == ["retrain anomaly_detector"]


@pytest.mark.usefixtures("prefect_harness")
def test_monitor_alerts_once_per_incident_and_recovers(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    home = [f"paths.home={tmp_path}", "features.n_customers=300"]
    overrides = [
        *home,
        f"alerts.sinks=[{{type:log}},{{type:webhook,url:'{url}'}}]",
        # 300 customers make 60 product events a year: how old the newest is depends on the
        # draw and the time of day, not on materialization, so that view is left out here
        "feature_views.product_event_features.late_after_hours=2160",
    ]
    materialize(load("materialize", [*home, "features.warehouse.delay_hours=72"]))
    with pytest.raises(RuntimeError, match="upstream export"):
        broken_job()

    first = monitor(load("monitor", overrides))
    late_views = sorted(v for v, outcome in first["feature_views"].items() if outcome == "opened")
    assert "account_activity_daily" in late_views and "customer_logins" in late_views
    assert first["flow_runs"]["flow:mlinfra-test-broken-job"] == "opened"
    sent = {(a["kind"], a["subject"]) for a in received}
    assert ("flow_failed", "mlinfra-test-broken-job") in sent
    activity = next(a for a in received if a["subject"] == "account_activity_daily")
    assert activity["kind"] == "features_late"
    assert activity["facts"]["downstream_jobs"] == ["retrain anomaly_detector"]
    assert activity["facts"]["late_by_seconds"] > 0

    count = len(received)
    second = monitor(load("monitor", overrides))
    assert set(second["feature_views"].values()) <= {"suppressed", "fresh"}
    assert second["flow_runs"]["flow:mlinfra-test-broken-job"] == "suppressed"
    assert len(received) == count, "a repeated check sends nothing new"

    materialize(load("materialize", [*home, "features.refresh=always"]))
    third = monitor(load("monitor", overrides))
    assert {third["feature_views"][v] for v in late_views} == {"resolved"}
    recoveries = [a for a in received[count:] if a["kind"] == "features_fresh"]
    assert sorted(a["subject"] for a in recoveries) == late_views
    assert all(a["severity"] == "info" for a in recoveries)
    logged = [a["kind"] for a in read_alert_log(tmp_path)]
    assert logged.count("features_fresh") == len(late_views)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "feature_views.account_activity_daily.late_after_hours=12",
            r"feature view account_activity_daily: SLA late after 12 h is shorter than its "
            r"cadence 24 h.*feature_views.account_activity_daily.late_after_hours=12",
        ),
        (
            "features.store.sla_factor=0.5",
            r"feature view customer_profile: SLA late after 12 h is shorter than its cadence "
            r"24 h.*features.store.sla_factor=0.5",
        ),
        (
            "features.store.sla_factor=0",
            r"feature view customer_profile: late-after threshold 0.0 s is not positive",
        ),
        (
            "feature_views.customer_logins.cadence_hours=0",
            r"feature view customer_logins: cadence 0.0 s is not positive",
        ),
        (
            "feature_views.customer_logins.late_after_hours=-1",
            r"feature view customer_logins: late-after threshold -3600.0 s is not positive",
        ),
        (
            "+feature_views.customer_login={cadence_hours:24}",
            r"unknown feature view\(s\) \['customer_login'\]",
        ),
        (
            "+feature_views.customer_logins.sla_hours=24",
            r"feature_views.customer_logins has unknown field\(s\) \['sla_hours'\]",
        ),
        ("alerts.sinks=[{type:pager}]", r"alert sink #0 has type 'pager'; expected one of"),
        ("flow_runs.lookback_hours=0", r"flow_runs.lookback_hours=0; expected a positive"),
    ],
)
def test_bad_config_is_refused_at_load(override: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        load_config([f"paths.home={tmp_path}", override])


def test_slas_default_to_twice_the_cadence_and_take_overrides(tmp_path: Path) -> None:
    slas = feature_slas(
        load_config(
            [
                f"paths.home={tmp_path}",
                "feature_views.account_activity_daily.cadence_hours=12",
                "feature_views.account_activity_daily.late_after_hours=30",
            ]
        )
    )
    assert set(slas) == set(VIEWS)
    assert slas["customer_logins"].threshold_s == 2 * 86400
    assert (
        slas["account_activity_daily"].cadence_s,
        slas["account_activity_daily"].threshold_s,
    ) == (
        12 * 3600,
        30 * 3600,
    )


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there any more


@pytest.mark.usefixtures("prefect_harness")
def test_failing_sinks_are_retried_and_counted_and_never_stop_the_monitor(
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
    failing_webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    bad_url, bad_received = failing_webhook
    retry = "retry:{attempts:2,initial_delay_s:0.01,timeout_s:2}"
    sinks = (
        f"alerts.sinks=[{{type:webhook,url:'{refused_url()}',{retry}}},"
        f"{{type:webhook,url:'{bad_url}',{retry}}},{{type:log}},{{type:webhook,url:'{url}'}}]"
    )
    # an empty platform home: every feature view is missing, each an incident
    result = monitor(load_config([f"paths.home={tmp_path}", sinks]))
    assert set(result["feature_views"].values()) == {"opened"}
    sent = len(received)
    assert sent >= len(VIEWS), "the working webhook after the failing ones got every alert"
    assert len(read_alert_log(tmp_path)) == sent, "so did the log sink"
    assert len(bad_received) == 2 * sent, "every alert was retried once on the 500"
    assert result["delivery_failures"] == {"JsonWebhookSink": sent, "JsonWebhookSink#1": sent}


def test_model_performance_reads_a_prediction_log_with_missing_partitions(tmp_path: Path) -> None:
    root = tmp_path / "predictions"
    with pytest.raises(FileNotFoundError, match=r"no predictions logged under .*predictions/churn"):
        read_predictions(root, "churn")
    at = datetime(2026, 11, 2, 9, tzinfo=UTC)
    for day in ("2026-11-02", "2026-11-04"):  # 11-03 never written, 11-05 left empty
        (root / "churn" / f"date={day}").mkdir(parents=True)
        pl.DataFrame(
            {"entity_id": [1, 2], "timestamp": [at, at], "score": [0.1, 0.7], "version": "1"}
        ).write_parquet(root / "churn" / f"date={day}" / "part-0.parquet")
    (root / "churn" / "date=2026-11-05").mkdir()
    frame, counts = read_predictions(root, "churn")
    assert counts == {"empty_partitions": 1, "files": 2}
    assert frame.height == 2, "one prediction per customer and day, the latest"
