"""Cost report flow: monthly GPU spend from run history, and what it would cost on spot.

    uv run python -m flows.cost_report [hydra overrides, e.g. cost.spot_discount=0.6
        cost.interruptions_per_hour=0.1 cost.checkpoint_seconds=30 cost.restart_seconds=120]

Reads every MLflow run that recorded its GPU cost (``mlinfra_ops.record_training_cost``), sums
the on-demand spend by calendar month, projects it on spot capacity (discount, interruptions,
checkpoint and restart costs, optimal checkpoint interval) and writes a Markdown report under
``<home>/reports/``. With no recorded runs it uses ``cost.on_demand_monthly_usd`` and says so.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from prefect import flow, task

from flows.config import build, load
from mlinfra_models import RegistrySettings
from mlinfra_ops import (
    CostSettings,
    MonthlySpend,
    cost_report,
    monthly_spend,
    summary_rows,
    write_report,
)


@task
def read_monthly_spend(registry_cfg: dict[str, Any]) -> list[MonthlySpend]:
    """Monthly on-demand spend from the tracking store; none when the local store is absent."""
    registry: RegistrySettings = build(registry_cfg)
    local_db = registry.home / "mlflow" / "mlflow.db"
    if registry.tracking_uri is None and not local_db.is_file():
        return []  # reading would create an empty store
    return monthly_spend(registry.uri)


@flow(name="cost_report", log_prints=True)
def cost_report_flow(cfg: dict[str, Any]) -> dict[str, Any]:
    """Write the GPU cost report; return its headline numbers and path."""
    settings: CostSettings = build(cfg["cost"])
    history = read_monthly_spend(cfg["registry"])
    report = cost_report(history, settings)
    path = write_report(report, Path(cfg["reports_dir"]))
    if report.baseline_source == "history":
        print(f"monthly spend from {len(history)} month(s) of recorded training runs")
    else:
        print(
            "no training runs with recorded cost: using the configured on-demand baseline "
            f"cost.on_demand_monthly_usd={settings.on_demand_monthly_usd:g}"
        )
    rows = summary_rows(report)
    width = max(len(label) for label, _ in rows)
    table = "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
    print(f"cost report: {path}\n{table}")
    return {**report.as_dict(), "report": str(path)}


def main(argv: list[str] | None = None) -> None:
    cost_report_flow(load("cost_report", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
