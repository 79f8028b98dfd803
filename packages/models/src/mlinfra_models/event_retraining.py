"""One event-classifier retrain, end to end: majority labels under the chosen taxonomy, train on
the older events, evaluate on the newest against the champion, report, log to MLflow, register,
gate.

Taxonomy changes
----------------
A version's contract carries its taxonomy (``extras``: version and a digest of its categories),
so a new taxonomy is a *major* version. The champion is always scored on the same evaluation
events, each model against the labels of its own taxonomy:

- **Same taxonomy**: a like-for-like comparison; the gate promotes unless the candidate's
  macro-F1 is worse than the champion's by more than the tolerance.
- **New taxonomy**: the label sets differ, so the change in macro-F1 (candidate under its
  taxonomy minus champion under its own) is not like-for-like: fewer, merged categories are
  easier. The report says so and, when the new taxonomy maps from the champion's, adds the
  champion's predictions mapped into the new taxonomy, which *is* like-for-like. The gate then
  applies the same rule to the two macro-F1s (not worse than the champion's minus the
  tolerance), so a merged taxonomy can promote automatically; with
  ``promote_taxonomy_change=False`` a taxonomy change is registered as ``challenger`` and waits
  for a person to move the alias.

Each version logs its confusion matrix on the evaluation events (``confusion_matrix.json``) and
its taxonomy (``taxonomy.yaml``); :func:`event_confusion` reads the former back as the
``model_confusion`` table that :func:`~mlinfra_models.labels.propose_merges` takes. As for churn,
everything that can fail happens before the MLflow run, the version is registered only once its
run finished, and the alias moves last.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlinfra_models.evaluation import Estimate
from mlinfra_models.events import (
    EVENT_LABEL,
    EventClassifier,
    EventClassifierSettings,
    MulticlassEvaluation,
    compare_multiclass,
    confusion_pairs,
    evaluate_multiclass,
    macro_f1,
    majority_labels,
    split_events,
    taxonomy_digest,
    train_event_classifier,
)
from mlinfra_models.labels.taxonomy import (
    Taxonomy,
    TaxonomyError,
    convert_labels,
    load_taxonomy,
    write_taxonomy,
)
from mlinfra_models.registry import (
    ChampionVersion,
    Contract,
    GateDecision,
    RegistrySettings,
    champion,
    gate,
    mlflow_client,
    next_semver,
    publish,
)
from mlinfra_models.report import ClassificationReport, write_classification_report
from mlinfra_models.retraining import FeatureSource

__all__ = [
    "EventGateSettings",
    "EventRetrainResult",
    "event_confusion",
    "retrain_event_classifier",
]

MODEL_NAME = "event_classifier"
OUTPUT = "event_category"
CONFUSION_ARTIFACT = "confusion_matrix.json"
TAXONOMY_ARTIFACT = "taxonomy.yaml"
_KEYS = ("event_id", "event_timestamp")
_NOT_FEATURES = frozenset({*_KEYS, EVENT_LABEL, "votes", "ratings"})


@dataclass(frozen=True)
class EventGateSettings:
    """The event classifier's promotion gate (see the module docstring)."""

    metric: str = "macro_f1"
    tolerance: float = 0.02
    #: Whether a new taxonomy may become champion by the gate alone.
    promote_taxonomy_change: bool = True

    def __post_init__(self) -> None:
        if self.metric not in {"macro_f1", "accuracy"}:
            raise ValueError(
                f"EventGateSettings.metric must be 'macro_f1' or 'accuracy', got {self.metric!r}"
            )


@dataclass(frozen=True)
class EventRetrainResult:
    model_name: str
    version: str
    semver: str
    alias: str
    decision: GateDecision
    report_path: Path
    run_id: str
    taxonomy_version: str
    metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_taxonomy_version: str | None
    #: Whether the champion was scored on the candidate's labels (same taxonomy).
    like_for_like: bool
    #: Candidate minus champion macro-F1 on the same events, each against its own labels.
    macro_f1_change: Estimate | None
    #: The champion's predictions mapped into the candidate's (new) taxonomy.
    champion_mapped_macro_f1: float | None
    confusion: pl.DataFrame = field(repr=False)


@dataclass(frozen=True)
class _ChampionScore:
    current: ChampionVersion
    taxonomy: Taxonomy
    evaluation: MulticlassEvaluation
    deltas: dict[str, Estimate]
    like_for_like: bool
    mapped_macro_f1: float | None


