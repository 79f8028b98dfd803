"""Materialize flow: demo sources -> feature tables -> offline store -> Feast -> online store.

uv run python -m flows.materialize [hydra overrides, e.g. features.n_customers=2000]
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.config import build, load
from mlinfra_features import (
    DemoWarehouseSettings,
    FeatureStoreSettings,
    Warehouse,
    apply_repo,
    feature_tables,
    freshness,
    generate_demo_warehouse,
    materialize_incremental,
    write_feature_tables,
)


def warehouse_dir(store: FeatureStoreSettings) -> Path:
    return store.home / "warehouse"


@task(retries=2, retry_delay_seconds=5)
def prepare_sources(features_cfg: dict[str, Any]) -> str:
    """Generate the demo warehouse when configured; return its directory."""
    logger = get_run_logger()
    store: FeatureStoreSettings = build(features_cfg["store"])
    demo: DemoWarehouseSettings = build(features_cfg["warehouse"])
    root = warehouse_dir(store)
    refresh = features_cfg.get("refresh", "if_missing")
    if refresh not in ("if_missing", "always", "never"):
        raise ValueError(
            f"features.refresh must be one of if_missing, always, never; got {refresh!r}"
        )
    warehouse = Warehouse(root)
    if refresh == "always" or (refresh == "if_missing" and not warehouse.exists()):
        logger.info("generating the demo warehouse: %s customers", demo.n_customers)
        warehouse = generate_demo_warehouse(demo, root)
        logger.info("demo warehouse written to %s: %s", root, warehouse.manifest()["rows"])
    elif not warehouse.exists():
        raise FileNotFoundError(f"no warehouse at {root} and features.refresh is 'never'")
    return str(root)


@task(retries=1)
def build_offline_store(features_cfg: dict[str, Any], root: str) -> dict[str, int]:
    """Compute every feature table and write it to the offline store."""
    store: FeatureStoreSettings = build(features_cfg["store"])
    tables = feature_tables(
        Warehouse(Path(root)), churn_cadence=timedelta(days=features_cfg["churn_snapshot_days"])
    )
    write_feature_tables(store, tables)
    get_run_logger().info(
        "offline store: %s", {name: frame.height for name, frame in tables.items()}
    )
    return {name: frame.height for name, frame in tables.items()}


@task(retries=2, retry_delay_seconds=10)
def materialize_online(features_cfg: dict[str, Any], end: str) -> list[dict[str, Any]]:
    """Apply the Feast repo and materialize every view incrementally up to ``end``."""
    store: FeatureStoreSettings = build(features_cfg["store"])
    apply_repo(store)
    runs = materialize_incremental(store, end=datetime.fromisoformat(end))
    logger = get_run_logger()
    for run in runs:
        logger.info(
            "materialized %s (%s, %s]: %s rows",
            run.feature_view,
            run.window_start.isoformat(),
            run.window_end.isoformat(),
            run.rows,
        )
    return [{"feature_view": r.feature_view, "rows": r.rows} for r in runs]


@flow(name="materialize", log_prints=True)
def materialize(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Refresh sources, rebuild the offline store and materialize the online store."""
    cfg = cfg if cfg is not None else load("materialize", overrides)
    features_cfg = cfg["features"]
    root = prepare_sources(features_cfg)
    offline = build_offline_store(features_cfg, root)
    end = max(datetime.now(UTC), Warehouse(Path(root)).data_end() + timedelta(seconds=1))
    store: FeatureStoreSettings = build(features_cfg["store"])
    before = {v.feature_view: v.state for v in freshness(store)}
    runs = materialize_online(features_cfg, end.isoformat())
    states = {v.feature_view: v.state for v in freshness(store)}
    recovered = announce_recovered_views(before, states)
    print(f"feature store at {store.feast_dir}; freshness: {states}; recovered: {recovered}")
    return {"offline_rows": offline, "runs": runs, "freshness": states, "recovered": recovered}


#: The Prefect event a view emits when a materialization makes it fresh after it was late,
#: failed or missing; prefect.yaml triggers the weekly anomaly-detector retrain on it.
RECOVERED_EVENT = "mlinfra.feature_view.recovered"


def announce_recovered_views(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Emit :data:`RECOVERED_EVENT` for every view that was not fresh and now is."""
    from prefect.events import emit_event

    recovered = sorted(
        v for v, state in after.items() if state == "fresh" and before.get(v) != "fresh"
    )
    for view in recovered:
        emit_event(
            event=RECOVERED_EVENT,
            resource={"prefect.resource.id": f"mlinfra.feature_view.{view}", "view": view},
            payload={"was": before.get(view, "missing")},
        )
    return recovered


def main(argv: list[str] | None = None) -> None:
    materialize(load("materialize", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
