"""Model-performance flow: how the served churn model does in production (daily deployment).

    uv run python -m flows.model_performance [hydra overrides, e.g. auc_floor=0.8]

Reads the scoring service's prediction log (``<home>/predictions/churn/date=*/``), joins it with
churn outcomes as their 30-day windows mature, and writes a report per run: for every weekly
cohort the AUC estimated from the probabilities alone (CBPE, before outcomes) and, once matured,
the realised ROC-AUC, PR-AUC and positive rate, next to the offline AUC of the served versions;
plus drift of every feature against the training window. Alerts (one per incident) when the
estimated or realised AUC of the newest cohort falls below ``auc_floor`` or the features drift.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task

from flows.config import build, load
from flows.materialize import warehouse_dir
from flows.monitor import delivery_report, incidents_for
from mlinfra_features import VIEWS, FeatureStoreSettings, Warehouse, service_views
from mlinfra_models import RegistrySettings, load_reference, mlflow_client
from mlinfra_ops import (
    Alert,
    Calibration,
    CohortPerformance,
    DriftReport,
    cohort_performance,
    detect_drift,
    label_predictions,
    reference_calibration,
    render_performance_report,
    write_text_atomic,
)

KEYS = ["customer_id", "event_timestamp"]


def read_predictions(root: Path, model: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """The model's logged predictions, one per customer and day (the latest), and skip counts."""
    base = root / model
    partitions = sorted(p for p in base.glob("date=*") if p.is_dir()) if base.is_dir() else []
    files = [f for p in partitions for f in sorted(p.glob("*.parquet"))]
    if not files:
        raise FileNotFoundError(
            f"no predictions logged under {base}; expected Parquet partitions written by the "
            "scoring service (mlinfra-serve) or batch scoring"
        )
    empty = sum(1 for p in partitions if not any(p.glob("*.parquet")))
    frame = (
        pl.scan_parquet(files, hive_partitioning=False)
        .select(
            pl.col("entity_id").alias("customer_id"),
            pl.col("timestamp").alias("predicted_at"),
            "score",
            "version",
        )
        .sort("predicted_at")
        .unique(
            subset=["customer_id", pl.col("predicted_at").dt.date().alias("_day")],
            keep="last",
            maintain_order=True,
        )
        .collect()
    )
    return frame, {"empty_partitions": empty, "files": len(files)}


def offline_aucs(registry: RegistrySettings, model: str, versions: list[str]) -> dict[str, float]:
    client = mlflow_client(registry)
    out = {}
    for version in versions:
        tags = client.get_model_version(model, version).tags
        if "roc_auc" in tags:
            out[version] = float(tags["roc_auc"])
    return out


def calibrations_for(
    registry: RegistrySettings, model: str, versions: list[str], labelled: pl.DataFrame
) -> tuple[dict[str, Calibration | None], dict[str, str]]:
    """Each served version's CBPE calibration and what it was fitted on.

    The reference is the version's labelled held-out predictions, logged when it was trained
    (validation and evaluation windows: NannyML's reference period). A version logged without
    one falls back to its matured production predictions. Isotonic calibration is applied only
    where it improves held-out calibration (:func:`mlinfra_ops.reference_calibration`)."""
    calibrations: dict[str, Calibration | None] = {}
    sources: dict[str, str] = {}
    for version in map(str, versions):
        reference = load_reference(registry, model, version)
        source = "held-out reference"
        if reference is None:
            reference = labelled.filter(
                pl.col("version").cast(pl.String) == version, pl.col("matured")
            )
            source = "matured production predictions"
        labels = reference["label"].cast(pl.Boolean)
        positives = int(labels.sum())
        if reference.height < 200 or positives in (0, reference.height):
            calibrations[version] = None
            sources[version] = (
                f"none: {reference.height} {source} rows with {positives} positives are too "
                "few to calibrate on; scores taken as calibrated"
            )
            continue
        calibrations[version] = reference_calibration(
            reference["score"].to_numpy(), labels.to_numpy()
        )
        rule = "isotonic" if calibrations[version] else "none needed"
        sources[version] = f"{rule} ({source}, {reference.height} rows, {positives} positives)"
    return calibrations, sources


def training_window_drift(
    store: FeatureStoreSettings,
    service: str,
    data_window: str,
    *,
    threshold: float,
    dataset_share: float,
) -> DriftReport:
    """Drift of the service's features at the newest snapshot against its training window
    (the served version's ``data_window`` tag, ``start .. end``)."""
    start, _, end = (part.strip() for part in data_window.partition(".."))
    frames = []
    for view in service_views(service):
        spec = VIEWS[view]
        frames.append(
            pl.scan_parquet(spec.table_path(store.offline_dir)).select(*KEYS, *spec.features)
        )
    joined = frames[0]
    for other in frames[1:]:
        joined = joined.join(other, on=KEYS, how="inner")
    table = joined.collect()
    ts = pl.col("event_timestamp")
    start_at = datetime.fromisoformat(start).replace(tzinfo=UTC)
    end_at = datetime.fromisoformat(end).replace(tzinfo=UTC) + timedelta(days=1)
    reference = table.filter((ts >= start_at) & (ts < end_at))
    current = table.filter(ts == table["event_timestamp"].max())
    features = [c for c in table.columns if c not in KEYS]
    return detect_drift(
        reference, current, features, threshold=threshold, dataset_share=dataset_share
    )


