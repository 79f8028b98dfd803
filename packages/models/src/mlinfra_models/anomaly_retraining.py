"""One anomaly-detector retrain, end to end: window, train on Ray Train, evaluate against the
hidden truth and the champion on the same window, report, log to MLflow, register, gate.

The caller gives every account-day of the period as ``rows`` (``customer_id``,
``event_timestamp``, ``is_anomaly``) and a :data:`~mlinfra_models.retraining.FeatureSource`
(the flow passes Feast's point-in-time join), so this module knows nothing of Feast. The truth
is used only for evaluation: the autoencoder trains unsupervised on every row of its window.

Windows: the evaluation window is the last ``evaluation_days`` days of ``rows``; the training
window the ``train_days`` before it. ``max_customers`` keeps a seeded sample of customers (the
same customers in both windows) so that a weekly retrain stays cheap at any population size.

The Ray run is named after the training data and settings: rerunning the flow on the same data
after a crash resumes that run from its last checkpoint (or reuses it when it finished), while
new data starts a new run. As for churn, everything that can fail happens before the MLflow run,
the version is registered only once its run finished, and the alias moves last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlinfra_models.anomaly import (
    AnomalyEvaluation,
    AnomalyModel,
    AnomalySettings,
    evaluate_anomaly,
    train_anomaly,
)
from mlinfra_models.evaluation import (
    RANKING_METRICS,
    BinaryEvaluation,
    Estimate,
    compare,
    evaluate_binary,
)
from mlinfra_models.registry import (
    Contract,
    GateDecision,
    RegistrySettings,
    champion,
    gate,
    mlflow_client,
    next_semver,
    publish,
)
from mlinfra_models.report import EvaluationReport, write_report
from mlinfra_models.retraining import FeatureSource, GateSettings

__all__ = [
    "ANOMALY_LABEL",
    "AnomalyRetrainResult",
    "AnomalyWindow",
    "WindowSplit",
    "load_anomaly_model",
    "retrain_anomaly_detector",
    "split_window",
]

MODEL_NAME = "anomaly_detector"
OUTPUT = "anomaly_score"
ANOMALY_LABEL = "is_anomaly"
_KEYS = ("customer_id", "event_timestamp")


@dataclass(frozen=True)
class AnomalyWindow:
    """Which rows a retrain trains and evaluates on, and how it is evaluated."""

    feature_service: str = "anomaly_detector_v1"
    train_days: int = 28
    evaluation_days: int = 7
    max_customers: int | None = 5000
    precision_at_k: int = 100
    bootstrap_resamples: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train_days", "evaluation_days", "precision_at_k", "bootstrap_resamples"):
            if getattr(self, name) < 1:
                raise ValueError(f"AnomalyWindow.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_customers is not None and self.max_customers < 1:
            raise ValueError(
                f"AnomalyWindow.max_customers must be >= 1 or null, got {self.max_customers}"
            )


@dataclass(frozen=True)
class WindowSplit:
    train: pl.DataFrame
    evaluation: pl.DataFrame
    train_start: datetime
    evaluation_start: datetime
    end: datetime


def split_window(rows: pl.DataFrame, window: AnomalyWindow) -> WindowSplit:
    """The training and evaluation rows of the newest period in ``rows`` (see the module doc)."""
    expected = [*_KEYS, ANOMALY_LABEL]
    missing = [c for c in expected if c not in rows.columns]
    if missing:
        raise ValueError(f"the anomaly rows lack column(s) {missing}; expected {expected}")
    if rows.is_empty():
        raise ValueError("the anomaly rows are empty; expected one row per account-day")
    end: datetime = rows["event_timestamp"].max()  # type: ignore[assignment]
    evaluation_start = end - timedelta(days=window.evaluation_days)
    train_start = evaluation_start - timedelta(days=window.train_days)
    ts = pl.col("event_timestamp")
    period = rows.filter(ts > train_start)
    if window.max_customers is not None:
        customers = period["customer_id"].unique().sort()
        if customers.len() > window.max_customers:
            chosen = customers.sample(window.max_customers, seed=window.seed)
            period = period.filter(pl.col("customer_id").is_in(chosen.implode()))
    period = period.sort(*_KEYS)
    split = WindowSplit(
        train=period.filter(ts <= evaluation_start),
        evaluation=period.filter(ts > evaluation_start),
        train_start=train_start,
        evaluation_start=evaluation_start,
        end=end,
    )
    if split.train.is_empty():
        raise ValueError(
            f"the training window ({train_start} .. {evaluation_start}] has no rows; expected "
            f"{window.train_days} days of account activity before the evaluation window"
        )
    if not split.evaluation[ANOMALY_LABEL].any():
        raise ValueError(
            f"the evaluation window ({evaluation_start} .. {end}] has no known anomaly; "
            "PR-AUC and recall need at least one (widen evaluation_days or max_customers)"
        )
    return split


@dataclass(frozen=True)
class AnomalyRetrainResult:
    model_name: str
    version: str
    semver: str
    alias: str
    decision: GateDecision
    report_path: Path
    run_id: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    train_seconds: float
    training: dict[str, float]


def load_anomaly_model(model_uri: str) -> AnomalyModel:
    """The :class:`AnomalyModel` of a registered version, e.g.
    ``models:/anomaly_detector@champion`` (MLflow is imported here, not before)."""
    from mlinfra_models._anomaly_pyfunc import load_anomaly_model as load

    return load(model_uri)


def _data_name(frame: pl.DataFrame, settings: AnomalySettings) -> str:
    """A run name that is the same for the same training data and settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps(asdict(settings), sort_keys=True, default=str).encode())
    digest.update(frame.hash_rows(seed=0).to_numpy().tobytes())
    return f"{settings.run_name}-{digest.hexdigest()[:12]}"


