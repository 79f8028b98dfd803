"""The Feast feature repository: entities, feature views and feature services, declared once.

Each feature view reads one Parquet feature table (see :mod:`mlinfra_features.pipelines`) from
the offline store directory. Feature services name the features a model consumes:

=======================  ==============================================================
``churn_v1``             baseline: plan, seats, monthly_spend, logins_30d,
                         days_since_last_login
``churn_v2``             baseline + account_age_days, support_tickets_30d, login_trend_8w
``anomaly_detector_v1``  activity metrics per customer-day and their robust z-scores
``event_classifier_v1``  event name, module, text and numeric attributes
=======================  ==============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64, PrimitiveFeastType, String

from mlinfra_features.pipelines import ACTIVITY_METRICS

__all__ = [
    "ENTITIES",
    "FEATURE_SERVICES",
    "VIEWS",
    "ViewSpec",
    "feast_objects",
    "service_views",
]


@dataclass(frozen=True)
class ViewSpec:
    """One feature view: its entity, typed features, TTL and refresh cadence."""

    name: str
    entity: str
    features: dict[str, PrimitiveFeastType]
    ttl: timedelta
    cadence: timedelta
    description: str

    def table_path(self, offline_dir: Path) -> Path:
        return Path(offline_dir) / f"{self.name}.parquet"


ENTITIES: dict[str, tuple[str, ValueType]] = {
    "customer": ("customer_id", ValueType.INT64),
    "event": ("event_id", ValueType.INT64),
}

_DAILY = timedelta(days=1)

VIEWS: dict[str, ViewSpec] = {
    spec.name: spec
    for spec in [
        ViewSpec(
            name="customer_profile",
            entity="customer",
            features={
                "plan": String,
                "seats": Int64,
                "monthly_spend": Float64,
                "account_age_days": Int64,
            },
            ttl=timedelta(days=35),
            cadence=_DAILY,
            description="Plan, seats, spend and account age per customer snapshot.",
        ),
        ViewSpec(
            name="customer_logins",
            entity="customer",
            features={
                "logins_30d": Int64,
                "days_since_last_login": Float64,
                "login_trend_8w": Float64,
            },
            ttl=timedelta(days=35),
            cadence=_DAILY,
            description="Login frequency, recency and 8-week trend per customer snapshot.",
        ),
        ViewSpec(
            name="customer_support",
            entity="customer",
            features={"support_tickets_30d": Int64, "support_tickets_90d": Int64},
            ttl=timedelta(days=35),
            cadence=_DAILY,
            description="Support tickets opened in the last 30 and 90 days.",
        ),
        ViewSpec(
            name="account_activity_daily",
            entity="customer",
            features={
                **{m: Float64 for m in ACTIVITY_METRICS},
                **{f"{m}_z": Float64 for m in ACTIVITY_METRICS},
            },
            ttl=timedelta(days=3),
            cadence=_DAILY,
            description="Daily activity metrics and robust z-scores vs the trailing 28 days.",
        ),
        ViewSpec(
            name="product_event_features",
            entity="event",
            features={
                "event_name": String,
                "module": String,
                "event_text": String,
                "duration_s": Float64,
                "items_count": Int64,
                "value_usd": Float64,
            },
            ttl=timedelta(days=400),
            cadence=_DAILY,
            description="Product event name, module, text and numeric attributes.",
        ),
    ]
}

_CHURN_V1 = {
    "customer_profile": ["plan", "seats", "monthly_spend"],
    "customer_logins": ["logins_30d", "days_since_last_login"],
}

#: Feature service name -> {view name -> features}.
FEATURE_SERVICES: dict[str, dict[str, list[str]]] = {
    "churn_v1": _CHURN_V1,
    "churn_v2": {
        "customer_profile": [*_CHURN_V1["customer_profile"], "account_age_days"],
        "customer_logins": [*_CHURN_V1["customer_logins"], "login_trend_8w"],
        "customer_support": ["support_tickets_30d"],
    },
    "anomaly_detector_v1": {
        "account_activity_daily": list(VIEWS["account_activity_daily"].features),
    },
    "event_classifier_v1": {
        "product_event_features": list(VIEWS["product_event_features"].features),
    },
}


def service_views(service: str) -> list[str]:
    """The feature views a feature service reads, or a clear error if it does not exist."""
    if service not in FEATURE_SERVICES:
        raise LookupError(
            f"unknown feature service {service!r}; expected one of {sorted(FEATURE_SERVICES)}"
        )
    return list(FEATURE_SERVICES[service])


def service_features(service: str) -> list[str]:
    """The feature names of a service, in declaration order."""
    service_views(service)
    return [f for feats in FEATURE_SERVICES[service].values() for f in feats]


def feast_objects(offline_dir: Path) -> Sequence[Entity | FeatureView | FeatureService]:
    """The Feast objects of the repository, with sources under ``offline_dir``."""
    entities = {
        name: Entity(name=name, join_keys=[key], value_type=vtype)
        for name, (key, vtype) in ENTITIES.items()
    }
    views: dict[str, FeatureView] = {}
    for spec in VIEWS.values():
        source = FileSource(
            name=f"{spec.name}_source",
            path=str(spec.table_path(offline_dir).resolve()),
            timestamp_field="event_timestamp",
        )
        views[spec.name] = FeatureView(
            name=spec.name,
            entities=[entities[spec.entity]],
            ttl=spec.ttl,
            schema=[Field(name=f, dtype=t) for f, t in spec.features.items()],
            source=source,
            online=True,
            description=spec.description,
            tags={"cadence_seconds": str(int(spec.cadence.total_seconds()))},
        )
    services = [
        FeatureService(
            name=name,
            features=[views[view][feats] for view, feats in selection.items()],
        )
        for name, selection in FEATURE_SERVICES.items()
    ]
    return [*entities.values(), *views.values(), *services]
