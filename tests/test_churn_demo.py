"""The churn model on the demo warehouse, whose hidden process is known; the retrain flow and
the notebook end to end."""

from __future__ import annotations

import os
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nbformat
import polars as pl
import pytest
from nbclient import NotebookClient

from flows.config import load
from flows.retrain import retrain
from mlinfra_features import (
    DemoWarehouseSettings,
    FeatureStoreSettings,
    Warehouse,
    apply_repo,
    feature_tables,
    generate_demo_warehouse,
    materialize_incremental,
    service_features,
    training_set,
    write_feature_tables,
)
from mlinfra_models import (
    CHURN_LABEL,
    ChurnModel,
    ChurnSettings,
    TimeSplit,
    churn_labels,
    evaluate_binary,
    held_out_reference,
    time_split,
    train_churn,
)
from mlinfra_ops import FeaturesLateError, read_alert_log

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ChurnSettings(iterations=250, thread_count=2, bootstrap_resamples=50)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[FeatureStoreSettings, Warehouse]:
    home = tmp_path_factory.mktemp("demo-home")
    warehouse = generate_demo_warehouse(
        DemoWarehouseSettings(n_customers=5000, as_of=datetime(2026, 11, 29, tzinfo=UTC)),
        home / "warehouse",
    )
    store = FeatureStoreSettings(home=home)
    write_feature_tables(store, feature_tables(warehouse))
    apply_repo(store)
    materialize_incremental(store, end=warehouse.data_end() + timedelta(seconds=1))
    return store, warehouse


@pytest.fixture(scope="module")
def split(demo: tuple[FeatureStoreSettings, Warehouse]) -> TimeSplit:
    store, warehouse = demo
    dates = (
        pl.scan_parquet(store.offline_dir / "customer_profile.parquet")
        .select(pl.col("event_timestamp").unique())
        .collect()["event_timestamp"]
        .to_list()
    )
    labels = churn_labels(
        warehouse.scan("customers").collect(),
        warehouse.scan("churn_events").collect(),
        dates,
        warehouse.data_end(),
    )
    return time_split(training_set(store, "churn_v2", labels), SETTINGS)


@pytest.fixture(scope="module")
def trained(split: TimeSplit) -> tuple[dict[str, ChurnModel], pl.DataFrame]:
    models = {
        service: train_churn(split.train, split.validation, service_features(service), SETTINGS)
        for service in ("churn_v1", "churn_v2")
    }
    return models, split.evaluation


def test_v2_beats_v1_on_the_demo(trained: tuple[dict[str, ChurnModel], pl.DataFrame]) -> None:
    models, evaluation = trained
    y = evaluation[CHURN_LABEL].to_numpy()
    auc = {
        s: evaluate_binary(y, m.predict_proba(evaluation), n_boot=20).metrics["roc_auc"].value
        for s, m in models.items()
    }
    assert auc["churn_v2"] > auc["churn_v1"] + 0.02, auc
    assert auc["churn_v1"] > 0.75, auc


def test_falling_logins_and_rising_tickets_score_higher(
    trained: tuple[dict[str, ChurnModel], pl.DataFrame],
) -> None:
    models, evaluation = trained
    steady = (
        evaluation.filter(pl.col(CHURN_LABEL) == 0)
        .head(200)
        .with_columns(login_trend_8w=pl.lit(0.0), support_tickets_30d=pl.lit(0, pl.Int64))
    )
    declining = steady.with_columns(
        login_trend_8w=pl.lit(-0.15), support_tickets_30d=pl.lit(3, pl.Int64)
    )
    model = models["churn_v2"]
    assert (model.predict_proba(declining) > model.predict_proba(steady)).mean() > 0.95


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_flow_end_to_end(tmp_path: Path) -> None:
    overrides = [
        f"paths.home={tmp_path}",
        "features.n_customers=2500",
        "model=churn",
        "model.churn.settings.iterations=150",
        "model.churn.settings.bootstrap_resamples=30",
    ]
    cfg = load("retrain", overrides)
    first = retrain(cfg)["churn"]  # empty home: materializes first
    assert (first["version"], first["semver"], first["alias"]) == ("1", "1.0.0", "champion")
    assert Path(first["report"]).is_file()
    assert Path(first["report"]).is_relative_to(tmp_path / "reports")
    second = retrain(cfg)["churn"]
    assert (second["semver"], second["alias"]) == ("1.0.1", "champion")
    served_model_is_monitored(tmp_path, second["version"])


