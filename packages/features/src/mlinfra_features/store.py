"""The Feast store built from typed settings: file offline store, SQLite or Redis online store.

Everything lives under the platform home (``MLINFRA_HOME``, default ``.mlinfra``)::

    <home>/feast/feature_store.yaml   for the Feast CLI (``feast -c <home>/feast ...``)
    <home>/feast/registry.db          Feast registry
    <home>/feast/online.db            SQLite online store (default)
    <home>/feast/offline/*.parquet    feature tables (offline store)
    <home>/feast/ledger.sqlite        materialization run ledger

The same settings select Redis (``online_store="redis"``) or the DuckDB offline engine over the
same Parquet files (``offline_store="duckdb"``) without code changes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml
from feast import FeatureStore
from feast.repo_config import RepoConfig

from mlinfra_features.repo import ENTITIES, VIEWS, feast_objects
from mlinfra_features.sources import write_parquet_atomic

__all__ = [
    "FeatureStoreSettings",
    "apply_repo",
    "default_home",
    "feature_store",
    "write_feature_store_yaml",
    "write_feature_tables",
]

_ONLINE_STORES = ("sqlite", "redis")
_OFFLINE_STORES = ("file", "duckdb")


def default_home() -> Path:
    """The platform home: ``$MLINFRA_HOME`` or ``.mlinfra`` in the working directory."""
    return Path(os.environ.get("MLINFRA_HOME", ".mlinfra"))


@dataclass(frozen=True)
class FeatureStoreSettings:
    """Where the feature store lives and which backends it uses."""

    home: Path = field(default_factory=default_home)
    project: str = "mlinfra"
    online_store: str = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    offline_store: str = "file"
    sla_factor: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).absolute())
        if self.online_store not in _ONLINE_STORES:
            raise ValueError(
                f"online_store must be one of {_ONLINE_STORES}, got {self.online_store!r}"
            )
        if self.offline_store not in _OFFLINE_STORES:
            raise ValueError(
                f"offline_store must be one of {_OFFLINE_STORES}, got {self.offline_store!r}"
            )
        if self.sla_factor <= 0:
            raise ValueError(f"sla_factor must be positive, got {self.sla_factor}")

    @property
    def feast_dir(self) -> Path:
        return self.home / "feast"

    @property
    def offline_dir(self) -> Path:
        return self.feast_dir / "offline"

    @property
    def ledger_path(self) -> Path:
        return self.feast_dir / "ledger.sqlite"

    def repo_config(self) -> dict[str, Any]:
        """The ``feature_store.yaml`` content for these settings."""
        online: dict[str, Any]
        if self.online_store == "redis":
            online = {"type": "redis", "connection_string": self.redis_connection_string}
        else:
            online = {"type": "sqlite", "path": str(self.feast_dir / "online.db")}
        return {
            "project": self.project,
            "provider": "local",
            "registry": {
                "registry_type": "file",
                "path": str(self.feast_dir / "registry.db"),
                "cache_ttl_seconds": 0,
            },
            "online_store": online,
            "offline_store": {"type": self.offline_store},
            "entity_key_serialization_version": 3,
        }


def feature_store(settings: FeatureStoreSettings) -> FeatureStore:
    """A Feast ``FeatureStore`` for the settings (nothing is created on disk but its folder)."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    config = RepoConfig(repo_path=settings.feast_dir, **settings.repo_config())
    return FeatureStore(repo_path=str(settings.feast_dir), config=config)


def write_feature_store_yaml(settings: FeatureStoreSettings) -> Path:
    """Write ``feature_store.yaml`` so that the Feast CLI works in ``<home>/feast``."""
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    path = settings.feast_dir / "feature_store.yaml"
    fd, tmp = tempfile.mkstemp(prefix=".feature_store.", suffix=".yaml", dir=settings.feast_dir)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(settings.repo_config(), fh, sort_keys=False)
    Path(tmp).replace(path)
    return path


def apply_repo(settings: FeatureStoreSettings) -> FeatureStore:
    """Register the repository's entities, views and services (``feast apply``)."""
    store = feature_store(settings)
    store.apply(list(feast_objects(settings.offline_dir)))
    write_feature_store_yaml(settings)
    return store


def write_feature_tables(
    settings: FeatureStoreSettings, tables: dict[str, pl.DataFrame]
) -> dict[str, Path]:
    """Validate and write feature tables into the offline store, each atomically."""
    unknown = sorted(set(tables) - set(VIEWS))
    if unknown:
        raise LookupError(f"unknown feature view(s) {unknown}; expected some of {sorted(VIEWS)}")
    for name, frame in tables.items():
        spec = VIEWS[name]
        expected = [ENTITIES[spec.entity][0], "event_timestamp", *spec.features]
        missing = [c for c in expected if c not in frame.columns]
        if missing:
            raise ValueError(
                f"feature table {name!r} lacks column(s) {missing}; expected columns {expected}"
            )
        if frame.is_empty():
            raise ValueError(f"feature table {name!r} is empty; expected rows")
    paths = {}
    for name, frame in tables.items():
        path = VIEWS[name].table_path(settings.offline_dir)
        write_parquet_atomic(frame, path)
        paths[name] = path
    return paths