def _evaluate(
    y: np.ndarray, scores: np.ndarray, threshold: float, window: AnomalyWindow
) -> tuple[BinaryEvaluation, AnomalyEvaluation]:
    ranking = evaluate_binary(
        y, scores, n_boot=window.bootstrap_resamples, seed=window.seed, metrics=RANKING_METRICS
    )
    k = min(window.precision_at_k, y.size)
    return ranking, evaluate_anomaly(y, scores, threshold, k)


def _thresholded(prefix: str, ev: AnomalyEvaluation) -> dict[str, float]:
    keys = ("precision_at_k", "recall_at_threshold", "precision_at_threshold", "flagged")
    return {f"{prefix}{k}": float(getattr(ev, k)) for k in keys}


def _training_stats(model: AnomalyModel) -> dict[str, float]:
    """Throughput and checkpoint overhead of the attempt that finished the model."""
    meta = model.meta
    compute = float(meta.get("compute_seconds", 0.0))
    ckpt = float(meta.get("checkpoint_seconds", 0.0))
    samples = float(meta.get("samples", 0))
    return {
        "train_samples_per_s": samples / compute if compute > 0 else 0.0,
        "checkpoint_seconds": ckpt,
        "checkpoint_share": ckpt / (compute + ckpt) if compute + ckpt > 0 else 0.0,
        "resumes": float(len(meta.get("resumed_from", []))),
    }