def served_model_is_monitored(home: Path, version: str) -> None:
    """The champion's weekly predictions, as the scoring service logs them, go through the
    model-performance flow: estimated AUC per cohort, realised once matured, drift, alerts."""
    import mlflow.catboost

    from flows.model_performance import model_performance
    from mlinfra_models import RegistrySettings, load_reference, mlflow_client

    mlflow_client(RegistrySettings(home=home))
    booster = mlflow.catboost.load_model(f"models:/churn/{version}")
    model = ChurnModel(booster=booster, features=service_features("churn_v2"))
    store = FeatureStoreSettings(home=home)
    dates = (
        pl.scan_parquet(store.offline_dir / "customer_profile.parquet")
        .select(pl.col("event_timestamp").unique().sort())
        .collect()["event_timestamp"]
        .to_list()[-8:]
    )
    for day in dates:  # one partition per day the service scored the population
        rows = training_set(
            store,
            "churn_v2",
            pl.DataFrame({"customer_id": range(2500)}).with_columns(
                pl.lit(day).cast(pl.Datetime("us", "UTC")).alias("event_timestamp")
            ),
        ).drop_nulls(service_features("churn_v2"))
        log = pl.DataFrame(
            {
                "request_id": [f"r{day:%Y%m%d}-{i}" for i in range(rows.height)],
                "model": "churn",
                "version": version,
                "entity_id": rows["customer_id"],
                "score": model.predict_proba(rows),
                "timestamp": rows["event_timestamp"],
            }
        )
        partition = home / "predictions" / "churn" / f"date={day:%Y-%m-%d}"
        partition.mkdir(parents=True)
        log.write_parquet(partition / "part-0.parquet")
    (home / "predictions" / "churn" / "date=2000-01-01").mkdir()  # an empty partition
    summary = model_performance(load("model_performance", [f"paths.home={home}", "auc_floor=0.99"]))
    cohorts = summary["cohorts"]
    assert len(cohorts) == len(dates)
    matured = [c for c in cohorts if c["matured"]]
    assert matured and not cohorts[-1]["matured"], "old cohorts matured, the newest has not"
    for cohort in matured:
        assert abs(cohort["estimated_roc_auc"] - cohort["realized_roc_auc"]) < 0.08, cohort
    assert all(c["realized_roc_auc"] is None for c in cohorts if not c["matured"])
    assert Path(summary["report"]).is_file()
    assert set(summary["offline_roc_auc"]) == {version}
    # CBPE is calibrated on the version's held-out reference, logged with it at training
    assert re.fullmatch(
        r"(isotonic|none needed) \(held-out reference, \d+ rows, \d+ positives\)",
        summary["calibration"][version],
    ), summary["calibration"]
    reference = load_reference(RegistrySettings(home=home), "churn", version)
    assert reference is not None
    assert set(reference["window"]) == {"validation", "evaluation"}
    assert reference["score"].is_between(0, 1).all() and reference["label"].dtype == pl.Boolean
    assert summary["offline_roc_auc"][version] > 0.7
    kinds = [a["kind"] for a in read_alert_log(home)]
    assert "estimated_auc_low" in kinds and "realized_auc_low" in kinds, "below the 0.99 floor"


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_refuses_stale_features(tmp_path: Path) -> None:
    cfg = load(
        "retrain",
        [
            f"paths.home={tmp_path}",
            "features.n_customers=300",
            "features.warehouse.delay_hours=96",
        ],
    )
    with pytest.raises(FeaturesLateError, match=r"customer_profile is late: age 4 days, .*late by"):
        retrain(cfg)
    assert not (tmp_path / "mlflow").exists(), "nothing is trained or registered"
    alerts = read_alert_log(tmp_path)
    assert [a["kind"] for a in alerts] == ["features_late"]


