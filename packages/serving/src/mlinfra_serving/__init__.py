"""mlinfra-serving: the scoring service (FastAPI) over the online feature store and the
registry's champions, with hot reload, a prediction log and Prometheus metrics.

Nothing starts at import: :func:`create_app` builds the app, its lifespan loads the champions
and starts the background threads, and ``mlinfra-serve`` runs it under uvicorn.

The public names are imported on first use (PEP 562), not with the package: a Ray worker that
unpickles the batch predictor (:mod:`mlinfra_serving._predictor`: NumPy, Arrow and CatBoost
only) must not pay for FastAPI, Feast and MLflow, which the service modules import.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlinfra_serving.app import create_app
    from mlinfra_serving.champions import Champion, Champions
    from mlinfra_serving.models import (
        EVENT_FIELDS,
        MODEL_SPECS,
        AnomalyScorer,
        ChurnScorer,
        EventScorer,
        ModelSpec,
    )
    from mlinfra_serving.online import OnlineFeatureReader, OnlineRows, OnlineStoreError
    from mlinfra_serving.predictions import Prediction, PredictionLog, read_prediction_log
    from mlinfra_serving.settings import (
        MISSING_ENTITY_POLICIES,
        PredictionLogSettings,
        ServingSettings,
    )

#: Where each public name lives.
_MODULES = {
    "create_app": "app",
    "Champion": "champions",
    "Champions": "champions",
    "EVENT_FIELDS": "models",
    "MODEL_SPECS": "models",
    "AnomalyScorer": "models",
    "ChurnScorer": "models",
    "EventScorer": "models",
    "ModelSpec": "models",
    "OnlineFeatureReader": "online",
    "OnlineRows": "online",
    "OnlineStoreError": "online",
    "Prediction": "predictions",
    "PredictionLog": "predictions",
    "read_prediction_log": "predictions",
    "MISSING_ENTITY_POLICIES": "settings",
    "PredictionLogSettings": "settings",
    "ServingSettings": "settings",
}

__all__ = [
    "EVENT_FIELDS",
    "MISSING_ENTITY_POLICIES",
    "MODEL_SPECS",
    "AnomalyScorer",
    "Champion",
    "Champions",
    "ChurnScorer",
    "EventScorer",
    "ModelSpec",
    "OnlineFeatureReader",
    "OnlineRows",
    "OnlineStoreError",
    "Prediction",
    "PredictionLog",
    "PredictionLogSettings",
    "ServingSettings",
    "create_app",
    "read_prediction_log",
]


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
