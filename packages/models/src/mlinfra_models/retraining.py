"""One churn retrain, end to end: train, evaluate against the champion on the same window,
explain the lift by ablation, report, log to MLflow, register, and gate the ``champion`` alias.

Features come through a :data:`FeatureSource` callable (the flow passes Feast's point-in-time
join), so this module knows nothing of Feast. Order matters for safety: everything that can fail
(training, evaluation, the champion's scores, ablation, the report) happens before the MLflow run;
the model becomes a registered version only once its run has finished with every artifact; the
alias moves last.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from mlinfra_models.churn import (
    CHURN_LABEL,
    ChurnModel,
    ChurnSettings,
    time_split,
    train_churn,
)
from mlinfra_models.evaluation import (
    METRICS,
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

__all__ = ["FeatureSource", "GateSettings", "RetrainResult", "config_hash", "retrain_churn"]

#: ``(feature_service, labelled entity rows) -> rows with that service's features joined``.
FeatureSource = Callable[[str, pl.DataFrame], pl.DataFrame]

MODEL_NAME = "churn"
OUTPUT = "churn_probability"
_KEYS = ("customer_id", "event_timestamp", CHURN_LABEL)


@dataclass(frozen=True)
class GateSettings:
    metric: str = "roc_auc"
    tolerance: float = 0.005


@dataclass(frozen=True)
class RetrainResult:
    model_name: str
    version: str
    semver: str
    alias: str
    decision: GateDecision
    report_path: Path
    run_id: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    ablation: dict[str, Estimate] = field(default_factory=dict)
    ablation_auc: dict[str, float] = field(default_factory=dict)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short stable hash of a (JSON-able) config."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _features_of(frame: pl.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _KEYS]


def _ablation(
    split_train: pl.DataFrame,
    split_val: pl.DataFrame,
    evaluation: pl.DataFrame,
    *,
    variants: Mapping[str, list[str]],
    full: list[str],
    settings: ChurnSettings,
) -> tuple[dict[str, Estimate], dict[str, float]]:
    """Candidate-minus-variant ROC-AUC, each variant retrained on the same (sub)sampled rows."""
    train = split_train
    if train.height > settings.ablation_max_rows:
        train = train.sample(settings.ablation_max_rows, seed=settings.seed)
    y = evaluation[CHURN_LABEL].to_numpy()
    reference = train_churn(train, split_val, full, settings).predict_proba(evaluation)
    deltas, aucs = {}, {}
    for name, features in variants.items():
        scores = train_churn(train, split_val, features, settings).predict_proba(evaluation)
        comparison = compare(
            y,
            reference,
            scores,
            metrics={"roc_auc": METRICS["roc_auc"]},
            n_boot=settings.bootstrap_resamples,
            seed=settings.seed,
        )
        deltas[name] = comparison.deltas["roc_auc"]
        aucs[name] = evaluate_binary(y, scores, n_boot=2).metrics["roc_auc"].value
    aucs["candidate (same rows)"] = evaluate_binary(y, reference, n_boot=2).metrics["roc_auc"].value
    return deltas, aucs


def retrain_churn(
    labels: pl.DataFrame,
    feature_source: FeatureSource,
    settings: ChurnSettings,
    registry: RegistrySettings,
    report_dir: Path,
    *,
    gate_settings: GateSettings | None = None,
    tags: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> RetrainResult:
    """Train a churn candidate on ``labels`` and register it (see the module docstring)."""
    gate_settings = gate_settings or GateSettings()
    client = mlflow_client(registry)  # fails fast when the tracking URI is unreachable
    # Split the labels first, so that features are joined only for the as-of dates used.
    by_date = time_split(labels, settings)
    used = pl.concat([by_date.train, by_date.validation, by_date.evaluation])
    frame = feature_source(settings.feature_service, used)
    split = time_split(frame, settings)
    features = _features_of(frame)
    log(
        f"training churn on {settings.feature_service}: {split.train.height} train, "
        f"{split.validation.height} validation, {split.evaluation.height} evaluation rows"
    )
    model = train_churn(split.train, split.validation, features, settings)
    y_eval = split.evaluation[CHURN_LABEL].to_numpy()
    scores = model.predict_proba(split.evaluation)
    n_boot = settings.bootstrap_resamples
    evaluation = evaluate_binary(y_eval, scores, n_boot=n_boot, seed=settings.seed)
    log(f"candidate ROC-AUC {evaluation.metrics['roc_auc']}")

    current = champion(client, MODEL_NAME)
    champion_eval: BinaryEvaluation | None = None
    deltas: dict[str, Estimate] = {}
    if current is not None:
        import mlflow.catboost

        champ_model = ChurnModel(
            booster=mlflow.catboost.load_model(current.source),
            features=current.contract.features,
        )
        eval_rows = split.evaluation.select(_KEYS)
        champ_frame = feature_source(current.tags["feature_service"], eval_rows)
        champ_scores = champ_model.predict_proba(champ_frame)
        champion_eval = evaluate_binary(y_eval, champ_scores, n_boot=n_boot, seed=settings.seed)
        deltas = compare(y_eval, scores, champ_scores, n_boot=n_boot, seed=settings.seed).deltas
        log(f"champion v{current.semver} ROC-AUC {champion_eval.metrics['roc_auc']}")

    variants: dict[str, list[str]] = {}
    baseline = feature_source(settings.baseline_feature_service, labels.head(1))
    baseline_features = _features_of(baseline)
    if set(baseline_features) <= set(features) and baseline_features != features:
        variants[settings.baseline_feature_service] = baseline_features
    for dropped in settings.ablation:
        if dropped in features:
            variants[f"without {dropped}"] = [f for f in features if f != dropped]
    ablation, ablation_auc = (
        _ablation(
            split.train,
            split.validation,
            split.evaluation,
            variants=variants,
            full=features,
            settings=settings,
        )
        if variants
        else ({}, {})
    )
    for name, delta in ablation.items():
        log(f"ablation {name}: candidate - variant ROC-AUC {delta}")

    decision = gate(
        gate_settings.metric,
        evaluation.metrics[gate_settings.metric].value,
        champion_eval.metrics[gate_settings.metric].value if champion_eval else None,
        gate_settings.tolerance,
        higher_is_better=gate_settings.metric not in {"log_loss", "brier"},
    )
    contract = Contract(features=features, output=OUTPUT)
    semver = next_semver(client, MODEL_NAME, contract, current)
    windows = split.windows()
    data_window = f"{windows['train'][0]} .. {windows['evaluation'][-1]}"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report_path = write_report(
        EvaluationReport(
            model_name=MODEL_NAME,
            title=f"churn {semver} ({settings.feature_service}) - retrain {stamp}",
            candidate=evaluation,
            champion=champion_eval,
            champion_label=f"champion v{current.semver}" if current else "champion",
            deltas=deltas,
            ablation=ablation,
            ablation_auc=ablation_auc,
            facts={
                "feature service": settings.feature_service,
                "features": ", ".join(features),
                "train as-of dates": ", ".join(windows["train"]),
                "validation as-of dates": ", ".join(windows["validation"]),
                "evaluation as-of dates": ", ".join(windows["evaluation"]),
                "semantic version": semver,
                **dict(tags or {}),
            },
            decision=("PROMOTE: " if decision.promote else "KEEP CHAMPION: ") + decision.reason,
        ),
        Path(report_dir) / f"churn-{stamp}.html",
    )

    # What the run and the registered version both carry.
    lineage = {
        "feature_service": settings.feature_service,
        "data_window": data_window,
        "semver": semver,
        **dict(tags or {}),
    }
    run_id = _log_run(
        model,
        reference=held_out_reference(model, split.validation, split.evaluation),
        evaluation_rows=split.evaluation,
        evaluation=evaluation,
        champion_eval=champion_eval,
        deltas=deltas,
        ablation=ablation,
        settings=settings,
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
            "roc_auc": f"{evaluation.metrics['roc_auc'].value:.6f}",
        },
        decision=decision,
    )
    log(f"registered churn version {version} (semver {semver}) as {alias}: {decision.reason}")
    return RetrainResult(
        model_name=MODEL_NAME,
        version=version,
        semver=semver,
        alias=alias,
        decision=decision,
        report_path=report_path,
        run_id=run_id,
        metrics=evaluation.flat_metrics(),
        champion_metrics=champion_eval.flat_metrics() if champion_eval else None,
        ablation=ablation,
        ablation_auc=ablation_auc,
    )


#: The MLflow artifact holding a version's labelled held-out predictions (see
#: :func:`held_out_reference`); :func:`load_reference` reads it back.
REFERENCE_ARTIFACT = "reference.parquet"


def held_out_reference(
    model: ChurnModel, validation: pl.DataFrame, evaluation: pl.DataFrame
) -> pl.DataFrame:
    """The candidate's scores and labels on every labelled row it did not train on (the
    validation and evaluation windows): the reference that performance estimation calibrates
    on before production outcomes arrive (NannyML's "reference period")."""
    frames = [
        rows.select(
            "customer_id",
            "event_timestamp",
            pl.lit(window).alias("window"),
            pl.Series("score", model.predict_proba(rows), dtype=pl.Float64),
            pl.col(CHURN_LABEL).cast(pl.Boolean).alias("label"),
        )
        for window, rows in (("validation", validation), ("evaluation", evaluation))
    ]
    return pl.concat(frames)


def load_reference(
    registry: RegistrySettings, model_name: str, version: str
) -> pl.DataFrame | None:
    """A registered version's held-out reference (``customer_id``, ``event_timestamp``,
    ``window``, ``score``, ``label``), or ``None`` for a version logged without one."""
    client = mlflow_client(registry)
    run_id = client.get_model_version(model_name, version).run_id
    if REFERENCE_ARTIFACT not in {a.path for a in client.list_artifacts(run_id)}:
        return None
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=REFERENCE_ARTIFACT, dst_path=tmp
        )
        return pl.read_parquet(path)


