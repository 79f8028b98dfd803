"""Retrain flow: the platform's main command.

    uv run python -m flows.retrain [hydra overrides, e.g. model=churn features.n_customers=2000,
                                     model=anomaly_detector compute=gpu,
                                     model=event_classifier taxonomy=v2]

On an empty platform home it first runs the materialize flow on the demo warehouse. Before
training it checks the freshness of the feature views the model reads: per the model's policy it
stops at once (churn) or alerts once and waits for the features to land (the weekly anomaly
detector), and never trains on stale data. Then each selected model is trained, evaluated against
its champion on the same window, reported, registered in MLflow and gated; its training time and
device cost are recorded on its MLflow run.

The event classifier trains under the taxonomy that ``taxonomy`` names: a version shipped with
``mlinfra_features`` (``v1``), a YAML file path, or another version name (``v2``), which means
the newest taxonomy of that version proposed by ``python -m flows.label_review`` under
``<home>/reports/labels/<time>/taxonomy-v2.yaml``. When there is none the run fails and says to
run the label review first; it does not run it by itself, because a proposed taxonomy is meant
to be read (its report) before a model is trained on it.
"""

from __future__ import annotations

import os

# Ray reads this when it is first imported (Feast may import it): workers run in this very
# environment, not under a fresh `uv run` of the project.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task

