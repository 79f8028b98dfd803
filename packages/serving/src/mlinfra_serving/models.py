"""The served models: how each model's champion is loaded and scores its inputs.

:data:`MODEL_SPECS` is the extension point. A model is served once it has a spec here (a
loader from a registered version to a :class:`Scorer`) and a route in
:mod:`mlinfra_serving.app`. Churn and the anomaly detector score rows of online features; the
event classifier classifies the events a request carries (their name, module, text and
numbers), so it reads nothing from the online store.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import polars as pl

from mlinfra_serving.online import OnlineRows
from mlinfra_serving.trees import CompiledTrees, compile_trees

__all__ = [
    "EVENT_FIELDS",
    "MODEL_SPECS",
    "AnomalyScorer",
    "ChurnScorer",
    "EventScorer",
    "ModelSpec",
    "Scorer",
]


class Scorer(Protocol):
    features: list[str]

    def score(self, rows: OnlineRows, index: Sequence[int]) -> np.ndarray:
        """Scores of the rows ``index`` of ``rows``."""
        ...


_CATEGORICAL = frozenset({"plan", "region"})


@dataclass
class ChurnScorer:
    """A CatBoost churn champion scoring a prebuilt row list (no pandas on the request path).

    Categoricals are strings (null -> ``"unknown"``) and numbers floats (null -> NaN), exactly
    as :meth:`mlinfra_models.ChurnModel.matrix` prepares them for training and evaluation.
    The trees are evaluated by :class:`~mlinfra_serving.trees.CompiledTrees` when the model
    allows it (``compiled`` says why not otherwise), by CatBoost's ``predict_proba`` otherwise.
    """

    booster: Any
    features: list[str]
    compile: bool = True

    def __post_init__(self) -> None:
        self._categorical = [f in _CATEGORICAL for f in self.features]
        self._cat_indices = [n for n, c in enumerate(self._categorical) if c]
        self.trees: CompiledTrees | None = None
        self.compiled = "not compiled (compile=False)"
        if self.compile:
            try:
                self.trees, self.compiled = compile_trees(self.booster, self.features)
            except Exception as exc:  # never a reason not to serve: CatBoost's path remains
                self.compiled = f"compiling failed ({type(exc).__name__}: {exc})"
            if self.trees is not None and self.trees.cat_columns != self._cat_indices:
                self.trees, self.compiled = None, "the model's categorical features differ"

    def matrix(self, rows: OnlineRows, index: Sequence[int]) -> list[list[Any]]:
        columns = [rows.columns[f] for f in self.features]
        out = []
        for i in index:
            row: list[Any] = []
            for column, categorical in zip(columns, self._categorical, strict=True):
                value = column[i]
                if categorical:
                    row.append("unknown" if value is None else str(value))
                else:
                    row.append(math.nan if value is None else float(value))
            out.append(row)
        return out

    def score(self, rows: OnlineRows, index: Sequence[int]) -> np.ndarray:
        if not index:
            return np.empty(0)
        trees = self.trees
        if trees is not None:
            columns = [rows.columns[self.features[c]] for c in trees.float_columns]
            if len(index) == 1:
                i = index[0]
                row = [math.nan if (v := c[i]) is None else float(v) for c in columns]
                cat = tuple(
                    "unknown" if (v := rows.columns[self.features[c]][i]) is None else str(v)
                    for c in trees.cat_columns
                )
                return np.array([trees.probability(row, cat)])
            floats = np.array(
                [[math.nan if (v := c[i]) is None else float(v) for c in columns] for i in index],
                dtype=np.float32,
            ).reshape(len(index), len(columns))
            cats = [
                tuple(
                    "unknown" if (v := rows.columns[self.features[c]][i]) is None else str(v)
                    for c in trees.cat_columns
                )
                for i in index
            ]
            return trees.probabilities(floats, cats)
        from catboost import Pool

        # An explicit Pool costs less than letting predict_proba infer one from a list.
        pool = Pool(self.matrix(rows, index), cat_features=self._cat_indices)
        return np.asarray(self.booster.predict_proba(pool, thread_count=1)[:, 1])


@dataclass
class AnomalyScorer:
    """The anomaly-detector champion (an autoencoder): reconstruction error and threshold."""

    model: Any  # mlinfra_models.AnomalyModel
    features: list[str]

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def score(self, rows: OnlineRows, index: Sequence[int]) -> np.ndarray:
        if not index:
            return np.empty(0)
        frame = pl.DataFrame(
            {f: [rows.columns[f][i] for i in index] for f in self.features},
            schema={f: pl.Float64 for f in self.features},
        )
        return np.asarray(self.model.score(frame), dtype=np.float64)


#: The event fields a classification request carries, with their types (those of the
#: ``product_event_features`` view the classifier trains on).
EVENT_FIELDS: dict[str, type[pl.DataType]] = {
    "event_name": pl.String,
    "module": pl.String,
    "event_text": pl.String,
    "duration_s": pl.Float64,
    "items_count": pl.Int64,
    "value_usd": pl.Float64,
}


@dataclass
class EventScorer:
    """The event-classifier champion: class probabilities of events, through
    :meth:`mlinfra_models.EventClassifier.predict_proba` (the preparation it was evaluated
    with: categoricals and text as strings, nulls as ``unknown`` and the empty text)."""

    model: Any  # mlinfra_models.EventClassifier
    features: list[str]

    @property
    def classes(self) -> list[str]:
        return list(self.model.classes)

    def probabilities(self, events: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """``(len(events), len(classes))`` probabilities of events given as field mappings."""
        frame = pl.DataFrame(
            {f: [e.get(f) for e in events] for f in self.features},
            schema={f: EVENT_FIELDS[f] for f in self.features},
        )
        return np.asarray(self.model.predict_proba(frame), dtype=np.float64)

    def score(self, rows: OnlineRows, index: Sequence[int]) -> np.ndarray:
        """Class probabilities of events read from the online store (``event_classifier_v1``)."""
        return self.probabilities([{f: rows.columns[f][i] for f in self.features} for i in index])


def _load_churn(source: str, features: list[str]) -> ChurnScorer:
    import mlflow.catboost

    return ChurnScorer(booster=mlflow.catboost.load_model(source), features=features)


def _load_anomaly(source: str, features: list[str]) -> AnomalyScorer:
    from mlinfra_models import load_anomaly_model

    model = load_anomaly_model(source)
    return AnomalyScorer(model=model, features=list(model.features))


def _load_events(source: str, features: list[str]) -> EventScorer:
    unknown = [f for f in features if f not in EVENT_FIELDS]
    if unknown:
        raise ValueError(
            f"{source} needs feature(s) {unknown} that a classification request does not "
            f"carry; the service classifies events by {list(EVENT_FIELDS)}"
        )
    import mlflow.catboost

    from mlinfra_models import EventClassifier

    booster = mlflow.catboost.load_model(source)
    model = EventClassifier(booster=booster, features=list(features), taxonomy_version="")
    return EventScorer(model=model, features=list(features))


@dataclass(frozen=True)
class ModelSpec:
    """A served model: its registry name and how a registered version becomes a scorer."""

    name: str
    #: ``(models:/<name>/<version>, contract features) -> scorer``
    load: Callable[[str, list[str]], Scorer]
    #: Used when a version carries no ``feature_service`` tag.
    default_feature_service: str


MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("churn", _load_churn, "churn_v2"),
        ModelSpec("anomaly_detector", _load_anomaly, "anomaly_detector_v1"),
        ModelSpec("event_classifier", _load_events, "event_classifier_v1"),
    )
}
