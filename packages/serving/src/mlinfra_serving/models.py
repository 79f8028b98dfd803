"""The served models: how each model's champion is loaded and scores rows of online features.

:data:`MODEL_SPECS` is the extension point. A model is served once it has a spec here (a
loader from a registered version to a :class:`Scorer`) and a route in
:mod:`mlinfra_serving.app`; ``event_classifier`` gets both when its registered model exists
(it scores events, not customers, so it needs its own request and response shapes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from mlinfra_serving.online import OnlineRows

__all__ = ["MODEL_SPECS", "AnomalyScorer", "ChurnScorer", "ModelSpec", "Scorer"]


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
    """

    booster: Any
    features: list[str]

    def __post_init__(self) -> None:
        self._categorical = [f in _CATEGORICAL for f in self.features]
        self._cat_indices = [n for n, c in enumerate(self._categorical) if c]

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
        import polars as pl

        frame = pl.DataFrame(
            {f: [rows.columns[f][i] for i in index] for f in self.features},
            schema={f: pl.Float64 for f in self.features},
        )
        return np.asarray(self.model.score(frame), dtype=np.float64)


def _load_churn(source: str, features: list[str]) -> ChurnScorer:
    import mlflow.catboost

    return ChurnScorer(booster=mlflow.catboost.load_model(source), features=features)


def _load_anomaly(source: str, features: list[str]) -> AnomalyScorer:
    from mlinfra_models import load_anomaly_model

    model = load_anomaly_model(source)
    return AnomalyScorer(model=model, features=list(model.features))


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
    )
}
