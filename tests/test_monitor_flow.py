"""The monitor flow: late feature views and failed flow runs become one alert per incident, sent
to a real webhook on 127.0.0.1, suppressed on later checks and closed with a recovery."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from flows.config import load
from flows.materialize import materialize
from flows.monitor import downstream_jobs, monitor
from mlinfra_ops import read_alert_log


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/alerts", received
    finally:
        httpd.shutdown()
        httpd.server_close()


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
    overrides = [*home, f"alerts.sinks=[{{type:log}},{{type:webhook,url:'{url}'}}]"]
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
