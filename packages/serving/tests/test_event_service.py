"""The event classifier over real HTTP: categories and probabilities equal to the champion's own,
bad input is a 422 naming the field, no champion is a 503 until one is registered (hot reload)."""

from __future__ import annotations

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

from mlinfra_models import EventClassifier, champion, mlflow_client
from mlinfra_serving import EVENT_FIELDS, ServingSettings, read_prediction_log

from .conftest import DemoHome
from .test_service import _registry_copy

Serve = Callable[[ServingSettings], AbstractContextManager[str]]
ROUTE = "/v1/event_classifier/classify"


def _events(demo: DemoHome, n: int) -> list[dict[str, Any]]:
    frame = pl.read_parquet(demo.store.offline_dir / "product_event_features.parquet")
    return frame.sort("event_id").head(n).select("event_id", *EVENT_FIELDS).to_dicts()


def test_classifies_one_and_many_events(demo_home: DemoHome, service_url: str) -> None:
    events = _events(demo_home, 25)
    response = httpx.post(f"{service_url}{ROUTE}", json={"events": events})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"], body["semver"]) == ("event_classifier", "1", "1.0.0")
    assert body["taxonomy_version"] == "v1" and body["feature_service"] == "event_classifier_v1"
    assert response.headers["x-request-id"] == body["request_id"]

    current = champion(mlflow_client(demo_home.registry), "event_classifier")
    assert current is not None
    model = EventClassifier(
        mlflow.catboost.load_model(current.source), current.contract.features, "v1"
    )
    frame = pl.DataFrame(events).select(current.contract.features)
    expected = model.predict_proba(frame)
    results = body["results"]
    assert [r["event_id"] for r in results] == [e["event_id"] for e in events]
    for result, want in zip(results, expected, strict=True):
        got = [result["probabilities"][c] for c in model.classes]
        np.testing.assert_allclose(got, want, rtol=1e-9)
        assert result["category"] == model.classes[int(np.argmax(want))]
        assert result["probability"] == pytest.approx(float(want.max()), rel=1e-9)

    one = {k: v for k, v in events[0].items() if k != "event_id"}
    single = httpx.post(f"{service_url}{ROUTE}", json={"event": one}).json()
    assert single["results"][0]["event_id"] is None
    assert single["results"][0]["category"] == results[0]["category"]

    deadline = time.monotonic() + 10  # the log is written every second
    while True:
        log = read_prediction_log(demo_home.home / "predictions", "event_classifier")
        mine = log.filter(pl.col("request_id") == body["request_id"]) if log.height else log
        if mine.height == len(events) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sorted(mine["entity_id"].to_list()) == sorted(e["event_id"] for e in events)
    assert mine["label"].to_list() == [r["category"] for r in results]
    metrics = httpx.get(f"{service_url}/metrics").text
    assert 'mlinfra_serving_predictions_total{model="event_classifier",version="1"}' in metrics
    category = results[0]["category"]
    assert (
        f'mlinfra_serving_predicted_categories_total{{category="{category}",'
        'model="event_classifier"}' in metrics
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": []}, "events: List should have at least 1 item"),
        ({"events": [{"event_name": "a", "module": "b"}]}, "events.0.event_text: Field required"),
        ({"event": {"event_name": "a", "module": "b", "event_text": 5}}, "event.event_text"),
        ({"event": {"event_name": "", "module": "b", "event_text": "x"}}, "event.event_name"),
        ({"event": {"event_name": "a", "module": "b", "event_text": "x", "items_count": -1}},
         "event.items_count"),
        ({"event": {"event_name": "a", "module": "b", "event_text": "x", "user": 1}}, "user"),
        ({}, "exactly one of"),
        ({"events": [{"event_name": "a", "module": "b", "event_text": "x"}] * 1001}, "at most"),
    ],
)  # fmt: skip
def test_bad_event_input_is_422_naming_the_field(
    service_url: str, body: dict[str, Any], field: str
) -> None:
    response = httpx.post(f"{service_url}{ROUTE}", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["message"]


def test_no_champion_is_503_until_one_is_registered(
    demo_home: DemoHome, serve: Serve, tmp_path: Path
) -> None:
    registry = _registry_copy(demo_home, tmp_path / "registry")
    client = mlflow_client(registry)
    client.delete_registered_model_alias("event_classifier", "champion")
    settings = ServingSettings(
        home=tmp_path,
        store=demo_home.store,
        registry=registry,
        models=("event_classifier",),
        reload_interval_s=0.5,
    )
    event = {k: v for k, v in _events(demo_home, 1)[0].items() if k != "event_id"}
    with serve(settings) as url:
        refused = httpx.post(f"{url}{ROUTE}", json={"event": event})
        assert refused.status_code == 503
        message = refused.json()["message"]
        assert "'event_classifier' has no champion" in message
        assert "model=event_classifier" in message
        assert httpx.get(f"{url}/readyz").status_code == 503
        client.set_registered_model_alias("event_classifier", "champion", "1")
        deadline = time.monotonic() + settings.reload_interval_s + 10
        while (response := httpx.post(f"{url}{ROUTE}", json={"event": event})).status_code != 200:
            assert response.status_code == 503 and time.monotonic() < deadline, response.text
            time.sleep(0.1)
        assert response.json()["version"] == "1"
        assert httpx.get(f"{url}/readyz").status_code == 200
