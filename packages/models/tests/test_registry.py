"""The registry on a real local MLflow store: versions, semantic versions, gate and aliases."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlinfra_models import (
    CHURN_LABEL,
    ChurnModel,
    ChurnSettings,
    Contract,
    RegistrySettings,
    gate,
    load_reference,
    mlflow_client,
    retrain_churn,
    semantic_version,
    time_split,
)


def test_semantic_version_follows_the_contract() -> None:
    v1 = Contract(["a", "b"], "p")
    assert semantic_version(v1, None, None) == "1.0.0"
    assert semantic_version(Contract(["b", "a"], "p"), v1, "1.2.3") == "1.2.4"
    assert semantic_version(Contract(["a", "b", "c"], "p"), v1, "1.2.3") == "1.3.0"
    assert semantic_version(Contract(["a"], "p"), v1, "1.2.3") == "2.0.0"
    assert semantic_version(Contract(["a", "c"], "p"), v1, "1.2.3") == "2.0.0"  # renamed
    assert semantic_version(Contract(["a", "b"], "q"), v1, "1.2.3") == "2.0.0"


def test_gate_tolerance() -> None:
    assert gate("roc_auc", 0.80, None, 0.01).promote
    assert gate("roc_auc", 0.795, 0.80, 0.01).promote
    kept = gate("roc_auc", 0.78, 0.80, 0.01)
    assert not kept.promote and "beyond the tolerance" in kept.reason
    assert not gate("brier", 0.2, 0.1, 0.01, higher_is_better=False).promote


FrameFeatureSource: Any = None


@pytest.fixture(autouse=True)
def _source(frame_source: Any) -> None:
    global FrameFeatureSource  # noqa: PLW0603
    FrameFeatureSource = frame_source


def retrain(
    rows: pl.DataFrame,
    settings: ChurnSettings,
    registry: RegistrySettings,
    tmp_path: Path,
    **kwargs: object,
) -> object:
    labels = rows.select("customer_id", "event_timestamp", CHURN_LABEL)
    return retrain_churn(
        labels,
        FrameFeatureSource(rows),
        settings,
        registry,
        tmp_path / "reports",
        tags={"git_revision": "abc123", "config_hash": "cafe"},
        log=lambda _: None,
        **kwargs,  # type: ignore[arg-type]
    )


def test_retrain_registers_versions_and_moves_the_champion(
    rows: pl.DataFrame, fast_settings: ChurnSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    v1_settings = replace(fast_settings, feature_service="churn_v1", ablation=[])
    first = retrain(rows, v1_settings, registry, tmp_path)
    assert (first.version, first.semver, first.alias) == ("1", "1.0.0", "champion")  # type: ignore[attr-defined]
    assert first.report_path.is_file()  # type: ignore[attr-defined]
    html = first.report_path.read_text()  # type: ignore[attr-defined]
    assert "<svg" in html and "roc_auc" in html

    client = mlflow_client(registry)
    run = client.get_run(first.run_id)  # type: ignore[attr-defined]
    for tag in ("feature_service", "data_window", "config_hash", "git_revision", "semver"):
        assert run.data.tags[tag], tag
    assert run.data.metrics["roc_auc"] > 0.6
    artifacts = {a.path for a in client.list_artifacts(first.run_id)}  # type: ignore[attr-defined]
    assert {"evaluation.json", first.report_path.name} <= artifacts  # type: ignore[attr-defined]
    # the held-out reference for performance estimation: validation + evaluation rows, scored
    reference = load_reference(registry, "churn", "1")
    assert reference is not None
    split = time_split(rows, v1_settings)
    assert reference.height == split.validation.height + split.evaluation.height
    evaluation = reference.filter(pl.col("window") == "evaluation").sort("customer_id")
    truth = split.evaluation.sort("customer_id")
    assert evaluation["label"].to_list() == truth[CHURN_LABEL].cast(pl.Boolean).to_list()
    import mlflow.catboost

    booster = mlflow.catboost.load_model(f"runs:/{first.run_id}/model")  # type: ignore[attr-defined]
    model = ChurnModel(booster=booster, features=run.data.params["features"].split(","))
    assert np.allclose(evaluation["score"].to_numpy(), model.predict_proba(truth))
    mv = client.get_model_version("churn", "1")
    import mlflow.models

    info = mlflow.models.get_model_info(mv.source)
    assert info.signature is not None
    assert info.signature.inputs.input_names() == [
        "plan",
        "seats",
        "monthly_spend",
        "logins_30d",
        "days_since_last_login",
    ]

    second = retrain(rows, replace(fast_settings, feature_service="churn_v2"), registry, tmp_path)
    assert second.semver == "1.1.0", "adding features is a minor version"  # type: ignore[attr-defined]
    assert second.champion_metrics is not None  # type: ignore[attr-defined]
    assert second.ablation_auc  # type: ignore[attr-defined]
    assert "without login_trend_8w" in second.ablation  # type: ignore[attr-defined]
    third = retrain(rows, replace(fast_settings, feature_service="churn_v2"), registry, tmp_path)
    assert (third.semver, third.alias) == ("1.1.1", "champion")  # type: ignore[attr-defined]
    assert str(client.get_model_version_by_alias("churn", "champion").version) == third.version  # type: ignore[attr-defined]


def test_gate_keeps_the_champion_against_a_model_trained_on_shuffled_labels(
    rows: pl.DataFrame, fast_settings: ChurnSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    settings = replace(fast_settings, ablation=[])
    good = retrain(rows, settings, registry, tmp_path)
    shuffled = rows.with_columns(
        pl.Series(CHURN_LABEL, np.random.default_rng(0).permutation(rows[CHURN_LABEL].to_numpy()))
    )
    # shuffle the training labels only: the evaluation window keeps its true labels
    eval_start = sorted(rows["event_timestamp"].unique())[-2]
    bad_rows = pl.concat(
        [
            shuffled.filter(pl.col("event_timestamp") < eval_start),
            rows.filter(pl.col("event_timestamp") >= eval_start),
        ]
    )
    bad = retrain(bad_rows, settings, registry, tmp_path)
    assert bad.alias == "challenger"  # type: ignore[attr-defined]
    assert "worse than the champion" in bad.decision.reason  # type: ignore[attr-defined]
    client = mlflow_client(registry)
    assert str(client.get_model_version_by_alias("churn", "champion").version) == good.version  # type: ignore[attr-defined]
    assert str(client.get_model_version_by_alias("churn", "challenger").version) == bad.version  # type: ignore[attr-defined]


def test_failure_after_training_registers_nothing(
    rows: pl.DataFrame, fast_settings: ChurnSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    settings = replace(fast_settings, ablation=[])
    first = retrain(rows, settings, registry, tmp_path)
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the report folder should be")
    labels = rows.select("customer_id", "event_timestamp", CHURN_LABEL)
    with pytest.raises((NotADirectoryError, FileExistsError)):
        retrain_churn(
            labels,
            FrameFeatureSource(rows),
            settings,
            registry,
            blocker / "reports",
            log=lambda _: None,
        )
    client = mlflow_client(registry)
    versions = client.search_model_versions("name='churn'")
    assert [str(v.version) for v in versions] == [first.version]  # type: ignore[attr-defined]
    assert str(client.get_model_version_by_alias("churn", "champion").version) == first.version  # type: ignore[attr-defined]


def test_unknown_feature_service_and_unreachable_tracking_uri(
    rows: pl.DataFrame, fast_settings: ChurnSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    with pytest.raises(LookupError, match="churn_v9"):
        retrain(rows, replace(fast_settings, feature_service="churn_v9"), registry, tmp_path)
    unreachable = RegistrySettings(home=tmp_path / "x", tracking_uri="http://127.0.0.1:9")
    with pytest.raises(ConnectionError, match=r"'http://127.0.0.1:9' is unreachable"):
        retrain(rows, fast_settings, unreachable, tmp_path)
    assert not (tmp_path / "reports").exists()


def test_single_class_training_set_registers_nothing(
    rows: pl.DataFrame, fast_settings: ChurnSettings, registry: RegistrySettings, tmp_path: Path
) -> None:
    one_class = rows.with_columns(pl.lit(0, pl.Int8).alias(CHURN_LABEL))
    with pytest.raises(ValueError, match="single class"):
        retrain(one_class, fast_settings, registry, tmp_path)
    assert mlflow_client(registry).search_model_versions("name='churn'") == []
