"""Online reads: the service's reader returns exactly Feast's values, from 64 threads at once,
on SQLite and on a real Redis."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mlinfra_features import FeatureStoreSettings, apply_repo, online_features
from mlinfra_serving import OnlineFeatureReader, OnlineStoreError

from .conftest import DemoHome

SERVICES = ("churn_v2", "anomaly_detector_v1")


def _check_concurrent_reads(store: FeatureStoreSettings, customers: list[int]) -> None:
    pool = [*customers[:300], 9_000_000_000, 0]
    expected = {service: online_features(store, service, pool).to_dicts() for service in SERVICES}
    by_id = {s: {row["customer_id"]: row for row in rows} for s, rows in expected.items()}
    reader = OnlineFeatureReader(store, SERVICES)
    rng = random.Random(0)
    jobs = [(rng.choice(SERVICES), rng.sample(pool, rng.randint(1, 40))) for _ in range(640)]

    def run(job: tuple[str, list[int]]) -> None:
        service, ids = job
        rows = reader.read(service, ids)
        assert rows.ids == ids
        for n, entity in enumerate(ids):
            want = by_id[service][entity]
            got = {f: rows.columns[f][n] for f in rows.columns}
            assert got == {f: want[f] for f in rows.columns}, (service, entity)
            if entity in (9_000_000_000, 0):  # not customers: every view misses them
                assert rows.missing_views(n) == list(rows.timestamps)
            elif rows.missing_views(n):
                assert all(v is None for v in got.values())

    with ThreadPoolExecutor(max_workers=64) as executor:
        list(executor.map(run, jobs))  # re-raises the first failure


def test_sqlite_reads_match_feast_under_64_threads(demo_home: DemoHome) -> None:
    _check_concurrent_reads(demo_home.store, demo_home.customers)
    OnlineFeatureReader(demo_home.store, SERVICES).ping()


def test_redis_reads_match_feast_under_64_threads(
    demo_home: DemoHome, redis_store: FeatureStoreSettings
) -> None:
    _check_concurrent_reads(redis_store, demo_home.customers)
    OnlineFeatureReader(redis_store, SERVICES).ping()


def test_unreachable_stores_are_reported(tmp_path: Path) -> None:
    store = FeatureStoreSettings(home=tmp_path)
    with pytest.raises(OnlineStoreError, match="expected an applied repository"):
        OnlineFeatureReader(store, SERVICES)
    apply_repo(store)
    (store.feast_dir / "online.db").unlink()
    with pytest.raises(OnlineStoreError, match="does not exist"):
        OnlineFeatureReader(store, SERVICES).ping()
    redis = FeatureStoreSettings(
        home=tmp_path, online_store="redis", redis_connection_string="127.0.0.1:1"
    )
    with pytest.raises(OnlineStoreError, match="redis"):
        OnlineFeatureReader(redis, SERVICES).ping()
