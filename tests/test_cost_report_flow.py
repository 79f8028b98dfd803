"""The cost report flow end to end on a temporary home, under a real Prefect API."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from flows.config import build, load
from flows.cost_report import cost_report_flow
from mlinfra_ops import GpuPrices, record_training_cost


def _ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Milliseconds since the epoch (MLflow's run start time) of a UTC time."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.usefixtures("prefect_harness")
def test_cost_report_on_an_empty_home_uses_the_configured_baseline(tmp_path: Path) -> None:
    cfg = load(
        "cost_report",
        [
            f"paths.home={tmp_path}",
            "cost.on_demand_monthly_usd=8000",
            "cost.spot_discount=0.6",
            "cost.interruptions_per_hour=0.1",
            "cost.checkpoint_seconds=30",
            "cost.restart_seconds=120",
        ],
    )
    result = cost_report_flow(cfg)
    assert result["baseline_source"] == "configured"
    assert result["on_demand_monthly_usd"] == 8000
    assert result["daly_interval_seconds"] == pytest.approx(1449.762, abs=1e-3)
    assert result["spot_monthly_usd"] == pytest.approx(3341.32, abs=0.01)
    assert result["saving_usd"] == pytest.approx(4658.68, abs=0.01)
    path = Path(result["report"])
    assert path.parent == tmp_path / "reports"
    assert path.name.startswith("cost-") and path.suffix == ".md"
    text = path.read_text()
    assert "configured on-demand spend of $8,000.00 per month" in text
    assert "| monthly on-demand | $8,000.00 |" in text
    assert "| projected spot | $3,341.32 |" in text
    assert "| saving | $4,658.68 (58.2%) |" in text
    assert "| optimal checkpoint interval (daly) | 24.2 min (1,450 s) |" in text
    assert not (tmp_path / "mlflow").exists()  # reading an absent store creates none


@pytest.mark.usefixtures("prefect_harness")
def test_cost_report_sums_recorded_runs_by_month(tmp_path: Path) -> None:
    import mlflow

    db = tmp_path / "mlflow" / "mlflow.db"  # the default store under the platform home
    db.parent.mkdir(parents=True)
    uri = f"sqlite:///{db}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mlinfra", artifact_location=(tmp_path / "art").as_uri())
    prices = GpuPrices(on_demand_per_hour=4.0)
    for start, count, seconds in [
        (_ms(2026, 9, 14), 8, 36_000),  # 320 $
        (_ms(2026, 9, 30, 23), 8, 18_000),  # 160 $
        (_ms(2026, 10, 2), 4, 36_000),  # 160 $
    ]:
        run_id = client.create_run(exp, start_time=start).info.run_id
        record_training_cost("H100", count, seconds, prices, run_id=run_id, tracking_uri=uri)

    cfg = load("cost_report", [f"paths.home={tmp_path}", "cost.interval_method=young"])
    result = cost_report_flow(cfg)
    assert result["baseline_source"] == "history"
    assert result["months"] == {"2026-09": pytest.approx(480.0), "2026-10": pytest.approx(160.0)}
    assert result["on_demand_monthly_usd"] == pytest.approx(320.0)
    overhead = 30 / 1469.6938 + (1469.6938 / 2 + 120) / 36_000
    assert result["interval_seconds"] == pytest.approx(1469.6938, abs=1e-3)
    assert result["spot_monthly_usd"] == pytest.approx(320 * 0.4 * (1 + overhead), rel=1e-6)
    text = Path(result["report"]).read_text()
    assert "mean on-demand spend of the 2 month(s)" in text
    assert "| 2026-09 | 2 | 120.0 | $480.00 |" in text
    assert "| 2026-10 | 1 | 40.0 | $160.00 |" in text


def test_bad_cost_input_is_refused_with_its_name(tmp_path: Path) -> None:
    cfg = load("cost_report", [f"paths.home={tmp_path}", "cost.spot_discount=1.2"])
    with pytest.raises(Exception, match=r"spot_discount=1\.2 is invalid; expected"):
        build(cfg["cost"])
