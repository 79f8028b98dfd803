"""The weekly anomaly-detector retrain end to end: it waits for late features (the Sunday
incident), alerts once through the configured sinks (a real webhook on 127.0.0.1 here), trains
on Ray Train, evaluates against the demo's hidden truth and the champion, registers, and records
its cost; it never trains on stale data."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from flows.config import load
from flows.materialize import materialize
from flows.retrain import retrain
from mlinfra_models import RegistrySettings, mlflow_client
from mlinfra_ops import FeaturesLateError, read_alert_log

BASE = [
    "model=anomaly_detector",
    "model.anomaly_detector.settings.epochs=2",
    "model.anomaly_detector.settings.batch_size=256",
    "model.anomaly_detector.settings.checkpoint_every_steps=50",
    "model.anomaly_detector.window.bootstrap_resamples=30",
    "model.anomaly_detector.window.max_customers=1200",
]


def sinks(url: str) -> str:
    return f"alerts.sinks=[{{type:log}},{{type:webhook,url:'{url}'}}]"


@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_weekly_retrain_waits_for_late_features_trains_and_registers(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    home = [f"paths.home={tmp_path}", "features.n_customers=1500"]
    overrides = [
        *home,
        *BASE,
        sinks(url),
        "model.anomaly_detector.freshness.max_wait_s=300",
        "model.anomaly_detector.freshness.initial_poll_s=1",
        "model.anomaly_detector.freshness.max_poll_s=4",
    ]
    # Saturday's materialization ran on data held back three days: the features are late.
    materialize(load("materialize", [*home, "features.warehouse.delay_hours=72"]))
    on_time = load("materialize", [*home, "features.refresh=always"])
    late_job = threading.Timer(4.0, materialize, args=(on_time,))
    late_job.start()
    try:
        first = retrain(load("retrain", overrides))["anomaly_detector"]
    finally:
        late_job.join()

    kinds = [a["kind"] for a in read_alert_log(tmp_path)]
    assert kinds == ["features_late", "features_fresh"], "one late alert, then it continued"
    assert [a["kind"] for a in received] == kinds, "the configured webhook heard the same"
    assert received[0]["facts"]["job"] == "retrain anomaly_detector"
    assert "account_activity_daily" in received[0]["subject"]
    assert (first["version"], first["semver"], first["alias"]) == ("1", "1.0.0", "champion")
    assert first["pr_auc"] > 10 * first["base_rate"], "flags injected anomalies far above chance"
    assert Path(first["report"]).is_file()

    client = mlflow_client(RegistrySettings(home=tmp_path))
    run = client.get_run(first["run_id"])
    assert run.data.tags["cost.device_type"] == "cpu"
    assert run.data.metrics["cost_device_count"] == 2
    assert 0 < run.data.metrics["cost_wall_hours"] < 1
    version = client.get_model_version("anomaly_detector", "1")
    assert version.tags["feature_service"] == "anomaly_detector_v1"
    assert json.loads(version.tags["contract"])["output"] == "anomaly_score"

    # A rerun on the same data reuses the finished Ray run (same name) instead of retraining,
    # and is compared with the champion on the same window.
    second = retrain(load("retrain", [*home, *BASE]))["anomaly_detector"]
    assert (second["version"], second["semver"]) == ("2", "1.0.1")
    assert second["alias"] == "champion", "the same model is within the gate's tolerance"
    assert second["pr_auc"] == pytest.approx(first["pr_auc"])
    rerun = client.get_run(second["run_id"])
    assert rerun.data.tags["ray_run"] == run.data.tags["ray_run"]
    assert rerun.data.metrics["champion_pr_auc"] == pytest.approx(first["pr_auc"])


@pytest.mark.usefixtures("prefect_harness")
def test_weekly_retrain_fails_clearly_when_features_never_land(
    tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    cfg = load(
        "retrain",
        [
            f"paths.home={tmp_path}",
            "features.n_customers=300",
            "features.warehouse.delay_hours=96",
            *BASE,
            "model.anomaly_detector.freshness.max_wait_s=3",
            "model.anomaly_detector.freshness.initial_poll_s=1",
            "model.anomaly_detector.freshness.max_poll_s=1",
            sinks(url),
        ],
    )
    with pytest.raises(
        FeaturesLateError, match=r"account_activity_daily is late: age 3 days, .*late by"
    ):
        retrain(cfg)
    assert not (tmp_path / "mlflow").exists(), "nothing is trained or registered"
    assert not (tmp_path / "checkpoints").exists(), "no training started"
    assert [a["kind"] for a in read_alert_log(tmp_path)] == ["features_late"]
    # it looked four times over its 3 s, and the webhook heard of the incident once
    assert [a["kind"] for a in received] == ["features_late"]
    late = received[0]
    assert late["facts"]["job"] == "retrain anomaly_detector"
    activity = late["facts"]["views"]["account_activity_daily"]
    assert activity["state"] == "late" and activity["age_seconds"] > activity["sla_seconds"]

    # A retry of the run while the features are still late is the same incident: no new alert.
    with pytest.raises(FeaturesLateError):
        retrain(cfg)
    assert len(received) == 1
