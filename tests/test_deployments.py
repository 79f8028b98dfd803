"""prefect.yaml declares loadable flows with valid schedules and config overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import Flow, load_flow_from_entrypoint

from flows.config import load

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load((ROOT / "prefect.yaml").read_text())[
    "deployments"
]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=lambda d: d["name"])
def test_deployment_entrypoint_schedule_and_overrides(
    deployment: dict[str, Any], tmp_path: Path
) -> None:
    path, _, name = deployment["entrypoint"].partition(":")
    flow = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
    assert isinstance(flow, Flow)
    assert "overrides" in flow.parameters.properties
    for schedule in deployment["schedules"]:
        parsed = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
        assert parsed.cron == schedule["cron"]
    job = Path(path).stem
    cfg = load(job, [*deployment["parameters"]["overrides"], f"paths.home={tmp_path}"])
    assert cfg["job"] == job


def test_the_anomaly_detector_retrains_weekly_on_sunday() -> None:
    weekly = [
        d
        for d in DEPLOYMENTS
        if d["entrypoint"] == "flows/retrain.py:retrain"
        and "model=anomaly_detector" in d["parameters"]["overrides"]
    ]
    assert len(weekly) == 1
    (schedule,) = weekly[0]["schedules"]
    fields = schedule["cron"].split()
    assert fields[2:4] == ["*", "*"] and fields[4] in {"0", "7", "SUN", "sun"}, schedule


def test_an_invalid_cron_is_rejected() -> None:
    with pytest.raises(ValueError, match="cron"):
        CronSchedule(cron="61 * * * *", timezone="UTC")