def _labelled_events(
    annotations: pl.DataFrame,
    events: pl.DataFrame,
    source: Taxonomy,
    target: Taxonomy,
    log: Callable[[str], None],
) -> pl.DataFrame:
    missing = [c for c in _KEYS if c not in events.columns]
    if missing:
        raise ValueError(
            f"the events lack column(s) {missing}; expected {list(_KEYS)}, got {events.columns}"
        )
    labels = majority_labels(annotations, source, target)
    labelled = labels.join(events.select(_KEYS).unique("event_id"), on="event_id", how="inner")
    if labelled.height < labels.height:
        log(f"{labels.height - labelled.height} annotated event(s) are not among the events")
    if labelled.is_empty():
        raise ValueError(
            f"none of the {labels.height} annotated events is among the {events.height} events; "
            "expected annotations of these events"
        )
    return labelled.select(*_KEYS, EVENT_LABEL)


def _load_champion_taxonomy(current: ChampionVersion) -> Taxonomy:
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=current.run_id, artifact_path=TAXONOMY_ARTIFACT, dst_path=tmp
        )
        return load_taxonomy(path)


def _score_champion(
    current: ChampionVersion,
    *,
    annotations: pl.DataFrame,
    annotation_taxonomy: Taxonomy,
    taxonomy: Taxonomy,
    evaluation_rows: pl.DataFrame,
    predictions: np.ndarray,
    feature_source: FeatureSource,
    settings: EventClassifierSettings,
) -> _ChampionScore:
    """The champion on the candidate's evaluation events, against its own taxonomy's labels."""
    import mlflow.catboost

    champ_taxonomy = _load_champion_taxonomy(current)
    model = EventClassifier(
        booster=mlflow.catboost.load_model(current.source),
        features=current.contract.features,
        taxonomy_version=champ_taxonomy.version,
    )
    service = current.tags.get("feature_service", settings.feature_service)
    frame = (
        evaluation_rows
        if service == settings.feature_service
        else feature_source(service, evaluation_rows.select(*_KEYS, EVENT_LABEL))
    )
    champ_predictions = model.predict(frame)
    y = evaluation_rows[EVENT_LABEL].to_list()
    like_for_like = current.tags.get("taxonomy_digest") == taxonomy_digest(taxonomy)
    if like_for_like:
        y_champ = y
    else:
        own = majority_labels(annotations, annotation_taxonomy, champ_taxonomy)
        y_champ = (
            evaluation_rows.select("event_id")
            .join(own, on="event_id", how="left", maintain_order="left")[EVENT_LABEL]
            .to_list()
        )
    evaluation = evaluate_multiclass(
        y_champ,
        champ_predictions.tolist(),
        champ_taxonomy,
        n_boot=settings.bootstrap_resamples,
        seed=settings.seed,
    )
    deltas = compare_multiclass(
        y,
        predictions.tolist(),
        y_champ,
        champ_predictions.tolist(),
        n_boot=settings.bootstrap_resamples,
        seed=settings.seed,
    )
    mapped = None
    if not like_for_like:
        try:
            converted = convert_labels(champ_predictions.tolist(), champ_taxonomy, taxonomy)
            mapped = macro_f1(y, converted.to_list())
        except TaxonomyError:
            mapped = None  # the new taxonomy does not map from the champion's
    return _ChampionScore(current, champ_taxonomy, evaluation, deltas, like_for_like, mapped)


def _decide(
    gate_settings: EventGateSettings,
    evaluation: MulticlassEvaluation,
    score: _ChampionScore | None,
) -> GateDecision:
    metric = gate_settings.metric
    candidate = evaluation.metrics[metric].value
    if score is None:
        return gate(metric, candidate, None, gate_settings.tolerance)
    decision = gate(
        metric, candidate, score.evaluation.metrics[metric].value, gate_settings.tolerance
    )
    if score.like_for_like:
        return decision
    change = (
        f"taxonomy {score.taxonomy.version} ({len(score.taxonomy)} categories) -> "
        f"{evaluation.taxonomy_version} ({len(evaluation.labels)}): the label sets differ, so "
        "the comparison is not like-for-like"
    )
    if not gate_settings.promote_taxonomy_change:
        return GateDecision(
            False,
            f"{change}; a taxonomy change is promoted by a person (promote_taxonomy_change is off)",
            metric,
            candidate,
            decision.champion,
            gate_settings.tolerance,
        )
    return GateDecision(
        decision.promote,
        f"{change}; {decision.reason}",
        metric,
        candidate,
        decision.champion,
        gate_settings.tolerance,
    )


