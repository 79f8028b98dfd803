"""A platform home with real champions, a real Redis (when its binary exists) and a real
uvicorn server on 127.0.0.1, shared by the serving tests.

The home is built with library calls only (the flows are not importable from here in the
per-member isolated run): a 1,500-customer demo warehouse, its feature tables in Feast's offline
store, the repository applied and every view materialized to SQLite, a small churn model
trained on a ``churn_v2`` training set and registered as ``churn@champion``, and a small event
classifier (taxonomy v1, 300 annotated events) registered as ``event_classifier@champion``.
"""

from __future__ import annotations

import importlib.resources
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
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
    online_features,
    training_set,
    write_feature_tables,
)
from mlinfra_models import (
    ChurnSettings,
    EventClassifierSettings,
    RegistrySettings,
    churn_labels,
    retrain_churn,
    retrain_event_classifier,
)
from mlinfra_models.labels import load_taxonomy
from mlinfra_serving import ServingSettings, create_app

AS_OF = datetime(2026, 11, 29, tzinfo=UTC)
#: Set by .ci/run to the redis-server it started (host:port); otherwise the tests start one.
REDIS_ENV = "MLINFRA_TEST_REDIS"


@dataclass(frozen=True)
class DemoHome:
    home: Path
    store: FeatureStoreSettings
    registry: RegistrySettings
    warehouse: Warehouse
    #: customers whose churn_v2 features are all in the online store (Feast's own read)
    customers: list[int]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> DemoHome:
    home = tmp_path_factory.mktemp("serving-home")
    warehouse = generate_demo_warehouse(
        DemoWarehouseSettings(n_customers=1500, as_of=AS_OF), home / "warehouse"
    )
    store = FeatureStoreSettings(home=home)
    write_feature_tables(store, feature_tables(warehouse))
    apply_repo(store)
    materialize_incremental(store, end=warehouse.data_end() + timedelta(seconds=1))
    dates = (
        pl.scan_parquet(store.offline_dir / "customer_profile.parquet")
        .select(pl.col("event_timestamp").unique())
        .collect()["event_timestamp"]
        .to_list()
    )
    labels = churn_labels(
        warehouse.scan("customers").collect(),
        warehouse.scan("churn_events").collect(),
        dates,
        warehouse.data_end(),
    )
    registry = RegistrySettings(home=home)
    retrain_churn(
        labels,
        lambda service, rows: training_set(store, service, rows),
        ChurnSettings(iterations=60, thread_count=2, bootstrap_resamples=10, ablation=[]),
        registry,
        home / "reports",
        log=lambda _: None,
    )
    shipped = importlib.resources.files("mlinfra_features") / "taxonomy" / "v1.yaml"
    with importlib.resources.as_file(shipped) as path:
        v1 = load_taxonomy(path)
    annotations = warehouse.scan("event_annotations").collect()
    retrain_event_classifier(
        annotations,
        warehouse.scan("product_events").select("event_id", "event_timestamp").collect(),
        lambda service, rows: training_set(store, service, rows),
        EventClassifierSettings(iterations=60, thread_count=2, bootstrap_resamples=10),
        taxonomy=v1,
        annotation_taxonomy=v1,
        registry=registry,
        report_dir=home / "reports",
        log=lambda _: None,
    )
    everyone = sorted(warehouse.scan("customers").select("customer_id").collect()["customer_id"])
    online = online_features(store, "churn_v2", everyone)
    customers = online.drop_nulls()["customer_id"].to_list()
    assert len(customers) > 500
    return DemoHome(home, store, registry, warehouse, customers)


@pytest.fixture(scope="session")
def redis_address() -> Iterator[str]:
    """host:port of a real Redis: .ci/run's (``MLINFRA_TEST_REDIS``) or one started here."""
    given = os.environ.get(REDIS_ENV)
    if given:
        yield given
        return
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "no redis-server binary on PATH (apt-get install redis-server, or set "
            f"{REDIS_ENV}=host:port): the Redis online-store tests need a real Redis"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="session")
def redis_store(
    demo_home: DemoHome, redis_address: str, tmp_path_factory: pytest.TempPathFactory
) -> FeatureStoreSettings:
    """The demo's feature tables applied and materialized to Redis (a project of its own)."""
    home = tmp_path_factory.mktemp("redis-home")
    store = FeatureStoreSettings(
        home=home,
        project=f"mlinfra_{uuid.uuid4().hex[:8]}",
        online_store="redis",
        redis_connection_string=redis_address,
    )
    store.offline_dir.mkdir(parents=True)
    for table in demo_home.store.offline_dir.glob("*.parquet"):
        shutil.copy2(table, store.offline_dir / table.name)
    apply_repo(store)
    materialize_incremental(store, end=demo_home.warehouse.data_end() + timedelta(seconds=1))
    return store


@contextmanager
def running(settings: ServingSettings) -> Iterator[str]:
    """The service under a real uvicorn on 127.0.0.1 (a thread of this process); its URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        assert httpx.get(f"{url}/healthz").status_code == 200
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@pytest.fixture(scope="session")
def serve() -> Callable[[ServingSettings], AbstractContextManager[str]]:
    return running


@pytest.fixture(scope="session")
def service_url(demo_home: DemoHome) -> Iterator[str]:
    """One service on the demo home for the read-only tests (churn only has a champion)."""
    settings = ServingSettings(home=demo_home.home, reload_interval_s=1.0)
    with running(settings) as url:
        yield url
