"""GPU cost: what training runs cost on demand, and what they would cost on spot capacity.

**Recording.** Each training run records its GPU usage and the configured prices on its MLflow
run with :func:`record_training_cost`, in one batch:

============================================  ===============================================
name                                          meaning
============================================  ===============================================
tag ``cost.device_type``                      device type, e.g. ``A100-80GB``
tag ``cost.currency``                         always ``USD``
metric ``cost_device_count``                  devices the run held
metric ``cost_wall_hours``                    wall-clock hours the run held them
metric ``cost_gpu_hours``                     ``device_count * wall_hours``
metric ``cost_on_demand_usd_per_device_hour`` configured on-demand price of one device-hour
metric ``cost_spot_usd_per_device_hour``      configured spot price of one device-hour
                                              (on-demand price * (1 - spot discount))
metric ``cost_usd``                           what the run cost on demand: gpu hours * price
metric ``cost_spot_usd``                      the same hours at the spot price (no rework)
============================================  ===============================================

**History.** :func:`monthly_spend` reads every run carrying ``cost_usd`` from a tracking store
and sums it by calendar month (UTC) of the run's start time.

**Spot projection.** :func:`project_spot` prices a month of on-demand spend on spot capacity.
Spot instances are interrupted at ``interruptions_per_hour`` (mean time between failures
``M = 3600 / interruptions_per_hour`` seconds); the job writes a checkpoint (``C`` seconds)
every ``tau`` seconds of work and needs ``R`` seconds to restart after an interruption. The
optimal interval is Young's ``sqrt(2 C M)`` or Daly's higher-order
``sqrt(2 C M) * (1 + sqrt(C / 2M) / 3 + C / (9 * 2M)) - C`` (for ``C < 2M``, else ``M``).
Each interruption loses on average half an interval of work plus the restart
(``tau / 2 + R``), so to first order the overhead fraction of extra GPU time is::

    overhead = C / tau  +  (tau / 2 + R) / M          # checkpoint writes + rework

and ``spot spend = on-demand spend * (1 - discount) * (1 + overhead)``.

Plain Python: no Prefect, no Hydra. MLflow is imported inside the functions that use it.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlinfra_ops._atomic import write_text_atomic

__all__ = [
    "COST_METRICS",
    "COST_USD",
    "DEVICE_TYPE_TAG",
    "CostReport",
    "CostSettings",
    "GpuPrices",
    "MonthlySpend",
    "SpotProjection",
    "TrainingCost",
    "cost_report",
    "daly_interval",
    "monthly_spend",
    "project_spot",
    "record_training_cost",
    "render_markdown",
    "spot_overhead",
    "summary_rows",
    "write_report",
    "young_interval",
]

DEVICE_TYPE_TAG = "cost.device_type"
CURRENCY_TAG = "cost.currency"
COST_USD = "cost_usd"
COST_METRICS = (
    "cost_device_count",
    "cost_wall_hours",
    "cost_gpu_hours",
    "cost_on_demand_usd_per_device_hour",
    "cost_spot_usd_per_device_hour",
    COST_USD,
    "cost_spot_usd",
)

IntervalMethod = Literal["daly", "young"]


def _require(ok: bool, name: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid; expected {expected}")


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _check_discount(value: float, name: str = "spot_discount") -> None:
    _require(
        _finite(value) and 0 <= value < 1,
        name,
        value,
        "a fraction in [0, 1) (0.6 = spot costs 40% of on demand)",
    )


@dataclass(frozen=True)
class GpuPrices:
    """Configured prices of one device-hour, in USD."""

    on_demand_per_hour: float
    spot_discount: float = 0.6

    def __post_init__(self) -> None:
        _require(
            _finite(self.on_demand_per_hour) and self.on_demand_per_hour >= 0,
            "on_demand_per_hour",
            self.on_demand_per_hour,
            "a non-negative USD price per device-hour",
        )
        _check_discount(self.spot_discount)

    @property
    def spot_per_hour(self) -> float:
        return self.on_demand_per_hour * (1 - self.spot_discount)


@dataclass(frozen=True)
class TrainingCost:
    """What one training run's GPU time cost; ``as_metrics`` gives its MLflow metrics."""

    device_type: str
    device_count: int
    wall_seconds: float
    prices: GpuPrices

    def __post_init__(self) -> None:
        _require(
            isinstance(self.device_type, str) and self.device_type.strip() != "",
            "device_type",
            self.device_type,
            "a non-empty device name such as 'A100-80GB'",
        )
        _require(
            isinstance(self.device_count, int) and self.device_count >= 0,
            "device_count",
            self.device_count,
            "a non-negative integer",
        )
        _require(
            _finite(self.wall_seconds) and self.wall_seconds >= 0,
            "wall_seconds",
            self.wall_seconds,
            "a non-negative number of seconds",
        )

    @property
    def wall_hours(self) -> float:
        return self.wall_seconds / 3600

    @property
    def gpu_hours(self) -> float:
        return self.device_count * self.wall_hours

    @property
    def on_demand_usd(self) -> float:
        return self.gpu_hours * self.prices.on_demand_per_hour

    @property
    def spot_usd(self) -> float:
        return self.gpu_hours * self.prices.spot_per_hour

    def as_metrics(self) -> dict[str, float]:
        return {
            "cost_device_count": float(self.device_count),
            "cost_wall_hours": self.wall_hours,
            "cost_gpu_hours": self.gpu_hours,
            "cost_on_demand_usd_per_device_hour": self.prices.on_demand_per_hour,
            "cost_spot_usd_per_device_hour": self.prices.spot_per_hour,
            COST_USD: self.on_demand_usd,
            "cost_spot_usd": self.spot_usd,
        }

    def as_tags(self) -> dict[str, str]:
        return {DEVICE_TYPE_TAG: self.device_type, CURRENCY_TAG: "USD"}


