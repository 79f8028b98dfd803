"""mlinfra-features: demo warehouse, Polars feature pipelines, Feast repository, materialization
with a run ledger, freshness, and point-in-time training sets."""

from mlinfra_features.freshness import ViewFreshness, freshness
from mlinfra_features.ledger import Ledger, LedgerRun
from mlinfra_features.materialization import (
    MaterializationError,
    MaterializationRun,
    materialize,
    materialize_incremental,
)
from mlinfra_features.pipelines import feature_tables
from mlinfra_features.repo import FEATURE_SERVICES, VIEWS, service_features, service_views
from mlinfra_features.retrieval import online_features, service_entity_key, training_set
from mlinfra_features.sources import (
    SCHEMAS,
    DemoWarehouseSettings,
    SourceError,
    Warehouse,
    generate_demo_warehouse,
)
from mlinfra_features.store import (
    FeatureStoreSettings,
    apply_repo,
    default_home,
    feature_store,
    write_feature_store_yaml,
    write_feature_tables,
)

__all__ = [
    "FEATURE_SERVICES",
    "SCHEMAS",
    "VIEWS",
    "DemoWarehouseSettings",
    "FeatureStoreSettings",
    "Ledger",
    "LedgerRun",
    "MaterializationError",
    "MaterializationRun",
    "SourceError",
    "ViewFreshness",
    "Warehouse",
    "apply_repo",
    "default_home",
    "feature_store",
    "feature_tables",
    "freshness",
    "generate_demo_warehouse",
    "materialize",
    "materialize_incremental",
    "online_features",
    "service_entity_key",
    "service_features",
    "service_views",
    "training_set",
    "write_feature_store_yaml",
    "write_feature_tables",
]