def retrain_anomaly_detector(
    rows: pl.DataFrame,
    feature_source: FeatureSource,
    settings: AnomalySettings,
    *,
    window: AnomalyWindow,
    registry: RegistrySettings,
    report_dir: Path,
    gate_settings: GateSettings | None = None,
    tags: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> AnomalyRetrainResult:
    """Train an anomaly-detector candidate and register it (see the module docstring).

    The caller has started Ray.
    """
    gate_settings = gate_settings or GateSettings(metric="pr_auc", tolerance=0.01)
    if gate_settings.metric not in RANKING_METRICS:
        raise ValueError(
            f"gate metric {gate_settings.metric!r} is not an anomaly metric; expected one of "
            f"{sorted(RANKING_METRICS)}"
        )
    client = mlflow_client(registry)
    split = split_window(rows, window)
    keyed = pl.concat([split.train, split.evaluation])
    frame = feature_source(window.feature_service, keyed)
    ts = pl.col("event_timestamp")
    train = frame.filter(ts <= split.evaluation_start)
    evaluation = frame.filter(ts > split.evaluation_start)
    settings = replace(settings, run_name=_data_name(train, settings))
    log(
        f"training anomaly_detector on {window.feature_service}: {train.height} account-days "
        f"({split.train_start:%Y-%m-%d} .. {split.evaluation_start:%Y-%m-%d}), "
        f"{evaluation.height} evaluation rows; Ray run {settings.run_name}"
    )
    started = time.perf_counter()
    model = train_anomaly(train, settings)
    train_seconds = time.perf_counter() - started
    training = _training_stats(model)

    y = evaluation[ANOMALY_LABEL].to_numpy().astype(np.int64)
    scores = model.score(evaluation)
    ranking, thresholded = _evaluate(y, scores, model.threshold, window)
    log(f"candidate PR-AUC {ranking.metrics['pr_auc']} (base rate {thresholded.base_rate:.4f})")

    current = champion(client, MODEL_NAME)
    champ_ranking: BinaryEvaluation | None = None
    champ_thresholded: AnomalyEvaluation | None = None
    deltas: dict[str, Estimate] = {}
    if current is not None:
        champ = load_anomaly_model(current.source)
        service = current.tags.get("feature_service", window.feature_service)
        champ_frame = (
            evaluation
            if service == window.feature_service
            else feature_source(service, split.evaluation)
        )
        champ_scores = champ.score(champ_frame)
        champ_ranking, champ_thresholded = _evaluate(y, champ_scores, champ.threshold, window)
        deltas = compare(
            y,
            scores,
            champ_scores,
            metrics=RANKING_METRICS,
            n_boot=window.bootstrap_resamples,
            seed=window.seed,
        ).deltas
        log(f"champion v{current.semver} PR-AUC {champ_ranking.metrics['pr_auc']}")

    decision = gate(
        gate_settings.metric,
        ranking.metrics[gate_settings.metric].value,
        champ_ranking.metrics[gate_settings.metric].value if champ_ranking else None,
        gate_settings.tolerance,
    )
    contract = Contract(features=list(model.features), output=OUTPUT)
    semver = next_semver(client, MODEL_NAME, contract, current)
    data_window = f"{split.train_start:%Y-%m-%d} .. {split.end:%Y-%m-%d}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    facts = {
        "feature service": window.feature_service,
        "features": ", ".join(model.features),
        "training window": f"{split.train_start} .. {split.evaluation_start}",
        "evaluation window": f"{split.evaluation_start} .. {split.end}",
        "customers": str(split.evaluation["customer_id"].n_unique()),
        "threshold": f"{model.threshold:.4f} ({settings.threshold_quantile:.2%} of training)",
        "candidate at threshold": (
            f"precision@{thresholded.k} {thresholded.precision_at_k:.3f}, recall "
            f"{thresholded.recall_at_threshold:.3f}, precision "
            f"{thresholded.precision_at_threshold:.3f} ({thresholded.flagged} flagged of "
            f"{thresholded.n}, {thresholded.positives} anomalies)"
        ),
        "Ray run": f"{settings.run_name} ({settings.num_workers} workers, "
        f"{'GPU' if settings.use_gpu else 'CPU'})",
        "training": f"{train_seconds:.1f} s, {training['train_samples_per_s']:.0f} samples/s, "
        f"checkpoints {training['checkpoint_share']:.1%} of loop time",
        "semantic version": semver,
        **dict(tags or {}),
    }
    if champ_thresholded is not None:
        facts["champion at threshold"] = (
            f"precision@{champ_thresholded.k} {champ_thresholded.precision_at_k:.3f}, recall "
            f"{champ_thresholded.recall_at_threshold:.3f} ({champ_thresholded.flagged} flagged)"
        )
    report_path = write_report(
        EvaluationReport(
            model_name=MODEL_NAME,
            title=f"anomaly_detector {semver} ({window.feature_service}) - retrain {stamp}",
            candidate=ranking,
            champion=champ_ranking,
            champion_label=f"champion v{current.semver}" if current else "champion",
            deltas=deltas,
            facts=facts,
            decision=("PROMOTE: " if decision.promote else "KEEP CHAMPION: ") + decision.reason,
        ),
        Path(report_dir) / f"anomaly_detector-{stamp}.html",
    )

    lineage = {
        "feature_service": window.feature_service,
        "data_window": data_window,
        "semver": semver,
        "ray_run": settings.run_name,
        **dict(tags or {}),
    }
    metrics = {
        **ranking.flat_metrics(),
        **_thresholded("", thresholded),
        "threshold": model.threshold,
        "base_rate": thresholded.base_rate,
        "train_seconds": train_seconds,
        **training,
    }
    if champ_ranking is not None and champ_thresholded is not None:
        metrics |= champ_ranking.flat_metrics("champion_")
        metrics |= _thresholded("champion_", champ_thresholded)
        metrics |= {f"delta_{k}": v.value for k, v in deltas.items()}
    run_id = _log_run(
        model,
        example=evaluation.head(20),
        settings=settings,
        window=window,
        metrics=metrics,
        report_path=report_path,
        tags={"model_name": MODEL_NAME, **lineage},
    )
    version, alias = publish(
        client,
        MODEL_NAME,
        run_id,
        contract=contract,
        tags={
            **lineage,
            "pr_auc": f"{ranking.metrics['pr_auc'].value:.6f}",
        },
        decision=decision,
    )
    log(
        f"registered anomaly_detector version {version} (semver {semver}) as {alias}: "
        f"{decision.reason}"
    )
    return AnomalyRetrainResult(
        model_name=MODEL_NAME,
        version=version,
        semver=semver,
        alias=alias,
        decision=decision,
        report_path=report_path,
        run_id=run_id,
        metrics=metrics,
        champion_metrics=champ_ranking.flat_metrics() if champ_ranking else None,
        train_seconds=train_seconds,
        training=training,
    )