def chart(cohorts: list[CohortPerformance], floor: float) -> str:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [c.cohort for c in cohorts]
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    est = [c.estimated.roc_auc for c in cohorts]
    ax.fill_between(
        x,
        [c.estimated.roc_auc_low for c in cohorts],
        [c.estimated.roc_auc_high for c in cohorts],
        alpha=0.2,
        label="estimate 95%",
    )
    ax.plot(x, est, "o-", label="estimated (CBPE)")
    realized = [
        c.realized_roc_auc if c.realized_roc_auc is not None else float("nan") for c in cohorts
    ]
    ax.plot(x, realized, "s-", label="realised")
    ax.axhline(floor, ls=":", c="grey", label="floor")
    ax.set(ylabel="ROC-AUC", title="Estimated vs realised ROC-AUC per weekly cohort")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend(loc="lower left", fontsize=8)
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]


@task
def evaluate_served_model(cfg: dict[str, Any]) -> dict[str, Any]:
    logger = get_run_logger()
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    registry: RegistrySettings = build(cfg["registry"])
    name = cfg["model_name"]
    warehouse = Warehouse(warehouse_dir(store))
    predictions, read_stats = read_predictions(store.home / "predictions", name)
    labelled, join_stats = label_predictions(
        predictions,
        warehouse.scan("churn_events").collect(),
        horizon=timedelta(days=cfg["horizon_days"]),
        data_end=warehouse.data_end(),
    )
    for key, count in {**read_stats, **join_stats}.items():
        logger.info("%s: %d", key, count)
    versions = sorted(labelled["version"].unique().to_list(), key=int)
    calibrations, calibrated_on = calibrations_for(registry, name, versions, labelled)
    for version, source in calibrated_on.items():
        logger.info("calibration of version %s: %s", version, source)
    cohorts = cohort_performance(
        labelled, calibration=calibrations, every=cfg["cohort"], n_boot=cfg["bootstrap_resamples"]
    )
    offline = offline_aucs(registry, name, versions)
    served = mlflow_client(registry).get_model_version(name, versions[-1]).tags
    drift = training_window_drift(
        store,
        served["feature_service"],
        served["data_window"],
        threshold=cfg["drift"]["threshold"],
        dataset_share=cfg["drift"]["dataset_share"],
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = Path(cfg["reports_dir"]) / "performance"
    facts = {
        "model": f"{name} (served versions {', '.join(versions)})",
        "predictions": f"{labelled.height} ({read_stats['files']} files)",
        "outcome horizon": f"{cfg['horizon_days']} days; data end {warehouse.data_end()}",
        "calibration": "; ".join(f"v{v}: {s}" for v, s in calibrated_on.items()),
        "skipped": json.dumps({**read_stats, **join_stats}),
    }
    page = render_performance_report(
        title=f"{name} in production - {stamp}",
        cohorts=cohorts,
        offline_roc_auc=offline,
        drift=drift,
        facts=facts,
        charts=[chart(cohorts, cfg["auc_floor"])],
    )
    report = write_text_atomic(out_dir / f"{name}-{stamp}.html", page)
    summary = {
        "cohorts": [c.as_dict() for c in cohorts],
        "offline_roc_auc": offline,
        "calibration": calibrated_on,
        "drift": {
            "dataset_drift": drift.dataset_drift,
            "features": [asdict(f) for f in drift.features],
        },
        "report": str(report),
    }
    write_text_atomic(report.with_suffix(".json"), json.dumps(summary, indent=2, default=str))
    alert_on(cfg, name, cohorts, drift)
    logger.info("report: %s", report)
    return summary


def alert_on(
    cfg: dict[str, Any], name: str, cohorts: list[CohortPerformance], drift: DriftReport
) -> None:
    incidents = incidents_for(cfg)
    floor = cfg["auc_floor"]
    newest = cohorts[-1]
    realized = [c for c in cohorts if c.realized_roc_auc is not None]
    checks = {
        "estimated": newest.estimated.roc_auc,
        "realized": realized[-1].realized_roc_auc if realized else None,
    }
    for kind, value in checks.items():
        key = f"model_performance:{name}:{kind}"
        if value is not None and value < floor:
            incidents.report(
                key,
                Alert(
                    kind=f"{kind}_auc_low",
                    subject=name,
                    message=f"{kind} ROC-AUC {value:.4f} is below the floor {floor}",
                    facts={"cohort": newest.cohort, "value": value, "floor": floor},
                ),
            )
        else:
            incidents.resolve(
                key,
                Alert(kind=f"{kind}_auc_ok", subject=name, message=f"{kind} ROC-AUC is back up"),
            )
    key = f"feature_drift:{name}"
    if drift.dataset_drift:
        incidents.report(
            key,
            Alert(
                kind="feature_drift",
                subject=name,
                message=f"features drifted from the training window: {drift.drifted_features}",
                facts={f.feature: f.psi for f in drift.features},
            ),
        )
    else:
        incidents.resolve(key, Alert(kind="feature_drift_gone", subject=name, message="no drift"))
    delivery_report(incidents)


@flow(name="model-performance", log_prints=True)
def model_performance(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    cfg = cfg if cfg is not None else load("model_performance", overrides)
    summary = evaluate_served_model(cfg)
    newest = summary["cohorts"][-1]
    print(
        f"{cfg['model_name']}: newest cohort {newest['cohort']} estimated ROC-AUC "
        f"{newest['estimated_roc_auc']:.4f}; report {summary['report']}"
    )
    return summary


def main(argv: list[str] | None = None) -> None:
    model_performance(load("model_performance", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
