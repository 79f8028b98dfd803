"""mlinfra-models: models, shared evaluation and the MLflow registry.

torch and Ray are imported only inside the anomaly detector's functions, so the churn path
never loads them.

Plain Python on Polars frames: no Feast, no Prefect, no Hydra.
"""

from mlinfra_models.anomaly import (
    ANOMALY_FEATURES,
    AnomalyEvaluation,
    AnomalyModel,
    AnomalySettings,
    TrainingStopped,
    evaluate_anomaly,
    latest_checkpoint,
    train_anomaly,
    train_loop_per_worker,
)
from mlinfra_models.anomaly_retraining import (
    ANOMALY_LABEL,
    AnomalyRetrainResult,
    AnomalyWindow,
    load_anomaly_model,
    retrain_anomaly_detector,
    split_window,
)
from mlinfra_models.churn import (
    CHURN_LABEL,
    ChurnModel,
    ChurnSettings,
    TimeSplit,
    churn_labels,
    time_split,
    train_churn,
)
from mlinfra_models.evaluation import (
    RANKING_METRICS,
    BinaryEvaluation,
    Comparison,
    Estimate,
    compare,
    evaluate_binary,
    lift_top_decile,
)
from mlinfra_models.registry import (
    CHALLENGER,
    CHAMPION,
    Contract,
    GateDecision,
    RegistrySettings,
    champion,
    gate,
    mlflow_client,
    semantic_version,
)
from mlinfra_models.report import EvaluationReport, write_report
from mlinfra_models.retraining import (
    FeatureSource,
    GateSettings,
    RetrainResult,
    config_hash,
    retrain_churn,
)

__all__ = [
    "ANOMALY_FEATURES",
    "ANOMALY_LABEL",
    "CHALLENGER",
    "CHAMPION",
    "CHURN_LABEL",
    "RANKING_METRICS",
    "AnomalyEvaluation",
    "AnomalyModel",
    "AnomalyRetrainResult",
    "AnomalySettings",
    "AnomalyWindow",
    "BinaryEvaluation",
    "ChurnModel",
    "ChurnSettings",
    "Comparison",
    "Contract",
    "Estimate",
    "EvaluationReport",
    "FeatureSource",
    "GateDecision",
    "GateSettings",
    "RegistrySettings",
    "RetrainResult",
    "TimeSplit",
    "TrainingStopped",
    "champion",
    "churn_labels",
    "compare",
    "config_hash",
    "evaluate_anomaly",
    "evaluate_binary",
    "gate",
    "latest_checkpoint",
    "lift_top_decile",
    "load_anomaly_model",
    "mlflow_client",
    "retrain_anomaly_detector",
    "retrain_churn",
    "semantic_version",
    "split_window",
    "time_split",
    "train_anomaly",
    "train_churn",
    "train_loop_per_worker",
    "write_report",
]