from flows.config import build, load
from flows.label_review import resolve_taxonomy
from flows.materialize import materialize, warehouse_dir
from flows.monitor import delivery_report, incidents_for
from mlinfra_features import (
    VIEWS,
    FeatureStoreSettings,
    Warehouse,
    service_views,
    training_set,
)
from mlinfra_models import (
    ANOMALY_LABEL,
    AnomalySettings,
    AnomalyWindow,
    ChurnSettings,
    EventClassifierSettings,
    RegistrySettings,
    churn_labels,
    config_hash,
    retrain_anomaly_detector,
    retrain_churn,
    retrain_event_classifier,
)
from mlinfra_models.labels import Taxonomy, TaxonomyError, load_taxonomy
from mlinfra_ops import (
    GpuPrices,
    WaitPolicy,
    record_training_cost,
    wait_for_fresh_features,
)


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
    stale data. One "features late" alert per incident through the configured sinks (the
    ``alerts`` group, as the monitor's), a recovery when they land, a clear failure if they
    never do."""
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    policy: WaitPolicy = build(cfg["model"][model]["freshness"])
    views = sorted({v for s in services for v in service_views(s)})
    logger = get_run_logger()
    incidents = incidents_for(cfg)
    try:
        report = wait_for_fresh_features(
            store, views, policy, job=f"retrain {model}", incidents=incidents, log=logger.info
        )
    finally:
        delivery_report(incidents)
    return {v.feature_view: v.state for v in report}


def start_ray(compute: dict[str, Any]) -> None:
    """Start (or connect to) Ray per the ``compute`` config, once per process."""
    import ray

    if ray.is_initialized():
        return
    if compute["address"]:
        ray.init(address=compute["address"])
    else:
        ray.init(num_cpus=compute["num_cpus"], include_dashboard=False)


def record_cost(
    cfg: dict[str, Any], run_id: str, wall_seconds: float, *, device_count: int, on_gpu: bool
) -> None:
    """The training's device time and configured prices, on its MLflow run (CPU time is
    recorded at no cost, so that every run carries the same fields)."""
    compute = cfg["compute"]
    registry: RegistrySettings = build(cfg["registry"])
    record_training_cost(
        compute["device_type"] if on_gpu else "cpu",
        device_count,
        wall_seconds,
        GpuPrices(
            on_demand_per_hour=compute["on_demand_per_hour"] if on_gpu else 0.0,
            spot_discount=compute["spot_discount"],
        ),
        run_id=run_id,
        tracking_uri=registry.uri,
    )


@task
def retrain_churn_task(cfg: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
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
    # CatBoost trains on this process's CPUs, whatever the compute config says about Ray.
    record_cost(cfg, result.run_id, time.perf_counter() - started, device_count=1, on_gpu=False)
    return {
        "version": result.version,
        "semver": result.semver,
        "alias": result.alias,
        "decision": result.decision.reason,
        "report": str(result.report_path),
        "roc_auc": result.metrics["roc_auc"],
        "ablation_auc": result.ablation_auc,
    }


def anomaly_rows(store: FeatureStoreSettings, window: AnomalyWindow) -> pl.DataFrame:
    """Every account-day of the newest ``train_days + evaluation_days`` in the offline store,
    with the demo's hidden truth as ``is_anomaly`` (used only to evaluate).

    The feature pipeline stamps a day's activity at the end of that day (``day + 1 day``).
    """
    days = window.train_days + window.evaluation_days
    keys = pl.scan_parquet(VIEWS["account_activity_daily"].table_path(store.offline_dir)).select(
        "customer_id", "event_timestamp"
    )
    end = keys.select(pl.col("event_timestamp").max()).collect().item()
    if end is None:
        raise ValueError("the offline store has no account activity; expected daily rows")
    truth = (
        Warehouse(warehouse_dir(store))
        .scan("anomaly_truth")
        .select(
            "customer_id",
            (pl.col("day").cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)).alias(
                "event_timestamp"
            ),
            pl.lit(True).alias(ANOMALY_LABEL),
        )
        .unique(["customer_id", "event_timestamp"])
    )
    return (
        keys.filter(pl.col("event_timestamp") > end - timedelta(days=days))
        .with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
        .join(truth, on=["customer_id", "event_timestamp"], how="left")
        .with_columns(pl.col(ANOMALY_LABEL).fill_null(False))
        .collect()
    )


@task
def retrain_anomaly_task(cfg: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    node = cfg["model"]["anomaly_detector"]
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    settings: AnomalySettings = build(node["settings"])
    window: AnomalyWindow = build(node["window"])
    start_ray(cfg["compute"])
    result = retrain_anomaly_detector(
        anomaly_rows(store, window),
        lambda service, rows: training_set(store, service, rows),
        settings,
        window=window,
        registry=build(cfg["registry"]),
        report_dir=Path(cfg["reports_dir"]),
        gate_settings=build(node["gate"]),
        tags={"git_revision": git_revision(), "config_hash": config_hash(cfg)},
        log=logger.info,
    )
    record_cost(
        cfg,
        result.run_id,
        result.train_seconds,
        device_count=settings.num_workers,
        on_gpu=settings.use_gpu,
    )
    return {
        "version": result.version,
        "semver": result.semver,
        "alias": result.alias,
        "decision": result.decision.reason,
        "report": str(result.report_path),
        "pr_auc": result.metrics["pr_auc"],
        "base_rate": result.metrics["base_rate"],
        "precision_at_k": result.metrics["precision_at_k"],
        "recall_at_threshold": result.metrics["recall_at_threshold"],
        "train_seconds": result.train_seconds,
        "training": result.training,
        "run_id": result.run_id,
    }


def event_taxonomy(name: str, proposals_dir: Path) -> tuple[Taxonomy, str]:
    """The taxonomy ``taxonomy=NAME`` selects, and where it came from (see the module doc)."""
    try:
        return resolve_taxonomy(name), name
    except TaxonomyError:
        if Path(name).is_file():
            raise  # a file that is not a valid taxonomy
    proposals = sorted(Path(proposals_dir).glob(f"*/taxonomy-{name}.yaml"))
    if not proposals:
        raise FileNotFoundError(
            f"taxonomy={name}: not a shipped taxonomy version or a file, and no proposed "
            f"taxonomy {proposals_dir}/*/taxonomy-{name}.yaml exists; run "
            "`uv run python -m flows.label_review` first (it proposes taxonomy-v2.yaml), or "
            "pass taxonomy=/path/to/taxonomy.yaml"
        )
    return load_taxonomy(proposals[-1]), str(proposals[-1])


@task
def retrain_event_task(cfg: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
    node = cfg["model"]["event_classifier"]
    taxonomy, origin = event_taxonomy(str(cfg["taxonomy"]), Path(node["proposals_dir"]))
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    settings: EventClassifierSettings = build(node["settings"])
    warehouse = Warehouse(warehouse_dir(store))
    annotations = warehouse.scan("event_annotations").collect()
    events = (
        warehouse.scan("product_events")
        .select("event_id", "event_timestamp")
        .join(annotations.lazy().select("event_id").unique(), on="event_id", how="semi")
        .collect()
    )
    logger.info(f"taxonomy {taxonomy.version} ({len(taxonomy)} categories) from {origin}")
    result = retrain_event_classifier(
        annotations,
        events,
        lambda service, rows: training_set(store, service, rows),
        settings,
        taxonomy=taxonomy,
        annotation_taxonomy=resolve_taxonomy(str(node["annotation_taxonomy"])),
        registry=build(cfg["registry"]),
        report_dir=Path(cfg["reports_dir"]),
        gate_settings=build(node["gate"]),
        tags={"git_revision": git_revision(), "config_hash": config_hash(cfg)},
        log=logger.info,
    )
    record_cost(cfg, result.run_id, time.perf_counter() - started, device_count=1, on_gpu=False)
    macro_f1 = result.metrics["macro_f1"]
    note = f"event_classifier: macro-F1 {macro_f1:.4f} under {result.taxonomy_version}"
    change = result.macro_f1_change
    if change is not None:
        kind = "like-for-like" if result.like_for_like else "the label sets differ"
        note += (
            f"; change vs the {result.champion_taxonomy_version} champion "
            f"{change.value:+.4f} [{change.low:+.4f}, {change.high:+.4f}] ({kind})"
        )
    if result.champion_mapped_macro_f1 is not None:
        note += (
            f"; the champion's predictions mapped to {result.taxonomy_version}: "
            f"{result.champion_mapped_macro_f1:.4f}"
        )
    return {
        "version": result.version,
        "semver": result.semver,
        "alias": result.alias,
        "decision": result.decision.reason,
        "report": str(result.report_path),
        "run_id": result.run_id,
        "taxonomy_version": result.taxonomy_version,
        "taxonomy_source": origin,
        "macro_f1": macro_f1,
        "accuracy": result.metrics["accuracy"],
        "champion_taxonomy_version": result.champion_taxonomy_version,
        "champion_macro_f1": (result.champion_metrics or {}).get("macro_f1"),
        "macro_f1_change": change.value if change is not None else None,
        "like_for_like": result.like_for_like,
        "champion_mapped_macro_f1": result.champion_mapped_macro_f1,
        "note": note,
    }


TRAINERS = {
    "churn": (
        retrain_churn_task,
        lambda cfg: [
            cfg["model"]["churn"]["settings"]["feature_service"],
            cfg["model"]["churn"]["settings"]["baseline_feature_service"],
        ],
    ),
    "anomaly_detector": (
        retrain_anomaly_task,
        lambda cfg: [cfg["model"]["anomaly_detector"]["window"]["feature_service"]],
    ),
    "event_classifier": (
        retrain_event_task,
        lambda cfg: [cfg["model"]["event_classifier"]["settings"]["feature_service"]],
    ),
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
        if results[name].get("note"):
            print(results[name]["note"])
    return results


def main(argv: list[str] | None = None) -> None:
    retrain(load("retrain", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