def record_training_cost(
    device_type: str,
    device_count: int,
    wall_seconds: float,
    prices: GpuPrices,
    *,
    run_id: str | None = None,
    tracking_uri: str | None = None,
) -> TrainingCost:
    """Log a run's GPU cost as tags and metrics (one batch) on ``run_id`` or the active run.

    ``tracking_uri`` defaults to MLflow's current tracking URI.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network but registries
    import mlflow
    from mlflow.entities import Metric, RunTag

    cost = TrainingCost(device_type, device_count, wall_seconds, prices)
    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            raise ValueError(
                "run_id=None and there is no active MLflow run; expected a run id or a run "
                "started with mlflow.start_run()"
            )
        run_id = active.info.run_id
    client = mlflow.MlflowClient(tracking_uri=tracking_uri or mlflow.get_tracking_uri())
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now_ms, 0) for k, v in cost.as_metrics().items()],
        tags=[RunTag(k, v) for k, v in cost.as_tags().items()],
    )
    return cost


@dataclass(frozen=True)
class MonthlySpend:
    """On-demand GPU spend of the runs that started in one calendar month (UTC)."""

    month: str  # "YYYY-MM"
    on_demand_usd: float
    gpu_hours: float
    runs: int


def monthly_spend(tracking_uri: str) -> list[MonthlySpend]:
    """Sum ``cost_usd`` of every run (all experiments) by calendar month of its start time."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network but registries
    import mlflow
    from mlflow.entities import ViewType

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    usd: dict[str, float] = defaultdict(float)
    hours: dict[str, float] = defaultdict(float)
    runs: dict[str, int] = defaultdict(int)
    if not experiment_ids:
        return []
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=f"metrics.{COST_USD} >= 0",
            run_view_type=ViewType.ALL,
            max_results=1000,
            page_token=token,
        )
        for run in page:
            month = datetime.fromtimestamp(run.info.start_time / 1000, UTC).strftime("%Y-%m")
            usd[month] += float(run.data.metrics[COST_USD])
            hours[month] += float(run.data.metrics.get("cost_gpu_hours", 0.0))
            runs[month] += 1
        token = page.token
        if not token:
            break
    return [MonthlySpend(m, usd[m], hours[m], runs[m]) for m in sorted(usd)]


def young_interval(checkpoint_seconds: float, mtbf_seconds: float) -> float:
    """Young's optimal checkpoint interval ``sqrt(2 C M)``, in seconds of work."""
    _check_interval_inputs(checkpoint_seconds, mtbf_seconds)
    return math.sqrt(2 * checkpoint_seconds * mtbf_seconds)


def daly_interval(checkpoint_seconds: float, mtbf_seconds: float) -> float:
    """Daly's higher-order optimum; ``M`` itself when a checkpoint takes ``2M`` or longer."""
    _check_interval_inputs(checkpoint_seconds, mtbf_seconds)
    c, m = checkpoint_seconds, mtbf_seconds
    if c >= 2 * m:
        return m
    return math.sqrt(2 * c * m) * (1 + math.sqrt(c / (2 * m)) / 3 + c / (9 * 2 * m)) - c


def _check_interval_inputs(checkpoint_seconds: float, mtbf_seconds: float) -> None:
    _require(
        _finite(checkpoint_seconds) and checkpoint_seconds >= 0,
        "checkpoint_seconds",
        checkpoint_seconds,
        "a non-negative number of seconds to write one checkpoint",
    )
    _require(
        _finite(mtbf_seconds) and mtbf_seconds > 0,
        "mtbf_seconds",
        mtbf_seconds,
        "a positive mean time between interruptions, in seconds",
    )


