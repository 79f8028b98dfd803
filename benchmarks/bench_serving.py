"""The scoring path: in process (online features + churn champion) and over HTTP.

**In process**, for 1 and 100 customers: the service's path
(:class:`mlinfra_serving.OnlineFeatureReader` + :class:`mlinfra_serving.ChurnScorer`: one
per-thread SQLite connection reading Feast's tables, a prebuilt row list into CatBoost) against
the naive path (``FeatureStore.get_online_features(...).to_dict()`` and ``predict_proba`` on a
pandas DataFrame). Both give the same scores (checked). Target: >= 3x faster for both sizes.

**HTTP**: the service under uvicorn (one worker, a subprocess) on 127.0.0.1, driven by a
minimal keep-alive HTTP/1.1 client (asyncio streams, prebuilt requests, so that the client
costs little beside the server) at concurrency 1 and 64, against a no-op ``POST`` endpoint
added to the same app. The load is bounded: each measurement stops after
``HTTP_SECONDS`` or ``HTTP_MAX_REQUESTS``, whichever comes first. Targets: at concurrency 1 the
scoring route's throughput >= 0.5x the no-op's; zero errors at concurrency 64.

With ``--benchmark-disable`` (the normal test run) everything runs once, briefly, and only the
equality of the two paths' scores and the zero-error condition are checked. With
``--benchmark-enable`` the three ratios are recorded with their targets (``record_ratio``), and
``benchmarks/check_ratios.py`` fails a run where one is below half its target (machine noise
can't, a real regression does); the printed line says whether the full target is met.

Run as a script (``python benchmarks/bench_serving.py --serve PORT``) it is the server
subprocess: the app of ``MLINFRA_SERVING_SETTINGS`` plus the no-op route.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

    from mlinfra_features import FeatureStoreSettings
    from mlinfra_features.sources import Warehouse

TARGET_IN_PROCESS = 3.0
TARGET_HTTP_RATIO = 0.5
HTTP_SECONDS = float(os.environ.get("MLINFRA_BENCH_HTTP_SECONDS", "3"))
HTTP_MAX_REQUESTS = 30_000


@dataclass(frozen=True)
class ServingHome:
    home: Path
    store: FeatureStoreSettings
    customers: list[int]


@pytest.fixture(scope="module")
def serving_home(
    demo_warehouse: Warehouse, tmp_path_factory: pytest.TempPathFactory
) -> ServingHome:
    """The benchmark warehouse materialized to SQLite with a small churn champion."""
    import polars as pl

    from mlinfra_features import (
        FeatureStoreSettings,
        apply_repo,
        feature_tables,
        materialize_incremental,
        online_features,
        training_set,
        write_feature_tables,
    )
    from mlinfra_models import ChurnSettings, RegistrySettings, churn_labels, retrain_churn

    home = tmp_path_factory.mktemp("serving-bench")
    store = FeatureStoreSettings(home=home)
    write_feature_tables(store, feature_tables(demo_warehouse))
    apply_repo(store)
    materialize_incremental(store, end=demo_warehouse.data_end() + timedelta(seconds=1))
    dates = (
        pl.scan_parquet(store.offline_dir / "customer_profile.parquet")
        .select(pl.col("event_timestamp").unique())
        .collect()["event_timestamp"]
        .to_list()
    )
    labels = churn_labels(
        demo_warehouse.scan("customers").collect(),
        demo_warehouse.scan("churn_events").collect(),
        dates,
        demo_warehouse.data_end(),
    )
    retrain_churn(
        labels,
        lambda service, rows: training_set(store, service, rows),
        ChurnSettings(iterations=100, thread_count=2, bootstrap_resamples=10, ablation=[]),
        RegistrySettings(home=home),
        home / "reports",
        log=lambda _: None,
    )
    everyone = demo_warehouse.scan("customers").select("customer_id").collect()["customer_id"]
    online = online_features(store, "churn_v2", everyone.to_list()).drop_nulls()
    return ServingHome(home, store, online["customer_id"].to_list())


# --- in process ----------------------------------------------------------------------------


def _paths(bench: ServingHome) -> tuple[Callable[[list[int]], Any], Callable[[list[int]], Any]]:
    import mlflow.catboost
    import pandas as pd

    from mlinfra_features import feature_store, service_features
    from mlinfra_models import RegistrySettings, mlflow_client
    from mlinfra_serving import ChurnScorer, OnlineFeatureReader

    mlflow_client(RegistrySettings(home=bench.home))
    booster = mlflow.catboost.load_model("models:/churn@champion")
    features = service_features("churn_v2")
    reader = OnlineFeatureReader(bench.store, ["churn_v2"])
    scorer = ChurnScorer(booster, features)
    store = feature_store(bench.store)
    service = store.get_feature_service("churn_v2")

    def service_path(ids: list[int]) -> Any:
        return scorer.score(reader.read("churn_v2", ids), range(len(ids)))  # type: ignore[arg-type]

    def naive_path(ids: list[int]) -> Any:
        values = store.get_online_features(
            features=service, entity_rows=[{"customer_id": i} for i in ids]
        ).to_dict()
        frame = pd.DataFrame({f: values[f] for f in features})
        frame["plan"] = frame["plan"].astype(str)
        return booster.predict_proba(frame)[:, 1]

    return service_path, naive_path


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _per_call(function: Callable[[list[int]], Any], ids: list[int], seconds: float) -> float:
    calls, started = 0, time.perf_counter()
    while True:
        function(ids)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return elapsed / calls


@pytest.mark.parametrize("n", [1, 100])
def test_in_process_scoring_vs_naive(
    benchmark: BenchmarkFixture,
    serving_home: ServingHome,
    bench_report: Callable[[str], None],
    record_ratio: Callable[..., None],
    n: int,
) -> None:
    service_path, naive_path = _paths(serving_home)
    ids = serving_home.customers[:n]
    np.testing.assert_allclose(service_path(ids), naive_path(ids), rtol=1e-9)
    benchmark.pedantic(service_path, args=(ids,), rounds=1 if benchmark.disabled else 200)
    if benchmark.disabled:
        return
    # Interleaved rounds, the median of each side: both see the same machine load.
    ours, naive = [], []
    for _ in range(7):
        ours.append(_per_call(service_path, ids, 0.3))
        naive.append(_per_call(naive_path, ids, 0.3))
    fast, slow = float(np.median(ours)), float(np.median(naive))
    speedup = slow / fast
    line = (
        f"in-process scoring, {n} customer(s): service path {fast * 1e3:.3f} ms, naive "
        f"(get_online_features + DataFrame) {slow * 1e3:.3f} ms: {speedup:.1f}x "
        f"(target >= {TARGET_IN_PROCESS:.0f}x: {_verdict(speedup >= TARGET_IN_PROCESS)})"
    )
    bench_report(line)
    benchmark.extra_info.update(
        {"customers": n, "service_ms": fast * 1e3, "naive_ms": slow * 1e3, "speedup": speedup}
    )
    record_ratio(
        benchmark, f"in-process scoring speedup, {n} customer(s)", speedup, TARGET_IN_PROCESS
    )


# --- HTTP ------------------------------------------------------------------------------------


def _serve(port: int) -> None:
    """The server subprocess: the service app plus a no-op route, under uvicorn."""
    import uvicorn
    from fastapi.responses import Response

    from mlinfra_serving.app import app_from_env

    app = app_from_env()

    @app.post("/bench/noop", include_in_schema=False)
    async def noop() -> Response:
        return Response(b"{}", media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@pytest.fixture(scope="module")
def server(serving_home: ServingHome) -> Iterator[str]:
    import httpx

    from mlinfra_serving import ServingSettings
    from mlinfra_serving.app import SETTINGS_ENV

    settings = ServingSettings(home=serving_home.home, models=("churn",))
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, SETTINGS_ENV: settings.to_json()}
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)], env=env, stderr=subprocess.PIPE
    )
    url = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode()[-3000:] if proc.stderr else ""
                raise RuntimeError(f"the service did not become ready:\n{err}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@dataclass(frozen=True)
class Load:
    requests: int
    errors: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


async def _drive(
    url: str, path: str, bodies: list[bytes], concurrency: int, seconds: float
) -> Load:
    host, port = url.split(":")
    requests = [
        (
            f"POST {path} HTTP/1.1\r\nHost: {url}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def connection(k: int) -> None:
        nonlocal done, errors
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        try:
            while time.perf_counter() < stop and done + errors < HTTP_MAX_REQUESTS:
                writer.write(requests[i % len(requests)])
                i += concurrency
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200") and not body.startswith(b'{"detail"'):
                    done += 1
                else:
                    errors += 1
        except (OSError, asyncio.IncompleteReadError):
            errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection(k) for k in range(concurrency)))
    return Load(done, errors, time.perf_counter() - started)


@pytest.mark.parametrize("concurrency", [1, 64])
def test_http_scoring_vs_noop(
    benchmark: BenchmarkFixture,
    *,
    serving_home: ServingHome,
    server: str,
    bench_report: Callable[[str], None],
    record_ratio: Callable[..., None],
    concurrency: int,
) -> None:
    seconds = 0.3 if benchmark.disabled else HTTP_SECONDS
    bodies = [json.dumps({"customer_ids": [i]}).encode() for i in serving_home.customers[:500]]

    def measure(path: str) -> Load:
        return asyncio.run(_drive(server, path, bodies, concurrency, seconds))

    measure("/v1/churn/score")  # warm up both routes and the connections
    measure("/bench/noop")
    score = benchmark.pedantic(measure, args=("/v1/churn/score",), rounds=1, iterations=1)
    noop = measure("/bench/noop")
    assert score.errors == 0 and noop.errors == 0, (score, noop)
    assert score.requests > 0
    ratio = score.rate / noop.rate
    line = (
        f"HTTP, concurrency {concurrency}: /v1/churn/score {score.rate:,.0f} req/s "
        f"({score.requests:,} requests, {score.errors} errors), no-op {noop.rate:,.0f} req/s: "
        f"{ratio:.2f}x the no-op"
        + (
            f" (target >= {TARGET_HTTP_RATIO}x: {_verdict(ratio >= TARGET_HTTP_RATIO)})"
            if concurrency == 1
            else " (target: zero errors: met)"
        )
    )
    bench_report(line)
    benchmark.extra_info.update(
        {
            "concurrency": concurrency,
            "score_rps": score.rate,
            "noop_rps": noop.rate,
            "ratio": ratio,
            "errors": score.errors,
        }
    )
    if not benchmark.disabled and concurrency == 1:
        record_ratio(benchmark, "HTTP throughput vs no-op, concurrency 1", ratio, TARGET_HTTP_RATIO)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        _serve(int(sys.argv[2]))
    else:
        sys.exit("usage: python benchmarks/bench_serving.py --serve PORT")
