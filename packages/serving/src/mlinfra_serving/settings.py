"""Typed settings of the scoring service: where the platform home, the online store and the
registry are, which models it serves, and how it reloads, validates and logs.

Plain dataclasses (no Hydra here): the CLI builds them from flags, ``configs/serving.yaml``
instantiates them for the flows, and :meth:`ServingSettings.to_json` /
:meth:`ServingSettings.from_json` carry them to uvicorn's worker processes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlinfra_features import FeatureStoreSettings, default_home
from mlinfra_models import RegistrySettings

__all__ = ["MISSING_ENTITY_POLICIES", "PredictionLogSettings", "ServingSettings"]

#: ``not_found``: an entity the online store lacks (in any of the service's views) is answered
#: ``status: not_found`` with the views it lacks, and is not scored.
#: ``score_with_nulls``: churn scores it with the missing features as nulls (CatBoost treats
#: them as missing values) and reports the views it lacks; the anomaly detector cannot score
#: nulls and always answers ``not_found``.
MISSING_ENTITY_POLICIES = ("not_found", "score_with_nulls")


@dataclass(frozen=True)
class PredictionLogSettings:
    """The prediction log: batched Parquet partitions ``<home>/predictions/<model>/date=.../``."""

    enabled: bool = True
    #: A batch is written when it holds this many predictions ...
    batch_size: int = 5000
    #: ... or when its oldest prediction has waited this long.
    flush_interval_s: float = 1.0
    #: Predictions waiting to be written, at most; beyond it they are dropped and counted
    #: (``mlinfra_serving_predictions_dropped_total``) rather than slowing requests down.
    max_queue: int = 1_000_000

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"prediction_log.batch_size must be >= 1, got {self.batch_size}")
        if self.flush_interval_s <= 0:
            raise ValueError(
                f"prediction_log.flush_interval_s must be positive, got {self.flush_interval_s}"
            )
        if self.max_queue < 1:
            raise ValueError(f"prediction_log.max_queue must be >= 1, got {self.max_queue}")


@dataclass(frozen=True)
class ServingSettings:
    """Everything the scoring service needs; every path defaults to the platform home."""

    home: Path = field(default_factory=default_home)
    store: FeatureStoreSettings | None = None
    registry: RegistrySettings | None = None
    #: Models the service serves (``/v1/<model>/score``, ``/v1/event_classifier/classify``);
    #: readiness needs them all.
    models: tuple[str, ...] = ("churn", "anomaly_detector", "event_classifier")
    #: How often the ``champion`` alias of every model is polled (seconds).
    reload_interval_s: float = 30.0
    #: Most customer ids (or events) one request may carry.
    max_ids_per_request: int = 1000
    missing_entity: str = "not_found"
    prediction_log: PredictionLogSettings = field(default_factory=PredictionLogSettings)
    #: An empty folder shared by the service's worker processes (``mlinfra-serve --workers N``
    #: makes one): each worker keeps its metrics there and ``/metrics`` sums every worker's.
    #: ``None``: the metrics are this process's own (one worker).
    metrics_dir: Path | None = None

    def __post_init__(self) -> None:
        home = Path(self.home).absolute()
        object.__setattr__(self, "home", home)
        if self.metrics_dir is not None:
            object.__setattr__(self, "metrics_dir", Path(self.metrics_dir).absolute())
        if self.store is None:
            object.__setattr__(self, "store", FeatureStoreSettings(home=home))
        if self.registry is None:
            object.__setattr__(self, "registry", RegistrySettings(home=home))
        object.__setattr__(self, "models", tuple(self.models))
        if isinstance(self.prediction_log, dict):
            object.__setattr__(self, "prediction_log", PredictionLogSettings(**self.prediction_log))
        from mlinfra_serving.models import MODEL_SPECS

        unknown = [m for m in self.models if m not in MODEL_SPECS]
        if unknown or not self.models:
            raise ValueError(
                f"models {list(self.models)} must be a non-empty subset of {sorted(MODEL_SPECS)}"
            )
        if self.reload_interval_s <= 0:
            raise ValueError(f"reload_interval_s must be positive, got {self.reload_interval_s}")
        if self.max_ids_per_request < 1:
            raise ValueError(f"max_ids_per_request must be >= 1, got {self.max_ids_per_request}")
        if self.missing_entity not in MISSING_ENTITY_POLICIES:
            raise ValueError(
                f"missing_entity must be one of {MISSING_ENTITY_POLICIES}, got "
                f"{self.missing_entity!r}"
            )

    @property
    def feature_store(self) -> FeatureStoreSettings:
        assert self.store is not None
        return self.store

    @property
    def registry_settings(self) -> RegistrySettings:
        assert self.registry is not None
        return self.registry

    @property
    def predictions_dir(self) -> Path:
        return self.home / "predictions"

    def to_json(self) -> str:
        return json.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, text: str) -> ServingSettings:
        data: dict[str, Any] = json.loads(text)
        store = FeatureStoreSettings(**data.pop("store"))
        registry = RegistrySettings(**data.pop("registry"))
        log = PredictionLogSettings(**data.pop("prediction_log"))
        return cls(
            **{**data, "models": tuple(data["models"])},
            store=store,
            registry=registry,
            prediction_log=log,
        )
