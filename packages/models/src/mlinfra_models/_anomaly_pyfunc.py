"""The anomaly detector as an MLflow pyfunc model: the registry stores it, serving loads it.

Imported only when a model is logged or loaded, because it imports MLflow.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
import polars as pl
from mlflow.pyfunc import PythonModel

from mlinfra_models.anomaly import AnomalyModel

#: Name of the pyfunc artifact holding the finished checkpoint directory.
CHECKPOINT_ARTIFACT = "checkpoint"


class AnomalyDetectorPyfunc(PythonModel):
    """Scores rows of ``anomaly_detector_v1`` features: ``anomaly_score`` and ``is_anomaly``."""

    model: AnomalyModel

    def load_context(self, context: Any) -> None:
        self.model = AnomalyModel.from_checkpoint(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context: Any, model_input: Any, params: Any = None) -> pd.DataFrame:
        frame = (
            model_input if isinstance(model_input, pl.DataFrame) else pl.from_pandas(model_input)
        )
        scores = self.model.score(frame)
        return pd.DataFrame({"anomaly_score": scores, "is_anomaly": scores > self.model.threshold})


def load_anomaly_model(model_uri: str) -> AnomalyModel:
    """The :class:`AnomalyModel` behind a registered ``anomaly_detector`` version."""
    wrapper = mlflow.pyfunc.load_model(model_uri).unwrap_python_model()
    if not isinstance(wrapper, AnomalyDetectorPyfunc):
        raise ValueError(
            f"{model_uri} is a {type(wrapper).__name__}; expected an anomaly detector model"
        )
    return wrapper.model