def spot_overhead(
    interval_seconds: float,
    checkpoint_seconds: float,
    restart_seconds: float,
    mtbf_seconds: float,
) -> float:
    """Extra GPU time per unit of work: ``C / tau + (tau / 2 + R) / M`` (first order)."""
    _check_interval_inputs(checkpoint_seconds, mtbf_seconds)
    _require(
        _finite(restart_seconds) and restart_seconds >= 0,
        "restart_seconds",
        restart_seconds,
        "a non-negative number of seconds to restart after an interruption",
    )
    _require(
        _finite(interval_seconds) and (interval_seconds > 0 or checkpoint_seconds == 0),
        "interval_seconds",
        interval_seconds,
        "a positive checkpoint interval, in seconds",
    )
    writing = checkpoint_seconds / interval_seconds if checkpoint_seconds > 0 else 0.0
    return writing + (interval_seconds / 2 + restart_seconds) / mtbf_seconds


@dataclass(frozen=True)
class CostSettings:
    """Inputs of the cost report (the Hydra ``cost`` group instantiates this)."""

    on_demand_monthly_usd: float = 8000.0  # the baseline when the run history is empty
    spot_discount: float = 0.6
    interruptions_per_hour: float = 0.1
    checkpoint_seconds: float = 30.0
    restart_seconds: float = 120.0
    interval_method: IntervalMethod = "daly"

    def __post_init__(self) -> None:
        _require(
            _finite(self.on_demand_monthly_usd) and self.on_demand_monthly_usd >= 0,
            "on_demand_monthly_usd",
            self.on_demand_monthly_usd,
            "a non-negative monthly spend in USD",
        )
        _check_discount(self.spot_discount)
        _require(
            _finite(self.interruptions_per_hour) and self.interruptions_per_hour > 0,
            "interruptions_per_hour",
            self.interruptions_per_hour,
            "a positive spot interruption rate (0.1 = one per 10 hours), i.e. a positive MTBF",
        )
        _check_interval_inputs(self.checkpoint_seconds, self.mtbf_seconds)
        _require(
            _finite(self.restart_seconds) and self.restart_seconds >= 0,
            "restart_seconds",
            self.restart_seconds,
            "a non-negative number of seconds to restart after an interruption",
        )
        _require(
            self.interval_method in ("daly", "young"),
            "interval_method",
            self.interval_method,
            "'daly' or 'young'",
        )

    @property
    def mtbf_seconds(self) -> float:
        return 3600 / self.interruptions_per_hour


@dataclass(frozen=True)
class SpotProjection:
    """One month of on-demand spend priced on spot capacity, net of checkpoints and rework."""

    on_demand_usd: float
    spot_usd: float
    saving_usd: float
    saving_fraction: float
    interval_seconds: float  # the chosen optimal checkpoint interval
    young_interval_seconds: float
    daly_interval_seconds: float
    rework_seconds_per_interruption: float  # interval / 2 + restart
    overhead_fraction: float  # checkpoint writes + rework, per unit of work


def project_spot(on_demand_usd: float, settings: CostSettings) -> SpotProjection:
    """Spot spend = on-demand spend * (1 - discount) * (1 + overhead) at the optimal interval."""
    _require(
        _finite(on_demand_usd) and on_demand_usd >= 0,
        "on_demand_usd",
        on_demand_usd,
        "a non-negative spend in USD",
    )
    c, m, r = settings.checkpoint_seconds, settings.mtbf_seconds, settings.restart_seconds
    young, daly = young_interval(c, m), daly_interval(c, m)
    interval = daly if settings.interval_method == "daly" else young
    overhead = spot_overhead(interval, c, r, m)
    spot = on_demand_usd * (1 - settings.spot_discount) * (1 + overhead)
    saving = on_demand_usd - spot
    return SpotProjection(
        on_demand_usd=on_demand_usd,
        spot_usd=spot,
        saving_usd=saving,
        saving_fraction=saving / on_demand_usd if on_demand_usd > 0 else 0.0,
        interval_seconds=interval,
        young_interval_seconds=young,
        daly_interval_seconds=daly,
        rework_seconds_per_interruption=interval / 2 + r,
        overhead_fraction=overhead,
    )


