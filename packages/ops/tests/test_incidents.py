"""One alert per incident: dedup across checks, re-notification, recovery, persisted state."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mlinfra_ops import Alert, IncidentPolicy, Incidents, LogSink, read_alert_log


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 4, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def late(view: str = "customer_logins") -> Alert:
    return Alert(kind="features_late", subject=view, message=f"{view} is late")


def fresh(view: str = "customer_logins") -> Alert:
    return Alert(kind="features_fresh", subject=view, message=f"{view} is fresh", severity="info")


def test_repeated_checks_alert_once_then_renotify_then_recover(tmp_path: Path) -> None:
    clock = Clock()
    policy = IncidentPolicy(renotify_after_s=3600)

    def incidents() -> Incidents:  # a new object per check, as a scheduled monitor run is
        return Incidents(tmp_path, [LogSink(tmp_path)], policy, clock=clock)

    key = "feature_view:customer_logins"
    outcomes = []
    for _ in range(4):  # four checks 15 minutes apart; the fifth an hour after the first
        outcomes.append(incidents().report(key, late()))
        clock.now += timedelta(minutes=15)
    outcomes.append(incidents().report(key, late()))
    assert outcomes == ["opened", "suppressed", "suppressed", "suppressed", "renotified"]
    state = incidents().open_incidents()[key]
    assert (state["checks"], state["notifications"], state["suppressed"]) == (5, 2, 3)

    assert incidents().resolve(key, fresh())
    assert not incidents().resolve(key, fresh()), "already closed"
    log = read_alert_log(tmp_path)
    assert [a["kind"] for a in log] == ["features_late", "features_late", "features_fresh"]
    assert log[1]["message"].startswith("still open after 1:00:00")
    assert log[2]["severity"] == "info" and "open for 1:00:00" in log[2]["message"]
    assert incidents().open_incidents() == {}


def test_incidents_are_independent_per_key(tmp_path: Path) -> None:
    incidents = Incidents(tmp_path, [LogSink(tmp_path)], clock=Clock())
    assert incidents.report("feature_view:a", late("a")) == "opened"
    assert incidents.report("feature_view:b", late("b")) == "opened"
    assert incidents.report("feature_view:a", late("a")) == "suppressed"
    assert sorted(incidents.open_incidents()) == ["feature_view:a", "feature_view:b"]


def test_bad_policy_and_corrupt_state_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="renotify_after_s must be > 0"):
        IncidentPolicy(renotify_after_s=0)
    state = tmp_path / "alerts" / "incidents.json"
    state.parent.mkdir(parents=True)
    state.write_text("{not json")
    with pytest.raises(ValueError, match=r"incidents\.json is not valid JSON"):
        Incidents(tmp_path, []).report("k", late())