def _log_run(
    model: ChurnModel,
    *,
    reference: pl.DataFrame,
    evaluation_rows: pl.DataFrame,
    evaluation: BinaryEvaluation,
    champion_eval: BinaryEvaluation | None,
    deltas: Mapping[str, Estimate],
    ablation: Mapping[str, Estimate],
    settings: ChurnSettings,
    report_path: Path,
    tags: Mapping[str, str],
) -> str:
    """Log everything about the candidate in one MLflow run; return its id once finished."""
    import mlflow
    import mlflow.catboost
    from mlflow.models import infer_signature

    example = model.matrix(evaluation_rows.head(50))
    signature = infer_signature(example, model.booster.predict_proba(example)[:, 1])
    with mlflow.start_run(run_name=f"churn-{tags['semver']}") as run:
        mlflow.set_tags(dict(tags))
        mlflow.log_params(
            {
                k: v
                for k, v in vars(settings).items()
                if isinstance(v, (int, float, str)) and not isinstance(v, bool)
            }
            | {
                "best_iteration": model.booster.get_best_iteration(),
                "features": ",".join(model.features),
            }
        )
        mlflow.log_metrics(evaluation.flat_metrics())
        if champion_eval is not None:
            mlflow.log_metrics(champion_eval.flat_metrics("champion_"))
            mlflow.log_metrics({f"delta_{k}": v.value for k, v in deltas.items()})
        mlflow.log_metrics(
            {f"ablation_{k.replace(' ', '_')}_auc_delta": v.value for k, v in ablation.items()}
        )
        with tempfile.TemporaryDirectory() as tmp:
            payload = {
                "candidate": evaluation.as_dict(),
                "champion": champion_eval.as_dict() if champion_eval else None,
                "deltas": {k: vars(v) for k, v in deltas.items()},
                "ablation": {k: vars(v) for k, v in ablation.items()},
            }
            path = Path(tmp) / "evaluation.json"
            path.write_text(json.dumps(payload, indent=2))
            mlflow.log_artifact(str(path))
            reference.write_parquet(Path(tmp) / REFERENCE_ARTIFACT)
            mlflow.log_artifact(str(Path(tmp) / REFERENCE_ARTIFACT))
        mlflow.log_artifact(str(report_path))
        import catboost

        mlflow.catboost.log_model(
            model.booster,
            name="model",
            signature=signature,
            input_example=example.head(5),
            pip_requirements=[f"catboost=={catboost.__version__}"],
        )
        return str(run.info.run_id)
