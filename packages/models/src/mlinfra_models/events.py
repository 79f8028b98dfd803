"""The event classifier: CatBoost on a product event's name, module, text and numbers, under a
chosen taxonomy version.

Labels
------
Each annotated event gets one label, the *majority* of its annotators' labels, computed after the
annotations are converted into the chosen taxonomy (:func:`majority_labels`): under a merged
taxonomy, votes for two categories that merge count together. Ties (e.g. three annotators, three
different labels) go to the tied category listed first in the chosen taxonomy. That rule is
deterministic, needs nothing but the taxonomy, and does not favour any annotator.

Split
-----
By time, never at random (:func:`split_events`): the newest ``evaluation_fraction`` of the
labelled events (by ``event_timestamp``, then ``event_id``) is the evaluation window and every
older event trains. The training runs a fixed number of iterations without early stopping: with
a few hundred annotated events there are none to spare for a validation window.

Model
-----
CatBoost ``MultiClass`` with ``event_name`` and ``module`` as categorical features (one-hot:
they have few values, and per-class target statistics of 24 classes are slow), ``event_text``
as a text feature (a word dictionary with bag-of-words and naive-Bayes features) and the
numbers as they are. It predicts only categories it saw in training.

Evaluation
----------
Macro-F1 (the unweighted mean of per-class F1 over the classes that occur in the labels or the
predictions, as scikit-learn's ``f1_score(average="macro")``) and accuracy, with percentile
bootstrap intervals over events as in :mod:`~mlinfra_models.evaluation`; per-class precision,
recall and F1; the confusion matrix (labels in rows, predictions in columns, in taxonomy order).
:func:`compare_multiclass` is the paired comparison of two models on the same events, also when
their label sets differ (a taxonomy change), in which case it is not like-for-like.

Plain Python on Polars frames; the caller joins the features (no Feast here).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from mlinfra_models.evaluation import Estimate
from mlinfra_models.labels.taxonomy import Taxonomy, TaxonomyError, convert_labels

__all__ = [
    "CATEGORICAL_EVENT_FEATURES",
    "EVENT_FEATURES",
    "EVENT_LABEL",
    "TEXT_EVENT_FEATURES",
    "EventClassifier",
    "EventClassifierSettings",
    "EventSplit",
    "MulticlassEvaluation",
    "compare_multiclass",
    "confusion_pairs",
    "evaluate_multiclass",
    "macro_f1",
    "majority_labels",
    "split_events",
    "taxonomy_digest",
    "train_event_classifier",
]

EVENT_FEATURES = ("event_name", "module", "event_text", "duration_s", "items_count", "value_usd")
CATEGORICAL_EVENT_FEATURES = ("event_name", "module")
TEXT_EVENT_FEATURES = ("event_text",)
EVENT_LABEL = "label"
_KEYS = ("event_id", "event_timestamp")


@dataclass(frozen=True)
class EventClassifierSettings:
    """Training and evaluation settings of the event classifier."""

    feature_service: str = "event_classifier_v1"
    evaluation_fraction: float = 0.2
    min_train_events: int = 50
    iterations: int = 300
    depth: int = 4
    learning_rate: float = 0.1
    l2_leaf_reg: float = 3.0
    one_hot_max_size: int = 255
    #: CatBoost text feature calcers over a word dictionary.
    text_calcers: list[str] = field(
        default_factory=lambda: ["BoW:top_tokens_count=100", "NaiveBayes"]
    )
    #: Words seen fewer times in training are left out of the dictionary.
    min_word_count: int = 3
    seed: int = 7
    thread_count: int = -1
    bootstrap_resamples: int = 200

    def __post_init__(self) -> None:
        if not 0 < self.evaluation_fraction < 1:
            raise ValueError(
                "EventClassifierSettings.evaluation_fraction must be in (0, 1), got "
                f"{self.evaluation_fraction}"
            )
        for name in ("min_train_events", "iterations", "depth", "bootstrap_resamples"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"EventClassifierSettings.{name} must be >= 1, got {getattr(self, name)}"
                )
        if not self.text_calcers:
            raise ValueError("EventClassifierSettings.text_calcers must name at least one calcer")


def taxonomy_digest(taxonomy: Taxonomy) -> str:
    """A short hash of the taxonomy's categories: two files that both say ``v2`` but hold
    different categories have different digests."""
    text = json.dumps([taxonomy.version, list(taxonomy.names)])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _require(frame: pl.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the {what} lack column(s) {missing}; expected {list(columns)}, got {frame.columns}"
        )


def majority_labels(annotations: pl.DataFrame, source: Taxonomy, target: Taxonomy) -> pl.DataFrame:
    """One label per event: the majority of its annotators' labels in ``target``.

    ``annotations`` is a long table (``event_id``, ``annotator_id``, ``label``) labelled in
    ``source``; labels are converted into ``target`` first (``target.maps_from``), then voted.
    Ties go to the tied category listed first in ``target``. Returns ``event_id``, ``label``,
    ``votes`` (for the label) and ``ratings`` (annotators of the event), sorted by event.
    """
    _require(annotations, ["event_id", "annotator_id", "label"], "annotations")
    if annotations.is_empty():
        raise ValueError("the annotations are empty; expected (event_id, annotator_id, label) rows")
    if annotations["label"].null_count():
        raise ValueError(f"the annotations have {annotations['label'].null_count()} null label(s)")
    duplicated = annotations.select("event_id", "annotator_id").is_duplicated()
    if duplicated.any():
        first = annotations.filter(duplicated).row(0, named=True)
        raise ValueError(
            f"the annotations rate an event twice by one annotator ({int(duplicated.sum())} rows, "
            f"e.g. event {first['event_id']} by {first['annotator_id']}); expected one label per "
            "(event_id, annotator_id)"
        )
    converted = annotations.select(
        "event_id", convert_labels(annotations["label"], source, target).alias(EVENT_LABEL)
    )
    rank = pl.DataFrame(
        {EVENT_LABEL: list(target.names), "_rank": list(range(len(target)))},
        schema={EVENT_LABEL: pl.String, "_rank": pl.Int64},
    )
    return (
        converted.group_by("event_id", EVENT_LABEL)
        .agg(pl.len().cast(pl.Int64).alias("votes"))
        .with_columns(pl.col("votes").sum().over("event_id").alias("ratings"))
        .join(rank, on=EVENT_LABEL, how="left")
        .sort(["event_id", "votes", "_rank"], descending=[False, True, False])
        .group_by("event_id", maintain_order=True)
        .first()
        .select("event_id", EVENT_LABEL, "votes", "ratings")
    )


@dataclass(frozen=True)
class EventSplit:
    train: pl.DataFrame
    evaluation: pl.DataFrame
    evaluation_start: datetime

    def window(self) -> dict[str, str]:
        def span(frame: pl.DataFrame) -> str:
            ts = frame["event_timestamp"]
            return f"{ts.min()!s} .. {ts.max()!s}"

        return {"train": span(self.train), "evaluation": span(self.evaluation)}


def split_events(frame: pl.DataFrame, settings: EventClassifierSettings) -> EventSplit:
    """Older events train, the newest ``evaluation_fraction`` evaluate (see the module doc)."""
    _require(frame, [*_KEYS, EVENT_LABEL], "labelled events")
    if frame.is_empty():
        raise ValueError("the labelled events are empty; expected annotated events")
    ordered = frame.sort(*_KEYS)
    n_eval = max(1, math.ceil(ordered.height * settings.evaluation_fraction))
    start: datetime = ordered["event_timestamp"][ordered.height - n_eval]
    split = EventSplit(
        train=ordered.filter(pl.col("event_timestamp") < start),
        evaluation=ordered.filter(pl.col("event_timestamp") >= start),
        evaluation_start=start,
    )
    if split.train.height < settings.min_train_events:
        raise ValueError(
            f"only {split.train.height} labelled event(s) are older than the evaluation window "
            f"(from {start}); expected at least min_train_events={settings.min_train_events}: "
            "annotate more events or lower evaluation_fraction"
        )
    return split


def _check_labels(frame: pl.DataFrame, taxonomy: Taxonomy, what: str) -> list[str]:
    if EVENT_LABEL not in frame.columns:
        raise ValueError(f"the {what} set lacks the label column {EVENT_LABEL!r}")
    if frame.is_empty():
        raise ValueError(f"the {what} set is empty; expected labelled events")
    labels = frame[EVENT_LABEL].cast(pl.String)
    if labels.null_count():
        raise ValueError(f"the {what} set has {labels.null_count()} null label(s)")
    unknown = taxonomy.unknown(labels.unique().to_list())
    if unknown:
        raise TaxonomyError(
            f"the {what} set has labels {unknown[:10]} that are not categories of taxonomy "
            f"{taxonomy.version}; convert them first (majority_labels)"
        )
    return labels.to_list()


@dataclass
class EventClassifier:
    """A trained CatBoost multi-class model, its features in order and its taxonomy version."""

    booster: Any  # catboost.CatBoostClassifier
    features: list[str]
    taxonomy_version: str

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.booster.classes_]

    def matrix(self, frame: pl.DataFrame) -> Any:
        """The pandas frame CatBoost scores: features in order, categoricals and text as
        strings (nulls as ``unknown`` and the empty text)."""
        _require(frame, self.features, "events")
        fills = [
            pl.col(c).cast(pl.String).fill_null("unknown")
            for c in self.features
            if c in CATEGORICAL_EVENT_FEATURES
        ] + [
            pl.col(c).cast(pl.String).fill_null("")
            for c in self.features
            if c in TEXT_EVENT_FEATURES
        ]
        return frame.select(self.features).with_columns(fills).to_pandas()

    def pool(self, frame: pl.DataFrame, labels: Sequence[str] | None = None) -> Any:
        from catboost import Pool

        return Pool(
            self.matrix(frame),
            list(labels) if labels is not None else None,
            cat_features=[f for f in self.features if f in CATEGORICAL_EVENT_FEATURES],
            text_features=[f for f in self.features if f in TEXT_EVENT_FEATURES] or None,
        )

    def predict_proba(self, frame: pl.DataFrame) -> np.ndarray:
        """Class probabilities, one column per :attr:`classes`."""
        if frame.is_empty():
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.booster.predict_proba(self.pool(frame)))

    def predict(self, frame: pl.DataFrame) -> np.ndarray:
        """The most probable category per event."""
        proba = self.predict_proba(frame)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]


def train_event_classifier(
    train: pl.DataFrame,
    settings: EventClassifierSettings,
    taxonomy: Taxonomy,
    features: Sequence[str] = EVENT_FEATURES,
) -> EventClassifier:
    """Fit CatBoost MultiClass on ``train`` (labels in ``taxonomy``); seeded, reproducible."""
    from catboost import CatBoostClassifier

    labels = _check_labels(train, taxonomy, "training")
    if len(set(labels)) < 2:
        raise ValueError(
            f"the training set has a single category ({labels[0]!r}, {len(labels)} events); "
            "expected at least two"
        )
    model = EventClassifier(
        booster=None, features=list(features), taxonomy_version=taxonomy.version
    )
    booster = CatBoostClassifier(
        loss_function="MultiClass",
        iterations=settings.iterations,
        depth=settings.depth,
        learning_rate=settings.learning_rate,
        l2_leaf_reg=settings.l2_leaf_reg,
        one_hot_max_size=settings.one_hot_max_size,
        random_seed=settings.seed,
        thread_count=settings.thread_count,
        text_processing={
            "tokenizers": [
                {"tokenizer_id": "Space", "separator_type": "ByDelimiter", "delimiter": " "}
            ],
            "dictionaries": [
                {
                    "dictionary_id": "Word",
                    "gram_order": "1",
                    "occurrence_lower_bound": str(settings.min_word_count),
                }
            ],
            "feature_processing": {
                "default": [
                    {
                        "dictionaries_names": ["Word"],
                        "feature_calcers": list(settings.text_calcers),
                        "tokenizers_names": ["Space"],
                    }
                ]
            },
        },
        allow_writing_files=False,
        verbose=False,
    )
    booster.fit(model.pool(train, labels))
    model.booster = booster
    return model


# -- evaluation ------------------------------------------------------------------------------


def _encode(y_true: Sequence[str], y_pred: Sequence[str]) -> tuple[np.ndarray, np.ndarray, int]:
    true = np.asarray(y_true, dtype=object)
    pred = np.asarray(y_pred, dtype=object)
    if true.ndim != 1 or true.shape != pred.shape:
        raise ValueError(
            f"labels and predictions must be 1-D of the same length, got {true.shape} and "
            f"{pred.shape}"
        )
    if true.size == 0:
        raise ValueError("the evaluation set is empty; expected labelled events")
    names, codes = np.unique(np.concatenate([true, pred]).astype(str), return_inverse=True)
    return codes[: true.size], codes[true.size :], names.size


def _confusion(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def _macro_f1_codes(true: np.ndarray, pred: np.ndarray, k: int) -> float:
    cm = _confusion(true, pred, k)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros(k), where=present)
    return float(f1[present].mean())


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str]) -> float:
    """Unweighted mean F1 over the classes in the labels or the predictions (as scikit-learn's
    ``f1_score(average="macro")``)."""
    true, pred, k = _encode(y_true, y_pred)
    return _macro_f1_codes(true, pred, k)


def _accuracy_codes(true: np.ndarray, pred: np.ndarray, k: int) -> float:
    return float((true == pred).mean())


_MULTICLASS_METRICS = {"macro_f1": _macro_f1_codes, "accuracy": _accuracy_codes}


@dataclass(frozen=True)
class MulticlassEvaluation:
    """Metrics of one classifier on one evaluation set, with 95% bootstrap intervals."""

    n: int
    taxonomy_version: str
    metrics: dict[str, Estimate]
    #: Category -> precision, recall, f1, support (categories in the labels or predictions).
    per_class: dict[str, dict[str, float]]
    #: Row and column order of :attr:`confusion` (the taxonomy's categories).
    labels: list[str]
    #: ``confusion[i][j]``: events labelled ``labels[i]`` predicted ``labels[j]``.
    confusion: list[list[int]] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for name, est in self.metrics.items():
            out[f"{prefix}{name}"] = est.value
            out[f"{prefix}{name}_low"] = est.low
            out[f"{prefix}{name}_high"] = est.high
        return out


def _resamples(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, (n_boot, n))


def evaluate_multiclass(
    y_true: Sequence[str],
    y_pred: Sequence[str],
    taxonomy: Taxonomy,
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> MulticlassEvaluation:
    """Macro-F1 and accuracy with intervals, per-class scores and the confusion matrix."""
    unknown = taxonomy.unknown([*y_true, *y_pred])
    if unknown:
        raise TaxonomyError(
            f"labels or predictions {unknown[:10]} are not categories of taxonomy "
            f"{taxonomy.version}"
        )
    true, pred, k = _encode(y_true, y_pred)
    estimates = {}
    samples = _resamples(true.size, n_boot, seed)
    for name, fn in _MULTICLASS_METRICS.items():
        boot = np.array([fn(true[i], pred[i], k) for i in samples])
        low, high = np.percentile(boot, [2.5, 97.5])
        estimates[name] = Estimate(fn(true, pred, k), float(low), float(high))
    labels = list(taxonomy.names)
    index = {name: i for i, name in enumerate(labels)}
    cm = _confusion(
        np.array([index[str(v)] for v in y_true]),
        np.array([index[str(v)] for v in y_pred]),
        len(labels),
    )
    per_class = {}
    for i, name in enumerate(labels):
        support, predicted, tp = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        if support + predicted == 0:
            continue
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": 2 * tp / (support + predicted),
            "support": float(support),
        }
    return MulticlassEvaluation(
        n=int(true.size),
        taxonomy_version=taxonomy.version,
        metrics=estimates,
        per_class=per_class,
        labels=labels,
        confusion=cm.tolist(),
    )


def compare_multiclass(
    y_candidate: Sequence[str],
    candidate: Sequence[str],
    y_reference: Sequence[str],
    reference: Sequence[str],
    *,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, Estimate]:
    """``candidate - reference`` per metric on the same events, with paired bootstrap intervals.

    Each model is scored against its own labels (``y_candidate``, ``y_reference``): the same
    labels when both use one taxonomy, and the labels of each model's taxonomy across a taxonomy
    change (then the difference is not like-for-like: the label sets differ).
    """
    if len(y_candidate) != len(y_reference):
        raise ValueError(
            f"the two label vectors must describe the same events, got {len(y_candidate)} and "
            f"{len(y_reference)}"
        )
    ct, cp, ck = _encode(y_candidate, candidate)
    rt, rp, rk = _encode(y_reference, reference)
    samples = _resamples(ct.size, n_boot, seed)
    deltas = {}
    for name, fn in _MULTICLASS_METRICS.items():
        boot = np.array([fn(ct[i], cp[i], ck) - fn(rt[i], rp[i], rk) for i in samples])
        low, high = np.percentile(boot, [2.5, 97.5])
        deltas[name] = Estimate(fn(ct, cp, ck) - fn(rt, rp, rk), float(low), float(high))
    return deltas


def confusion_pairs(evaluation: MulticlassEvaluation) -> pl.DataFrame:
    """The confusion matrix as a long table (``label``, ``predicted``, ``count``; non-zero
    cells): the ``model_confusion`` that :func:`~mlinfra_models.labels.propose_merges` takes."""
    rows = [
        (evaluation.labels[i], evaluation.labels[j], count)
        for i, row in enumerate(evaluation.confusion)
        for j, count in enumerate(row)
        if count
    ]
    return pl.DataFrame(
        rows, schema={"label": pl.String, "predicted": pl.String, "count": pl.Int64}, orient="row"
    )
