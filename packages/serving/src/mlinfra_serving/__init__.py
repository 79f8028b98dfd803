"""mlinfra-serving: the scoring service (FastAPI) over the online feature store and the
registry's champions, with hot reload, a prediction log and Prometheus metrics.

Nothing starts at import: :func:`create_app` builds the app, its lifespan loads the champions
and starts the background threads, and ``mlinfra-serve`` runs it under uvicorn.
"""

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
from mlinfra_serving.settings import MISSING_ENTITY_POLICIES, PredictionLogSettings, ServingSettings

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