@dataclass(frozen=True)
class CostReport:
    """The monthly history, the baseline month it implies, and its spot projection."""

    settings: CostSettings
    history: list[MonthlySpend]
    baseline_source: str  # "history" or "configured"
    projection: SpotProjection
    months: list[tuple[MonthlySpend, SpotProjection]]
    created_at: datetime

    def as_dict(self) -> dict[str, Any]:
        """The headline numbers and the monthly history as plain values."""
        p = self.projection
        return {
            "baseline_source": self.baseline_source,
            "on_demand_monthly_usd": p.on_demand_usd,
            "spot_monthly_usd": p.spot_usd,
            "saving_usd": p.saving_usd,
            "saving_fraction": p.saving_fraction,
            "interval_seconds": p.interval_seconds,
            "young_interval_seconds": p.young_interval_seconds,
            "daly_interval_seconds": p.daly_interval_seconds,
            "rework_seconds_per_interruption": p.rework_seconds_per_interruption,
            "overhead_fraction": p.overhead_fraction,
            "months": {m.month: m.on_demand_usd for m in self.history},
        }


def cost_report(
    history: Sequence[MonthlySpend],
    settings: CostSettings,
    *,
    now: datetime | None = None,
) -> CostReport:
    """Project spot spend for each month of history and for the baseline month.

    The baseline is the mean monthly on-demand spend over the months with recorded runs, or
    ``settings.on_demand_monthly_usd`` when there are none.
    """
    history = list(history)
    if history:
        baseline = sum(m.on_demand_usd for m in history) / len(history)
        source = "history"
    else:
        baseline, source = settings.on_demand_monthly_usd, "configured"
    return CostReport(
        settings=settings,
        history=history,
        baseline_source=source,
        projection=project_spot(baseline, settings),
        months=[(m, project_spot(m.on_demand_usd, settings)) for m in history],
        created_at=now or datetime.now(UTC),
    )


def _usd(value: float) -> str:
    return f"${value:,.2f}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min ({seconds:,.0f} s)"


def summary_rows(report: CostReport) -> list[tuple[str, str]]:
    """The headline numbers as (label, value) rows."""
    p, s = report.projection, report.settings
    return [
        ("monthly on-demand", _usd(p.on_demand_usd)),
        ("projected spot", _usd(p.spot_usd)),
        ("saving", f"{_usd(p.saving_usd)} ({p.saving_fraction:.1%})"),
        (f"optimal checkpoint interval ({s.interval_method})", _minutes(p.interval_seconds)),
    ]


def render_markdown(report: CostReport) -> str:
    """The report as Markdown."""
    p, s = report.projection, report.settings
    if report.baseline_source == "history":
        basis = (
            f"Baseline: mean on-demand spend of the {len(report.history)} month(s) with "
            "recorded training runs (MLflow metric `cost_usd`)."
        )
    else:
        basis = (
            "No training runs with recorded cost were found: the baseline is the configured "
            f"on-demand spend of {_usd(s.on_demand_monthly_usd)} per month "
            "(`cost.on_demand_monthly_usd`)."
        )
    lines = [
        "# GPU cost report",
        "",
        f"Created {report.created_at.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        "",
        basis,
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {label} | {value} |" for label, value in summary_rows(report)),
        "",
        "## Spot assumptions",
        "",
        "| input | value |",
        "| --- | --- |",
        f"| spot discount | {s.spot_discount:.0%} |",
        f"| interruptions per hour | {s.interruptions_per_hour:g} "
        f"(MTBF {s.mtbf_seconds / 3600:.2f} h) |",
        f"| checkpoint cost | {s.checkpoint_seconds:g} s |",
        f"| restart cost | {s.restart_seconds:g} s |",
        "",
        "## Checkpointing",
        "",
        "| | |",
        "| --- | --- |",
        f"| Young interval sqrt(2CM) | {_minutes(p.young_interval_seconds)} |",
        f"| Daly interval | {_minutes(p.daly_interval_seconds)} |",
        f"| used ({s.interval_method}) | {_minutes(p.interval_seconds)} |",
        f"| rework per interruption (interval / 2 + restart) | "
        f"{_minutes(p.rework_seconds_per_interruption)} |",
        f"| overhead (C / interval + rework / MTBF) | {p.overhead_fraction:.2%} |",
        "",
        "Spot spend = on-demand spend x (1 - discount) x (1 + overhead).",
        "",
        "## Monthly history",
        "",
    ]
    if report.months:
        lines += [
            "| month | runs | GPU hours | on-demand | projected spot | saving |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            *(
                f"| {m.month} | {m.runs} | {m.gpu_hours:,.1f} | {_usd(m.on_demand_usd)} | "
                f"{_usd(mp.spot_usd)} | {_usd(mp.saving_usd)} |"
                for m, mp in report.months
            ),
        ]
    else:
        lines.append("No recorded training runs.")
    return "\n".join(lines) + "\n"


def write_report(report: CostReport, reports_dir: Path) -> Path:
    """Write the Markdown report to ``reports_dir/cost-<stamp>.md`` atomically; return it."""
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    path = reports_dir / f"cost-{report.created_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.md"
    return write_text_atomic(path, render_markdown(report))
