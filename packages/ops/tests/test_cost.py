"""GPU cost: formulas against hand-computed numbers, a real MLflow store, and bad inputs."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlinfra_ops import (
    CostSettings,
    GpuPrices,
    MonthlySpend,
    TrainingCost,
    cost_report,
    daly_interval,
    monthly_spend,
    project_spot,
    record_training_cost,
    render_markdown,
    spot_overhead,
    write_report,
    young_interval,
)

# --- formulas ---------------------------------------------------------------------------------


def test_young_and_daly_by_hand() -> None:
    # C = 50 s, M = 10,000 s: sqrt(2 C M) = sqrt(1e6) = 1000
    assert young_interval(50, 10_000) == pytest.approx(1000.0)
    # C / 2M = 0.0025: 1000 * (1 + 0.05 / 3 + 50 / 180000) - 50 = 966.9444...
    assert daly_interval(50, 10_000) == pytest.approx(1000 * (1 + 0.05 / 3 + 1 / 3600) - 50)
    assert daly_interval(50, 10_000) == pytest.approx(966.94444, abs=1e-4)
    # a checkpoint as long as 2M or longer: checkpoint every MTBF
    assert daly_interval(300, 100) == 100
    assert daly_interval(200, 100) == 100


def test_daly_is_close_below_young_for_cheap_checkpoints() -> None:
    for c, m in [(30, 36_000), (10, 3600), (60, 86_400)]:
        young, daly = young_interval(c, m), daly_interval(c, m)
        assert daly < young
        assert (young - daly) / young < 0.05
    # they converge as the checkpoint gets cheaper relative to the MTBF
    gaps = [1 - daly_interval(c, 36_000) / young_interval(c, 36_000) for c in (100, 10, 1)]
    assert gaps == sorted(gaps, reverse=True)


def test_young_minimises_the_first_order_overhead() -> None:
    c, r, m = 30.0, 120.0, 36_000.0
    best = spot_overhead(young_interval(c, m), c, r, m)
    for factor in (0.5, 0.9, 1.1, 2.0):
        assert spot_overhead(young_interval(c, m) * factor, c, r, m) > best


def test_overhead_and_projection_by_hand() -> None:
    # tau = 1000, C = 50, R = 100, M = 10,000: 50/1000 + (500 + 100)/10000 = 0.11
    assert spot_overhead(1000, 50, 100, 10_000) == pytest.approx(0.11)
    settings = CostSettings(
        on_demand_monthly_usd=1000,
        spot_discount=0.5,
        interruptions_per_hour=0.36,  # M = 10,000 s
        checkpoint_seconds=50,
        restart_seconds=100,
        interval_method="young",
    )
    p = project_spot(1000, settings)
    assert p.interval_seconds == pytest.approx(1000)
    assert p.rework_seconds_per_interruption == pytest.approx(600)
    assert p.overhead_fraction == pytest.approx(0.11)
    assert p.spot_usd == pytest.approx(1000 * 0.5 * 1.11)
    assert p.saving_usd == pytest.approx(445)
    assert p.saving_fraction == pytest.approx(0.445)


def test_team_figures() -> None:
    """$8,000/month on demand, 60% discount, 1 interruption per 10 h, 30 s / 120 s."""
    p = project_spot(8000, CostSettings())
    assert p.young_interval_seconds == pytest.approx(math.sqrt(2 * 30 * 36_000))  # 1469.7 s
    assert p.daly_interval_seconds == pytest.approx(1449.762, abs=1e-3)
    assert p.interval_seconds == p.daly_interval_seconds
    assert p.rework_seconds_per_interruption == pytest.approx(1449.762 / 2 + 120, abs=1e-3)
    overhead = 30 / 1449.7619 + (1449.7619 / 2 + 120) / 36_000
    assert p.overhead_fraction == pytest.approx(overhead, rel=1e-6)  # 4.42%
    assert p.spot_usd == pytest.approx(8000 * 0.4 * (1 + overhead), rel=1e-6)  # $3,341.32
    assert p.saving_usd == pytest.approx(4658.68, abs=0.01)


def test_more_interruptions_save_less() -> None:
    savings = [
        project_spot(8000, CostSettings(interruptions_per_hour=rate)).saving_usd
        for rate in (0.01, 0.05, 0.1, 0.5, 1.0, 4.0)
    ]
    assert savings == sorted(savings, reverse=True)
    assert len(set(savings)) == len(savings)


def test_costlier_checkpoints_and_restarts_save_less() -> None:
    by_checkpoint = [
        project_spot(8000, CostSettings(checkpoint_seconds=c)).saving_usd for c in (5, 30, 300)
    ]
    by_restart = [
        project_spot(8000, CostSettings(restart_seconds=r)).saving_usd for r in (0, 120, 900)
    ]
    assert by_checkpoint == sorted(by_checkpoint, reverse=True)
    assert by_restart == sorted(by_restart, reverse=True)


def test_training_cost_metrics() -> None:
    cost = TrainingCost("A100-80GB", 4, 5400, GpuPrices(on_demand_per_hour=3.0))
    metrics = cost.as_metrics()
    assert metrics["cost_device_count"] == 4
    assert metrics["cost_wall_hours"] == pytest.approx(1.5)
    assert metrics["cost_gpu_hours"] == pytest.approx(6.0)
    assert metrics["cost_on_demand_usd_per_device_hour"] == 3.0
    assert metrics["cost_spot_usd_per_device_hour"] == pytest.approx(1.2)
    assert metrics["cost_usd"] == pytest.approx(18.0)
    assert metrics["cost_spot_usd"] == pytest.approx(7.2)
    assert cost.as_tags()["cost.device_type"] == "A100-80GB"


# --- bad inputs -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: GpuPrices(on_demand_per_hour=-1.0), "on_demand_per_hour"),
        (lambda: GpuPrices(on_demand_per_hour=2.0, spot_discount=1.0), "spot_discount"),
        (lambda: GpuPrices(on_demand_per_hour=2.0, spot_discount=-0.1), "spot_discount"),
        (lambda: CostSettings(spot_discount=1.5), "spot_discount"),
        (lambda: CostSettings(on_demand_monthly_usd=-8000), "on_demand_monthly_usd"),
        (lambda: CostSettings(interruptions_per_hour=0), "interruptions_per_hour"),
        (lambda: CostSettings(interruptions_per_hour=-0.1), "interruptions_per_hour"),
        (lambda: CostSettings(checkpoint_seconds=-1), "checkpoint_seconds"),
        (lambda: CostSettings(restart_seconds=-1), "restart_seconds"),
        (lambda: CostSettings(interval_method="fastest"), "interval_method"),  # type: ignore[arg-type]
        (lambda: young_interval(30, 0), "mtbf_seconds"),
        (lambda: daly_interval(30, -3600), "mtbf_seconds"),
        (lambda: daly_interval(30, math.inf), "mtbf_seconds"),
        (lambda: spot_overhead(0, 30, 120, 3600), "interval_seconds"),
        (lambda: TrainingCost("A100", 1, -5, GpuPrices(2.0)), "wall_seconds"),
        (lambda: TrainingCost("A100", -1, 5, GpuPrices(2.0)), "device_count"),
        (lambda: TrainingCost("", 1, 5, GpuPrices(2.0)), "device_type"),
        (lambda: project_spot(-1, CostSettings()), "on_demand_usd"),
    ],
)
def test_bad_input_names_the_input(make: object, name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}=.*expected") as err:
        make()  # type: ignore[operator]
    assert name in str(err.value)


# --- a real MLflow store ----------------------------------------------------------------------


def _ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Milliseconds since the epoch (MLflow's run start time) of a UTC time."""
    return int(datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp() * 1000)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly created SQLite MLflow store (creating one is the slow part: done once)."""
    import mlflow

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def tracking_uri(empty_store: Path, tmp_path: Path) -> Iterator[str]:
    """A test's own copy of the empty store; MLflow's global tracking URI is restored after."""
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, db)
    previous = mlflow.get_tracking_uri()
    yield f"sqlite:///{db}"
    mlflow.set_tracking_uri(previous)


def test_monthly_spend_from_recorded_runs(tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    exp = client.create_experiment("train", artifact_location=(tmp_path / "art").as_uri())
    other = client.create_experiment("other", artifact_location=(tmp_path / "art2").as_uri())
    a100, h100 = GpuPrices(on_demand_per_hour=3.0), GpuPrices(4.0, spot_discount=0.7)
    # October: 4 x A100 for 2 h (24 $) + 1 x H100 for 30 min (2 $), in two experiments
    r1 = client.create_run(exp, start_time=_ms(2026, 10, 3, 8)).info.run_id
    r2 = client.create_run(other, start_time=_ms(2026, 10, 31, 23, 59)).info.run_id
    # November: 8 x H100 for 1.5 h (48 $), recorded on the active run
    r3 = client.create_run(exp, start_time=_ms(2026, 11, 1, 0, 1)).info.run_id
    # a run without cost metrics is ignored
    client.create_run(exp, start_time=_ms(2026, 11, 2))
    record_training_cost("A100-80GB", 4, 7200, a100, run_id=r1, tracking_uri=tracking_uri)
    record_training_cost("H100", 1, 1800, h100, run_id=r2, tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(run_id=r3):
        cost = record_training_cost("H100", 8, 5400, h100)
    assert cost.on_demand_usd == pytest.approx(48.0)

    run = client.get_run(r2)
    assert run.data.tags["cost.device_type"] == "H100"
    assert run.data.metrics["cost_usd"] == pytest.approx(2.0)
    assert run.data.metrics["cost_spot_usd_per_device_hour"] == pytest.approx(1.2)

    months = monthly_spend(tracking_uri)
    assert [m.month for m in months] == ["2026-10", "2026-11"]
    assert months[0].on_demand_usd == pytest.approx(26.0)
    assert months[0].runs == 2
    assert months[0].gpu_hours == pytest.approx(8.5)
    assert months[1].on_demand_usd == pytest.approx(48.0)
    assert months[1].runs == 1

    report = cost_report(months, CostSettings(), now=datetime(2026, 12, 4, tzinfo=UTC))
    assert report.baseline_source == "history"
    assert report.projection.on_demand_usd == pytest.approx(37.0)  # mean of 26 and 48
    assert report.months[1][1].spot_usd == pytest.approx(
        48 * 0.4 * (1 + report.projection.overhead_fraction)
    )


def test_record_without_a_run_is_refused(tracking_uri: str) -> None:
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    assert mlflow.active_run() is None
    with pytest.raises(ValueError, match="run_id"):
        record_training_cost("A100", 1, 60, GpuPrices(2.0))


def test_empty_store_has_no_months(tracking_uri: str) -> None:
    assert monthly_spend(tracking_uri) == []


# --- the report -------------------------------------------------------------------------------


def test_report_is_written_atomically_and_says_when_it_uses_the_baseline(tmp_path: Path) -> None:
    report = cost_report([], CostSettings(), now=datetime(2026, 12, 4, 9, 30, tzinfo=UTC))
    path = write_report(report, tmp_path / "reports")
    assert path == tmp_path / "reports" / "cost-20261204T093000Z.md"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
    text = path.read_text()
    assert "configured on-demand spend of $8,000.00" in text
    assert "| projected spot | $3,341.32 |" in text
    assert "| saving | $4,658.68 (58.2%) |" in text
    assert "No recorded training runs." in text

    history = [MonthlySpend("2026-10", 9000.0, 3000.0, 12)]
    text = render_markdown(cost_report(history, CostSettings()))
    assert "mean on-demand spend of the 1 month(s)" in text
    assert "| 2026-10 | 12 | 3,000.0 | $9,000.00 |" in text
