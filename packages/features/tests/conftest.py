from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from mlinfra_features import (
    DemoWarehouseSettings,
    FeatureStoreSettings,
    Warehouse,
    apply_repo,
    feature_tables,
    generate_demo_warehouse,
    materialize_incremental,
    write_feature_tables,
)

AS_OF = datetime(2026, 11, 29, 6, 0, tzinfo=UTC)


@pytest.fixture(scope="session")
def as_of() -> datetime:
    """The end of the demo timeline used by the session's warehouse."""
    return AS_OF


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Warehouse:
    """A small demo warehouse, shared read-only by the whole session."""
    root = tmp_path_factory.mktemp("warehouse")
    return generate_demo_warehouse(DemoWarehouseSettings(n_customers=1500, as_of=AS_OF), root)


@pytest.fixture(scope="session")
def tables(warehouse: Warehouse) -> dict[str, pl.DataFrame]:
    return feature_tables(warehouse)


def build_store(home: Path, tables: dict[str, pl.DataFrame], end: datetime) -> FeatureStoreSettings:
    settings = FeatureStoreSettings(home=home)
    write_feature_tables(settings, tables)
    apply_repo(settings)
    materialize_incremental(settings, end=end)
    return settings


@pytest.fixture
def store(tmp_path: Path, tables: dict[str, pl.DataFrame]) -> FeatureStoreSettings:
    """A fresh platform home with the offline store written and every view materialized."""
    return build_store(tmp_path / "home", tables, AS_OF + timedelta(seconds=1))
