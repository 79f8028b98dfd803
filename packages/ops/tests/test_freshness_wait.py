"""Waiting for late features against a real Feast store whose demo data is held back."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlinfra_features import (
    DemoWarehouseSettings,
    FeatureStoreSettings,
    apply_repo,
    feature_tables,
    generate_demo_warehouse,
    materialize_incremental,
    write_feature_tables,
)
from mlinfra_ops import (
    FeaturesLateError,
    Incidents,
    LogSink,
    ViewSLA,
    WaitPolicy,
    freshness_under_slas,
    read_alert_log,
    wait_for_fresh_features,
)

VIEWS = ["customer_logins", "account_activity_daily"]


def publish(home: Path, delay_hours: float) -> FeatureStoreSettings:
    """Generate the demo as of now (holding back ``delay_hours``) and materialize it."""
    settings = FeatureStoreSettings(home=home)
    warehouse = generate_demo_warehouse(
        DemoWarehouseSettings(n_customers=200, delay_hours=delay_hours), home / "warehouse"
    )
    write_feature_tables(settings, feature_tables(warehouse))
    apply_repo(settings)
    materialize_incremental(settings, end=datetime.now(UTC))
    return settings


def test_waits_alerts_once_and_continues_when_materialization_lands(tmp_path: Path) -> None:
    store = publish(tmp_path, delay_hours=72)
    landed = threading.Timer(3.0, publish, args=(tmp_path, 0.0))
    landed.start()
    started = time.monotonic()
    try:
        report = wait_for_fresh_features(
            store,
            VIEWS,
            WaitPolicy(max_wait_s=120, initial_poll_s=0.5, max_poll_s=2),
            job="retrain test",
            log=lambda _: None,
        )
    finally:
        landed.join()
    assert time.monotonic() - started >= 3.0, "it must have waited for the late job"
    assert {v.state for v in report} == {"fresh"}
    kinds = [a["kind"] for a in read_alert_log(tmp_path)]
    assert kinds == ["features_late", "features_fresh"], "one alert per incident, then recovery"
    late = read_alert_log(tmp_path)[0]
    assert "customer_logins" in late["subject"] and "late by" in late["message"]


def test_never_lands_fails_naming_the_view_and_how_late(tmp_path: Path) -> None:
    store = publish(tmp_path, delay_hours=72)
    sleeps: list[float] = []
    clock = iter(range(0, 10_000, 7))
    with pytest.raises(
        FeaturesLateError, match=r"customer_logins is late: age 3 days.*late by 1 day"
    ) as err:
        wait_for_fresh_features(
            store,
            VIEWS,
            WaitPolicy(max_wait_s=60, initial_poll_s=5, max_poll_s=40),
            job="retrain test",
            sleep=sleeps.append,
            clock=lambda: float(next(clock)),
            log=lambda _: None,
        )
    assert {v.feature_view for v in err.value.late} == set(VIEWS)
    # the fake clock advances 7 s per reading: polls back off 5, 10, 20, then are capped by
    # max_poll_s (40) and by the time left before max_wait_s (60)
    assert sleeps == [5, 10, 20, 32, 25, 18, 11, 4]
    assert [a["kind"] for a in read_alert_log(tmp_path)] == ["features_late"]


def test_bad_policy_is_named() -> None:
    with pytest.raises(ValueError, match="max_wait_s"):
        WaitPolicy(max_wait_s=-1)
    with pytest.raises(ValueError, match="initial_poll_s"):
        WaitPolicy(initial_poll_s=10, max_poll_s=1)


def test_fresh_views_return_at_once(tmp_path: Path) -> None:
    store = publish(tmp_path, delay_hours=0)
    report = wait_for_fresh_features(store, VIEWS, WaitPolicy(), job="x", log=lambda _: None)
    assert {v.state for v in report} == {"fresh"}
    assert read_alert_log(tmp_path) == []
    assert timedelta(seconds=report[0].sla_seconds) == timedelta(days=2)


def test_through_incidents_one_alert_across_runs_then_the_recovery(tmp_path: Path) -> None:
    store = publish(tmp_path, delay_hours=72)
    incidents = Incidents(tmp_path, [LogSink(tmp_path)])
    policy = WaitPolicy(max_wait_s=2, initial_poll_s=0.5, max_poll_s=0.5)
    for _ in range(2):  # the run, then its retry while the features are still late
        with pytest.raises(FeaturesLateError):
            wait_for_fresh_features(
                store, VIEWS, policy, job="retrain test", incidents=incidents, log=lambda _: None
            )
    (incident,) = incidents.open_incidents().values()
    assert incident["notifications"] == 1 and incident["suppressed"] >= 4
    assert [a["kind"] for a in read_alert_log(tmp_path)] == ["features_late"]

    publish(tmp_path, delay_hours=0)  # the next run finds them fresh: the incident closes
    wait_for_fresh_features(
        store, VIEWS, policy, job="retrain test", incidents=incidents, log=lambda _: None
    )
    assert incidents.open_incidents() == {}
    kinds = [a["kind"] for a in read_alert_log(tmp_path)]
    assert kinds == ["features_late", "features_fresh"]
    with pytest.raises(ValueError, match="not both"):
        wait_for_fresh_features(
            store, VIEWS, policy, job="x", sinks=[], incidents=incidents, log=lambda _: None
        )


def test_each_view_is_judged_by_its_own_sla(tmp_path: Path) -> None:
    store = publish(tmp_path, delay_hours=72)  # newest data about three days old
    day = 86400.0
    report = freshness_under_slas(
        store,
        {
            "customer_logins": ViewSLA("customer_logins", day),  # late after 2 days
            "account_activity_daily": ViewSLA("account_activity_daily", day, 4 * day),
        },
    )
    states = {v.feature_view: (v.state, v.sla_seconds) for v in report}
    assert states == {
        "customer_logins": ("late", 2 * day),
        "account_activity_daily": ("fresh", 4 * day),
    }


@pytest.mark.parametrize(
    ("cadence", "late_after", "message"),
    [
        (86400, 43200, r"v: SLA late after 12 h is shorter than its cadence 24 h"),
        (0, None, r"v: cadence 0 s is not positive"),
        (-3600, 7200, r"v: cadence -3600 s is not positive"),
        (3600, 0, r"v: late-after threshold 0 s is not positive"),
    ],
)
def test_a_bad_sla_is_named(cadence: float, late_after: float | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewSLA("v", cadence, late_after)