def test_notebook_runs(tmp_path: Path) -> None:
    notebook = nbformat.read(ROOT / "notebooks" / "churn.ipynb", as_version=4)
    os.environ["MLINFRA_NOTEBOOK_CUSTOMERS"] = "2500"
    os.environ["MLINFRA_NOTEBOOK_HOME"] = str(tmp_path)
    try:
        NotebookClient(notebook, timeout=600, kernel_name="python3").execute()
    finally:
        del os.environ["MLINFRA_NOTEBOOK_CUSTOMERS"], os.environ["MLINFRA_NOTEBOOK_HOME"]
    outputs = "".join(
        o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "churn_v2 ROC-AUC" in outputs


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_waits_for_late_features_and_continues_by_itself(tmp_path: Path) -> None:
    """The Sunday incident: the feature job is late; the retrain waits, alerts once, and trains
    as soon as materialization lands, with no retrigger."""
    from flows.materialize import materialize

    overrides = [
        f"paths.home={tmp_path}",
        "features.n_customers=1500",
        "model=churn",
        "model.churn.settings.iterations=100",
        "model.churn.settings.bootstrap_resamples=20",
        "model.churn.settings.ablation=[]",
        "model.churn.freshness.max_wait_s=300",
        "model.churn.freshness.initial_poll_s=1",
        "model.churn.freshness.max_poll_s=4",
    ]
    materialize(load("materialize", [*overrides[:2], "features.warehouse.delay_hours=72"]))
    on_time = load("materialize", [*overrides[:2], "features.refresh=always"])
    late_job = threading.Timer(4.0, materialize, args=(on_time,))
    late_job.start()
    try:
        result = retrain(load("retrain", overrides))["churn"]
    finally:
        late_job.join()
    assert result["alias"] == "champion"
    kinds = [a["kind"] for a in read_alert_log(tmp_path)]
    assert kinds == ["features_late", "features_fresh"]


def test_delayed_label_estimate_lands_near_the_realized_auc_and_drift_is_localised(
    demo: tuple[FeatureStoreSettings, Warehouse],
    trained: tuple[dict[str, ChurnModel], pl.DataFrame],
    split: TimeSplit,
) -> None:
    """Churn v2 in production: score the newest matured snapshot as the service would, estimate
    its AUC from the probabilities alone, calibrated on the model's held-out reference (every
    labelled row before that snapshot it did not train on: validation and the earlier evaluation
    snapshot), then let the outcomes arrive from the warehouse and compare."""
    from mlinfra_ops import (
        cohort_performance,
        detect_drift,
        label_predictions,
        reference_calibration,
    )

    _, warehouse = demo
    models, evaluation = trained
    model = models["churn_v2"]
    reference_at, newest_at = sorted(evaluation["event_timestamp"].unique().to_list())
    reference = evaluation.filter(pl.col("event_timestamp") == reference_at)
    newest = evaluation.filter(pl.col("event_timestamp") == newest_at)
    held_out = held_out_reference(model, split.validation, reference)
    # NannyML's rule: isotonic calibration lowers the held-out calibration error here
    calibration = reference_calibration(held_out["score"].to_numpy(), held_out["label"].to_numpy())
    assert calibration is not None
    predictions = newest.select(
        "customer_id",
        pl.col("event_timestamp").alias("predicted_at"),
        pl.Series("score", model.predict_proba(newest)),
    )
    labelled, _ = label_predictions(
        predictions,
        warehouse.scan("churn_events").collect(),
        horizon=timedelta(days=30),
        data_end=warehouse.data_end(),
    )
    # the outcomes join agrees with the training labels of the same snapshot
    assert labelled["label"].to_list() == newest[CHURN_LABEL].cast(pl.Boolean).to_list()
    (cohort,) = cohort_performance(labelled, calibration=calibration, n_boot=200)
    assert cohort.matured and cohort.realized_roc_auc is not None
    print(f"estimated {cohort.estimated}, realized ROC-AUC {cohort.realized_roc_auc:.4f}")
    # estimated 0.882, realised 0.854: this snapshot's 147 churners realise an AUC ~2 standard
    # errors below expectation (the earlier snapshot realises 0.885), the sampling noise the
    # 0.03 criterion has to absorb; other demo seeds and sizes land 0.004-0.021 apart (README)
    assert abs(cohort.estimated.roc_auc - cohort.realized_roc_auc) < 0.03, cohort.as_dict()

    features = service_features("churn_v2")
    numeric = [f for f in features if newest.schema[f].is_numeric()]
    shifted = newest.with_columns(pl.col("support_tickets_30d") * 3 + 2)
    report = detect_drift(reference, shifted, numeric)
    assert report.drifted_features == ["support_tickets_30d"], report.features
