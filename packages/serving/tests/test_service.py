"""The scoring service end to end over real HTTP on 127.0.0.1, with a real churn champion."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import mlflow.catboost
import numpy as np
import polars as pl
import pytest

from mlinfra_features import FeatureStoreSettings, online_features
from mlinfra_models import ChurnModel, RegistrySettings, champion, mlflow_client
from mlinfra_serving import PredictionLogSettings, ServingSettings, read_prediction_log

from .conftest import DemoHome, free_port

Serve = Callable[[ServingSettings], AbstractContextManager[str]]
UNKNOWN = 9_000_000_000


def reference_scores(demo: DemoHome, ids: list[int]) -> dict[int, float]:
    """The champion's scores through the Feast SDK and the training-time (pandas) path."""
    client = mlflow_client(demo.registry)
    current = champion(client, "churn")
    assert current is not None
    model = ChurnModel(mlflow.catboost.load_model(current.source), current.contract.features)
    frame = online_features(demo.store, current.tags["feature_service"], ids)
    return dict(zip(ids, model.predict_proba(frame).tolist(), strict=True))


def test_churn_scores_many_and_one(demo_home: DemoHome, service_url: str) -> None:
    ids = demo_home.customers[:40]
    response = httpx.post(f"{service_url}/v1/churn/score", json={"customer_ids": [*ids, UNKNOWN]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["semver"]) == ("churn", "1", "1.0.0")
    assert body["feature_service"] == "churn_v2"
    assert response.headers["x-request-id"] == body["request_id"]
    expected = reference_scores(demo_home, ids)
    scored = {r["customer_id"]: r["score"] for r in body["results"] if r["status"] == "scored"}
    assert scored.keys() == set(ids)
    np.testing.assert_allclose([scored[i] for i in ids], [expected[i] for i in ids], rtol=1e-9)
    missing = body["results"][-1]
    assert missing == {
        "customer_id": UNKNOWN,
        "status": "not_found",
        "score": None,
        "missing_views": ["customer_profile", "customer_logins", "customer_support"],
    }
    one = httpx.post(f"{service_url}/v1/churn/score", json={"customer_id": ids[0]}).json()
    assert one["results"][0]["score"] == pytest.approx(expected[ids[0]], rel=1e-9)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", "body"),
        ({"customer_ids": []}, "customer_ids"),
        ({"customer_ids": ["12"]}, "customer_ids.0"),
        ({"customer_ids": [1.5]}, "customer_ids.0"),
        ({"customer_ids": [True]}, "customer_ids.0"),
        ({"customer_ids": [-1]}, "customer_ids.0"),
        ({"customer_ids": [2**64]}, "customer_ids.0"),
        ({"customer_ids": list(range(1001))}, "customer_ids"),
        ({"customer_ids": [1], "customer_id": 1}, "exactly one of"),
        ({"customer_ids": [1], "extra": 1}, "extra"),
        ({}, "exactly one of"),
        ([1, 2], "body"),
    ],
)
def test_bad_churn_input_is_422_naming_the_field(service_url: str, body: Any, field: str) -> None:
    kwargs: dict[str, Any] = (
        {"content": body, "headers": {"content-type": "application/json"}}
        if isinstance(body, bytes)
        else {"json": body}
    )
    response = httpx.post(f"{service_url}/v1/churn/score", **kwargs)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer_id": 1, "day": "2026-02-30"}, "day"),
        ({"customer_id": 1, "day": "yesterday"}, "day"),
        ({"customer_id": 1, "day": "2999-01-01"}, "in the future"),
        ({"customer_id": "1", "day": "2026-11-20"}, "customer_id"),
        ({"day": "2026-11-20"}, "customer_id"),
    ],
)
def test_bad_anomaly_input_is_422(service_url: str, body: Any, field: str) -> None:
    response = httpx.post(f"{service_url}/v1/anomaly_detector/score", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


def test_unknown_routes_are_404(service_url: str) -> None:
    for path in ("/v1/fraud/score", "/v1/fraud/classify", "/v2/churn/score"):
        response = httpx.post(f"{service_url}{path}", json={"customer_ids": [1]})
        assert response.status_code == 404, path
        assert response.json()["detail"]
    assert "fraud" in httpx.post(f"{service_url}/v1/fraud/score", json={}).json()["message"]


def test_a_model_without_champion_answers_503_and_is_not_ready(service_url: str) -> None:
    response = httpx.post(
        f"{service_url}/v1/anomaly_detector/score", json={"customer_id": 1, "day": "2026-11-20"}
    )
    assert response.status_code == 503
    assert "anomaly_detector" in response.json()["message"]
    assert "champion" in response.json()["message"]
    ready = httpx.get(f"{service_url}/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["models"]["churn"] == {"version": "1", "semver": "1.0.0"}
    assert "champion" in body["models"]["anomaly_detector"]["error"]
    assert body["online_store"] == {"type": "sqlite", "reachable": True}
    assert httpx.get(f"{service_url}/healthz").json() == {"status": "ok"}


def test_metrics_and_openapi(demo_home: DemoHome, service_url: str) -> None:
    httpx.post(f"{service_url}/v1/churn/score", json={"customer_ids": [demo_home.customers[0]]})
    httpx.post(f"{service_url}/v1/churn/score", json={"customer_ids": [UNKNOWN]})
    text = httpx.get(f"{service_url}/metrics").text
    assert 'mlinfra_serving_requests_total{method="POST",route="/v1/churn/score",status="200"}' in (
        text
    )
    assert 'mlinfra_serving_request_seconds_bucket{le="0.005",route="/v1/churn/score"}' in text
    for result in ("found", "not_found"):
        assert (
            f'mlinfra_serving_online_lookups_total{{feature_view="customer_logins",'
            f'result="{result}"}}' in text
        )
    assert 'mlinfra_serving_model_version_info{model="churn",semver="1.0.0",version="1"} 1.0' in (
        text
    )
    spec = httpx.get(f"{service_url}/openapi.json").json()
    assert {
        "/v1/churn/score",
        "/v1/anomaly_detector/score",
        "/v1/event_classifier/classify",
        "/healthz",
        "/readyz",
    } <= set(spec["paths"])
    assert httpx.get(f"{service_url}/docs").status_code == 200


def burst(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    """``bodies`` posted to the churn route over up to 64 connections at once.

    The test services run in a thread of this process, so the client's event loop and the
    server's share the GIL: at Python's default 5 ms switch interval each hands it to the other
    only after a timeout, and 256 requests took ~25 s instead of ~3 s. A short interval while
    the burst runs keeps them both moving."""

    async def post_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/churn/score", json=b) for b in bodies))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        return asyncio.run(post_all())
    finally:
        sys.setswitchinterval(interval)


def test_64_concurrent_requests_no_errors_and_right_values(
    demo_home: DemoHome, service_url: str
) -> None:
    rng = random.Random(0)
    pool = demo_home.customers[:400]
    bodies = [{"customer_ids": rng.sample(pool, rng.randint(1, 20))} for _ in range(256)]
    expected = reference_scores(demo_home, pool)
    for _ in range(2):
        responses = burst(service_url, bodies)
        assert [r.status_code for r in responses] == [200] * len(bodies)
        for body, response in zip(bodies, responses, strict=True):
            results = response.json()["results"]
            assert [r["customer_id"] for r in results] == body["customer_ids"]
            got = [r["score"] for r in results]
            want = [expected[i] for i in body["customer_ids"]]
            np.testing.assert_allclose(got, want, rtol=1e-9)


def _registry_copy(demo: DemoHome, target: Path) -> RegistrySettings:
    """A copy of the demo's MLflow store (versions point to the same artifacts)."""
    (target / "mlflow").mkdir(parents=True)
    shutil.copy2(demo.home / "mlflow" / "mlflow.db", target / "mlflow" / "mlflow.db")
    return RegistrySettings(home=target)


def test_hot_reload_serves_the_new_champion_without_failing_requests(
    demo_home: DemoHome, serve: Serve, tmp_path: Path
) -> None:
    registry = _registry_copy(demo_home, tmp_path / "registry")
    settings = ServingSettings(
        home=tmp_path, store=demo_home.store, registry=registry, reload_interval_s=1.0
    )
    ids = demo_home.customers[:5]
    with serve(settings) as url:
        seen: list[tuple[float, str]] = []
        failures: list[str] = []
        moved_at: list[float] = []

        async def hammer() -> None:
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

                async def one() -> None:
                    r = await client.post("/v1/churn/score", json={"customer_ids": ids})
                    if r.status_code != 200:
                        failures.append(r.text)
                    else:
                        seen.append((time.monotonic(), r.json()["version"]))

                deadline = None
                while deadline is None or time.monotonic() < deadline:
                    await asyncio.gather(*(one() for _ in range(16)))
                    if moved_at and deadline is None:
                        deadline = moved_at[0] + settings.reload_interval_s + 7.0

        async def move_alias() -> None:
            await asyncio.sleep(1.0)

            def register() -> None:
                client = mlflow_client(registry)
                current = client.get_model_version("churn", "1")
                second = client.create_model_version(
                    name="churn",
                    source=current.source,
                    run_id=current.run_id,
                    tags={**current.tags, "semver": "1.0.1"},
                )
                client.set_registered_model_alias("churn", "champion", second.version)

            await asyncio.to_thread(register)
            moved_at.append(time.monotonic())

        async def both() -> None:
            await asyncio.gather(hammer(), move_alias())

        asyncio.run(both())
    assert not failures, failures[:3]
    assert {v for _, v in seen} == {"1", "2"}
    first_new = min(t for t, v in seen if v == "2")
    # Within the poll interval plus the time to load the new version beside the old one
    # (about a second; more on a busy 2-core machine).
    assert first_new - moved_at[0] <= settings.reload_interval_s + 5.0
    assert all(v == "2" for t, v in seen if t > first_new), "never back to the old version"


def test_prediction_log_holds_every_prediction_once(
    demo_home: DemoHome, serve: Serve, tmp_path: Path
) -> None:
    settings = ServingSettings(
        home=tmp_path,
        store=demo_home.store,
        registry=demo_home.registry,
        prediction_log=PredictionLogSettings(batch_size=50, flush_interval_s=0.2),
    )
    rng = random.Random(1)
    bodies = [
        {"customer_ids": [*rng.sample(demo_home.customers, rng.randint(1, 30)), UNKNOWN]}
        for _ in range(60)
    ]
    with serve(settings) as url:
        responses = burst(url, bodies)
    served = sorted(
        (r.json()["request_id"], item["customer_id"], item["score"])
        for r in responses
        for item in r.json()["results"]
        if item["status"] == "scored"
    )
    log = read_prediction_log(tmp_path / "predictions", "churn")
    logged = sorted(log.select("request_id", "entity_id", "score").iter_rows())
    assert logged == served
    assert set(log["model"]) == {"churn"} and set(log["version"]) == {"1"}
    assert log["feature_hash"].str.len_chars().min() == 32
    assert log["timestamp"].null_count() == 0
    files = list((tmp_path / "predictions" / "churn").rglob("*"))
    assert all(f.parent.name.startswith("date=") for f in files if f.is_file())
    assert not [f for f in files if f.name.endswith(".tmp")], "no half-written file is left"


def test_missing_entity_policy_score_with_nulls(
    demo_home: DemoHome, serve: Serve, tmp_path: Path
) -> None:
    settings = ServingSettings(
        home=tmp_path,
        store=demo_home.store,
        registry=demo_home.registry,
        missing_entity="score_with_nulls",
        max_ids_per_request=3,
    )
    with serve(settings) as url:
        body = httpx.post(f"{url}/v1/churn/score", json={"customer_ids": [UNKNOWN]}).json()
        too_many = httpx.post(f"{url}/v1/churn/score", json={"customer_ids": [1, 2, 3, 4]})
    (result,) = body["results"]
    assert result["status"] == "scored" and 0 < result["score"] < 1
    assert result["missing_views"] == ["customer_profile", "customer_logins", "customer_support"]
    assert too_many.status_code == 422 and "at most 3" in too_many.json()["message"]


def test_redis_and_sqlite_give_the_same_scores_under_concurrency(
    demo_home: DemoHome,
    redis_store: FeatureStoreSettings,
    serve: Serve,
    service_url: str,
    tmp_path: Path,
) -> None:
    settings = ServingSettings(
        home=tmp_path,
        store=redis_store,
        registry=demo_home.registry,
        models=("churn",),
    )
    rng = random.Random(2)
    bodies = [
        {"customer_ids": [*rng.sample(demo_home.customers, rng.randint(1, 20)), UNKNOWN]}
        for _ in range(128)
    ]
    with serve(settings) as url:
        ready = httpx.get(f"{url}/readyz")
        on_redis = burst(url, bodies)
    on_sqlite = burst(service_url, bodies)
    assert ready.status_code == 200, ready.text
    assert ready.json()["online_store"] == {"type": "redis", "reachable": True}
    assert [r.status_code for r in on_redis] == [200] * len(bodies)
    for a, b in zip(on_redis, on_sqlite, strict=True):
        assert a.json()["results"] == b.json()["results"]


def _requests_counted(text: str) -> float:
    """The scrape's count of answered churn requests (every status)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("mlinfra_serving_requests_total{") and 'route="/v1/churn/score"' in line
    )


def test_two_workers_serve_one_log_and_one_metrics_scrape(
    demo_home: DemoHome, tmp_path: Path
) -> None:
    """``mlinfra-serve --workers 2``: both workers answer, every prediction is logged once, and
    ``/metrics`` counts every worker's requests whichever worker takes the scrape."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the CLI makes the metrics folder
    command = [sys.executable, "-m", "mlinfra_serving", "--home", str(demo_home.home)]
    command += ["--port", str(port), "--workers", "2", "--models", "churn"]
    proc = subprocess.Popen([*command, "--log-level", "warning"], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300  # two workers import and load on 2 busy cores
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "mlinfra-serve exited"
            assert time.monotonic() < deadline, "mlinfra-serve --workers 2 did not become ready"
            time.sleep(0.5)
        (folder,) = tmp_path.glob("mlinfra-serve-metrics-*")
        rng = random.Random(2)
        bodies = [{"customer_ids": rng.sample(demo_home.customers, 5)} for _ in range(80)]
        responses = burst(url, bodies)
        assert [r.status_code for r in responses] == [200] * len(bodies)
        # both workers keep their values in the shared folder (one file per process and kind)
        workers = {f.stem.rsplit("_", 1)[1] for f in folder.glob("counter_*.db")}
        assert len(workers) == 2, sorted(workers)
        for _ in range(6):  # fresh connections: the scrapes land on either worker
            with httpx.Client() as client:
                assert _requests_counted(client.get(f"{url}/metrics").text) == len(bodies)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
    assert not folder.exists(), "the metrics folder is removed at exit"
    ids = {r.json()["request_id"] for r in responses}
    log = read_prediction_log(demo_home.home / "predictions", "churn")
    assert log.filter(pl.col("request_id").is_in(list(ids))).height == 5 * len(bodies)
