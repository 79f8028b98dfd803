"""Retrain flow: the platform's main command.

    uv run python -m flows.retrain [hydra overrides, e.g. model=churn features.n_customers=2000]

On an empty platform home it first runs the materialize flow on the demo warehouse. Before
training it checks the freshness of the feature views the model reads and stops with a clear
message when one is stale. Then each selected model is trained, evaluated against its champion
on the same window, reported, registered in MLflow and gated.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task

from flows.config import build, load
from flows.materialize import materialize, warehouse_dir
from mlinfra_features import (
    VIEWS,
    FeatureStoreSettings,
    Warehouse,
    service_views,
    training_set,
)
from mlinfra_models import ChurnSettings, churn_labels, config_hash, retrain_churn
from mlinfra_ops import LogSink, WaitPolicy, wait_for_fresh_features


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def platform_ready(store: FeatureStoreSettings) -> bool:
    """Whether the home has a warehouse, an offline store and materialized views."""
    return (
        Warehouse(warehouse_dir(store)).exists()
        and all(spec.table_path(store.offline_dir).is_file() for spec in VIEWS.values())
        and store.ledger_path.is_file()
    )


@task
def wait_for_features(cfg: dict[str, Any], model: str, services: list[str]) -> dict[str, str]:
    """Wait (per the model's policy) until every view the model reads is fresh; never train on
    stale data. One "features late" alert per wait; a clear failure if they never land."""
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    policy: WaitPolicy = build(cfg["model"][model]["freshness"])
    views = sorted({v for s in services for v in service_views(s)})
    logger = get_run_logger()
    report = wait_for_fresh_features(
        store, views, policy, job=f"retrain {model}", sinks=[LogSink(store.home)], log=logger.info
    )
    return {v.feature_view: v.state for v in report}


@task
def retrain_churn_task(cfg: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    settings: ChurnSettings = build(cfg["model"]["churn"]["settings"])
    warehouse = Warehouse(warehouse_dir(store))
    as_of_dates = (
        pl.scan_parquet(VIEWS["customer_profile"].table_path(store.offline_dir))
        .select(pl.col("event_timestamp").unique().sort())
        .collect()["event_timestamp"]
        .to_list()
    )
    labels = churn_labels(
        warehouse.scan("customers").collect(),
        warehouse.scan("churn_events").collect(),
        as_of_dates,
        warehouse.data_end(),
        settings.horizon,
    )
    result = retrain_churn(
        labels,
        lambda service, rows: training_set(store, service, rows),
        settings,
        build(cfg["registry"]),
        Path(cfg["reports_dir"]),
        gate_settings=build(cfg["model"]["churn"]["gate"]),
        tags={"git_revision": git_revision(), "config_hash": config_hash(cfg)},
        log=logger.info,
    )
    return {
        "version": result.version,
        "semver": result.semver,
        "alias": result.alias,
        "decision": result.decision.reason,
        "report": str(result.report_path),
        "roc_auc": result.metrics["roc_auc"],
        "ablation_auc": result.ablation_auc,
    }


TRAINERS = {
    "churn": (
        retrain_churn_task,
        lambda cfg: [
            cfg["model"]["churn"]["settings"]["feature_service"],
            cfg["model"]["churn"]["settings"]["baseline_feature_service"],
        ],
    )
}


@flow(name="retrain", log_prints=True)
def retrain(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Retrain every selected model kind (all by default)."""
    cfg = cfg if cfg is not None else load("retrain", overrides)
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    if not platform_ready(store):
        print(f"platform home {store.home} has no feature store yet: running materialize first")
        materialize(cfg)
    unknown = [m for m in cfg["model"]["selected"] if m not in TRAINERS]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; expected some of {sorted(TRAINERS)}")
    results = {}
    for name in cfg["model"]["selected"]:
        trainer, services = TRAINERS[name]
        wait_for_features(cfg, name, services(cfg))
        results[name] = trainer(cfg)
        print(
            f"{name}: version {results[name]['version']} ({results[name]['semver']}) -> "
            f"{results[name]['alias']}; report: {results[name]['report']}"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    retrain(load("retrain", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
