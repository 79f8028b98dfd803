"""mlinfra-ops: alerts and the platform's watchers (freshness, cost, ...)."""

from mlinfra_ops.alerts import Alert, AlertSink, LogSink, read_alert_log, send_alert
from mlinfra_ops.cost import (
    CostReport,
    CostSettings,
    GpuPrices,
    MonthlySpend,
    SpotProjection,
    TrainingCost,
    cost_report,
    daly_interval,
    monthly_spend,
    project_spot,
    record_training_cost,
    render_markdown,
    spot_overhead,
    summary_rows,
    write_report,
    young_interval,
)
from mlinfra_ops.freshness import FeaturesLateError, WaitPolicy, wait_for_fresh_features

__all__ = [
    "Alert",
    "AlertSink",
    "CostReport",
    "CostSettings",
    "FeaturesLateError",
    "GpuPrices",
    "LogSink",
    "MonthlySpend",
    "SpotProjection",
    "TrainingCost",
    "WaitPolicy",
    "cost_report",
    "daly_interval",
    "monthly_spend",
    "project_spot",
    "read_alert_log",
    "record_training_cost",
    "render_markdown",
    "send_alert",
    "spot_overhead",
    "summary_rows",
    "wait_for_fresh_features",
    "write_report",
    "young_interval",
]