def retrain_event_classifier(
    annotations: pl.DataFrame,
    events: pl.DataFrame,
    feature_source: FeatureSource,
    settings: EventClassifierSettings,
    *,
    taxonomy: Taxonomy,
    annotation_taxonomy: Taxonomy,
    registry: RegistrySettings,
    report_dir: Path,
    gate_settings: EventGateSettings | None = None,
    tags: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
) -> EventRetrainResult:
    """Train an event-classifier candidate under ``taxonomy`` and register it.

    ``annotations`` (``event_id``, ``annotator_id``, ``label``) are labelled in
    ``annotation_taxonomy``; ``events`` gives each event's ``event_timestamp``.
    """
    gate_settings = gate_settings or EventGateSettings()
    client = mlflow_client(registry)
    labelled = _labelled_events(annotations, events, annotation_taxonomy, taxonomy, log)
    frame = feature_source(settings.feature_service, labelled)
    split = split_events(frame, settings)
    features = [c for c in frame.columns if c not in _NOT_FEATURES]
    log(
        f"training event_classifier on {settings.feature_service} under taxonomy "
        f"{taxonomy.version} ({len(taxonomy)} categories): {split.train.height} train, "
        f"{split.evaluation.height} evaluation events (from {split.evaluation_start})"
    )
    model = train_event_classifier(split.train, settings, taxonomy, features)
    predictions = model.predict(split.evaluation)
    y = split.evaluation[EVENT_LABEL].to_list()
    evaluation = evaluate_multiclass(
        y,
        predictions.tolist(),
        taxonomy,
        n_boot=settings.bootstrap_resamples,
        seed=settings.seed,
    )
    log(
        f"candidate ({taxonomy.version}) macro-F1 {evaluation.metrics['macro_f1']}, accuracy "
        f"{evaluation.metrics['accuracy']}"
    )

    current = champion(client, MODEL_NAME)
    score = None
    if current is not None:
        score = _score_champion(
            current,
            annotations=annotations,
            annotation_taxonomy=annotation_taxonomy,
            taxonomy=taxonomy,
            evaluation_rows=split.evaluation,
            predictions=predictions,
            feature_source=feature_source,
            settings=settings,
        )
        log(
            f"champion v{current.semver} ({score.taxonomy.version}) macro-F1 "
            f"{score.evaluation.metrics['macro_f1']}"
        )
        like = "like-for-like" if score.like_for_like else "label sets differ: not like-for-like"
        log(
            f"macro-F1 change {taxonomy.version} candidate vs {score.taxonomy.version} champion: "
            f"{score.deltas['macro_f1'].value:+.4f} {_interval(score.deltas['macro_f1'])} ({like})"
        )
        if score.mapped_macro_f1 is not None:
            log(
                f"champion's predictions mapped to {taxonomy.version}: macro-F1 "
                f"{score.mapped_macro_f1:.4f} (like-for-like)"
            )

    decision = _decide(gate_settings, evaluation, score)
    digest = taxonomy_digest(taxonomy)
    contract = Contract(
        features=features,
        output=OUTPUT,
        extras={"taxonomy_version": taxonomy.version, "taxonomy_digest": digest},
    )
    semver = next_semver(client, MODEL_NAME, contract, current)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    window = split.window()
    notes = []
    if score is not None and not score.like_for_like:
        notes.append(
            f"The label sets differ: the candidate is scored against {taxonomy.version} labels "
            f"({len(taxonomy)} categories), the champion against {score.taxonomy.version} labels "
            f"({len(score.taxonomy)} categories), on the same events. The difference is not "
            "like-for-like: merged categories are easier to tell apart."
        )
        if score.mapped_macro_f1 is not None:
            notes.append(
                f"Like-for-like reference: the champion's predictions mapped into "
                f"{taxonomy.version} reach macro-F1 {score.mapped_macro_f1:.4f} "
                f"(candidate {evaluation.metrics['macro_f1'].value:.4f})."
            )
    report_path = write_classification_report(
        ClassificationReport(
            title=f"event_classifier {semver} (taxonomy {taxonomy.version}) - retrain {stamp}",
            candidate=evaluation,
            champion=score.evaluation if score else None,
            champion_label=(
                f"champion v{score.current.semver} ({score.taxonomy.version})"
                if score
                else "champion"
            ),
            deltas=score.deltas if score else {},
            notes=notes,
            facts={
                "feature service": settings.feature_service,
                "features": ", ".join(features),
                "taxonomy": f"{taxonomy.version} ({len(taxonomy)} categories, digest {digest})",
                "labels": "majority of the annotators' labels after conversion to "
                f"{taxonomy.version} (ties: the category listed first)",
                "training events": f"{split.train.height} ({window['train']})",
                "evaluation events": f"{split.evaluation.height} ({window['evaluation']})",
                "semantic version": semver,
                **dict(tags or {}),
            },
            decision=("PROMOTE: " if decision.promote else "KEEP CHAMPION: ") + decision.reason,
        ),
        Path(report_dir) / f"event_classifier-{stamp}.html",
    )

    lineage = {
        "feature_service": settings.feature_service,
        "data_window": f"{split.train['event_timestamp'].min()!s} .. "
        f"{split.evaluation['event_timestamp'].max()!s}",
        "semver": semver,
        "taxonomy_version": taxonomy.version,
        "taxonomy_digest": digest,
        **dict(tags or {}),
    }
    metrics = evaluation.flat_metrics()
    if score is not None:
        metrics |= score.evaluation.flat_metrics("champion_")
        metrics |= {f"delta_{k}": v.value for k, v in score.deltas.items()}
        if score.mapped_macro_f1 is not None:
            metrics["champion_mapped_macro_f1"] = score.mapped_macro_f1
    run_id = _log_run(
        model,
        example=split.evaluation.head(20),
        evaluation=evaluation,
        champion_eval=score.evaluation if score else None,
        taxonomy=taxonomy,
        settings=settings,
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
            "macro_f1": f"{evaluation.metrics['macro_f1'].value:.6f}",
        },
        decision=decision,
    )
    log(
        f"registered event_classifier version {version} (semver {semver}, taxonomy "
        f"{taxonomy.version}) as {alias}: {decision.reason}"
    )
    return EventRetrainResult(
        model_name=MODEL_NAME,
        version=version,
        semver=semver,
        alias=alias,
        decision=decision,
        report_path=report_path,
        run_id=run_id,
        taxonomy_version=taxonomy.version,
        metrics=metrics,
        champion_metrics=score.evaluation.flat_metrics() if score else None,
        champion_taxonomy_version=score.taxonomy.version if score else None,
        like_for_like=score.like_for_like if score else True,
        macro_f1_change=score.deltas["macro_f1"] if score else None,
        champion_mapped_macro_f1=score.mapped_macro_f1 if score else None,
        confusion=confusion_pairs(evaluation),
    )