def _log_run(
    model: AnomalyModel,
    *,
    example: pl.DataFrame,
    settings: AnomalySettings,
    window: AnomalyWindow,
    metrics: Mapping[str, float],
    report_path: Path,
    tags: Mapping[str, str],
) -> str:
    """Log the candidate in one MLflow run (the model as a pyfunc); return its id once finished."""
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from mlinfra_models._anomaly_pyfunc import CHECKPOINT_ARTIFACT, AnomalyDetectorPyfunc

    inputs = example.select(model.features).to_pandas()
    scores = model.score(example)
    outputs = {"anomaly_score": scores, "is_anomaly": scores > model.threshold}
    import pandas as pd

    signature = infer_signature(inputs, pd.DataFrame(outputs))
    params: dict[str, Any] = {
        k: v
        for k, v in {**asdict(settings), **asdict(window)}.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }
    params["hidden_sizes"] = ",".join(map(str, settings.hidden_sizes))
    params["features"] = ",".join(model.features)
    with mlflow.start_run(run_name=f"anomaly_detector-{tags['semver']}") as run:
        mlflow.set_tags(dict(tags))
        mlflow.log_params(params)
        mlflow.log_metrics(dict(metrics))
        mlflow.log_artifact(str(report_path))
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = model.save(Path(tmp) / CHECKPOINT_ARTIFACT)
            mlflow.pyfunc.log_model(
                name="model",
                python_model=AnomalyDetectorPyfunc(),
                artifacts={CHECKPOINT_ARTIFACT: str(checkpoint)},
                signature=signature,
                input_example=inputs.head(5),
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"polars=={pl.__version__}",
                    f"numpy=={np.__version__}",
                ],
            )
        return str(run.info.run_id)
