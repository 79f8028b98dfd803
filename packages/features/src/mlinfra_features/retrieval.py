"""Reading features back: point-in-time training sets and online values, as Polars frames."""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from mlinfra_features.repo import ENTITIES, FEATURE_SERVICES, VIEWS, service_views
from mlinfra_features.store import FeatureStoreSettings, feature_store

__all__ = ["online_features", "service_entity_key", "training_set"]

_ROW = "__mlinfra_row"


def service_entity_key(service: str) -> str:
    """The join key of the (single) entity a feature service is keyed by."""
    keys = {ENTITIES[VIEWS[v].entity][0] for v in service_views(service)}
    if len(keys) != 1:
        raise ValueError(f"feature service {service!r} spans several entities {sorted(keys)}")
    return keys.pop()


def training_set(
    settings: FeatureStoreSettings, feature_service: str, entity_df: pl.DataFrame
) -> pl.DataFrame:
    """Feast's point-in-time join: each row gets the newest feature values at or before its
    ``event_timestamp``. Extra columns (labels, ...) are carried through; row order is kept.
    """
    key = service_entity_key(feature_service)
    expected = [key, "event_timestamp"]
    missing = [c for c in expected if c not in entity_df.columns]
    if missing:
        raise ValueError(
            f"entity_df lacks column(s) {missing}; expected {expected} plus any extra columns"
        )
    dtype = entity_df.schema["event_timestamp"]
    if not isinstance(dtype, pl.Datetime) or dtype.time_zone is None:
        raise ValueError(
            f"entity_df column 'event_timestamp' has type {dtype}; expected a timezone-aware "
            "Datetime (UTC)"
        )
    if entity_df.is_empty():
        raise ValueError("entity_df is empty; expected at least one row")
    store = feature_store(settings)
    service = store.get_feature_service(feature_service)
    frame = entity_df.with_row_index(_ROW).with_columns(
        pl.col("event_timestamp").dt.convert_time_zone("UTC")
    )
    result = store.get_historical_features(entity_df=frame.to_pandas(), features=service).to_df()
    out = (
        pl.from_pandas(result)
        .sort(_ROW)
        .drop(_ROW)
        .with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    )
    features = [f for feats in FEATURE_SERVICES[feature_service].values() for f in feats]
    return out.select(*entity_df.columns, *[f for f in features if f not in entity_df.columns])


def online_features(
    settings: FeatureStoreSettings, feature_service: str, entity_ids: Sequence[int]
) -> pl.DataFrame:
    """The online store's current values of a feature service for ``entity_ids`` (nulls for
    entities it does not hold), one row per id in the given order."""
    key = service_entity_key(feature_service)
    if len(entity_ids) == 0:
        raise ValueError("entity_ids is empty; expected at least one id")
    store = feature_store(settings)
    service = store.get_feature_service(feature_service)
    values = store.get_online_features(
        features=service, entity_rows=[{key: int(i)} for i in entity_ids]
    ).to_dict()
    features = [f for feats in FEATURE_SERVICES[feature_service].values() for f in feats]
    return pl.DataFrame({key: [int(i) for i in entity_ids], **{f: values[f] for f in features}})