def _interval(est: Estimate) -> str:
    return f"[{est.low:+.4f}, {est.high:+.4f}]"


def _log_run(
    model: EventClassifier,
    *,
    example: pl.DataFrame,
    evaluation: MulticlassEvaluation,
    champion_eval: MulticlassEvaluation | None,
    taxonomy: Taxonomy,
    settings: EventClassifierSettings,
    metrics: Mapping[str, float],
    report_path: Path,
    tags: Mapping[str, str],
) -> str:
    """Log the candidate in one MLflow run; return its id once finished."""
    import catboost
    import mlflow
    import mlflow.catboost
    from mlflow.models import infer_signature

    inputs = model.matrix(example)
    signature = infer_signature(inputs, model.predict(example).astype(str))
    params: dict[str, Any] = {
        k: v
        for k, v in asdict(settings).items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool)
    }
    params |= {
        "text_calcers": ",".join(settings.text_calcers),
        "features": ",".join(model.features),
        "classes": len(model.classes),
    }
    with mlflow.start_run(run_name=f"event_classifier-{tags['semver']}") as run:
        mlflow.set_tags(dict(tags))
        mlflow.log_params(params)
        mlflow.log_metrics(dict(metrics))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "evaluation.json").write_text(
                json.dumps(
                    {
                        "candidate": evaluation.as_dict(),
                        "champion": champion_eval.as_dict() if champion_eval else None,
                    },
                    indent=2,
                )
            )
            (out / CONFUSION_ARTIFACT).write_text(
                json.dumps(
                    {
                        "taxonomy_version": evaluation.taxonomy_version,
                        "rows": "label (annotator majority)",
                        "columns": "predicted",
                        "labels": evaluation.labels,
                        "matrix": evaluation.confusion,
                        "pairs": confusion_pairs(evaluation).to_dicts(),
                    },
                    indent=2,
                )
            )
            write_taxonomy(taxonomy, out / TAXONOMY_ARTIFACT)
            for name in ("evaluation.json", CONFUSION_ARTIFACT, TAXONOMY_ARTIFACT):
                mlflow.log_artifact(str(out / name))
        mlflow.log_artifact(str(report_path))
        mlflow.catboost.log_model(
            model.booster,
            name="model",
            signature=signature,
            input_example=inputs.head(5),
            pip_requirements=[f"catboost=={catboost.__version__}"],
        )
        return str(run.info.run_id)


def event_confusion(registry: RegistrySettings, version: str | None = None) -> pl.DataFrame:
    """A registered version's confusion matrix (the champion's by default) as the
    ``model_confusion`` table (``label``, ``predicted``, ``count``) of
    :func:`~mlinfra_models.labels.propose_merges`; its taxonomy is the version's
    ``taxonomy_version`` tag."""
    import mlflow

    client = mlflow_client(registry)
    if version is None:
        current = champion(client, MODEL_NAME)
        if current is None:
            raise LookupError(f"{MODEL_NAME} has no champion; expected a registered version")
        run_id = current.run_id
    else:
        run_id = client.get_model_version(MODEL_NAME, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=CONFUSION_ARTIFACT, dst_path=tmp
        )
        data = json.loads(Path(path).read_text())
    return pl.DataFrame(
        data["pairs"], schema={"label": pl.String, "predicted": pl.String, "count": pl.Int64}
    )
