"""The scoring service: FastAPI routes over online features and the registry's champions.

The customer routes are ``async`` and do their (short, blocking) feature read and scoring inline
on the event loop: no thread-pool hop per request, and each worker process reads the online
store from one thread. :class:`~mlinfra_serving.online.OnlineFeatureReader` is also safe from
any number of threads (one connection per thread), which is what the batch and benchmark paths
use. The event classifier's CatBoost text model costs milliseconds per request, so it runs in
the thread pool and leaves the loop to the others.

The model routes are :class:`DirectRoute` routes: each parses its own body with pydantic-core and
builds its own JSON response, and FastAPI calls it with the request alone (its parameter
solving and response validation cost about as much as a no-op request); their OpenAPI entries
are FastAPI's as usual.
"""

import logging
import os
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Self

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlinfra_serving.champions import Champion, Champions
from mlinfra_serving.metrics import MetricsMiddleware, ServingMetrics
from mlinfra_serving.models import MODEL_SPECS, AnomalyScorer, ChurnScorer, EventScorer
from mlinfra_serving.online import MAX_ENTITY_ID, OnlineFeatureReader, OnlineStoreError
from mlinfra_serving.predictions import Prediction, PredictionLog
from mlinfra_serving.settings import ServingSettings

__all__ = ["SETTINGS_ENV", "DirectRoute", "ServiceState", "app_from_env", "create_app"]

logger = logging.getLogger(__name__)

#: JSON of :class:`ServingSettings` handed to uvicorn's worker processes by the CLI.
SETTINGS_ENV = "MLINFRA_SERVING_SETTINGS"

EntityId = Annotated[int, Field(strict=True, ge=0, le=MAX_ENTITY_ID)]
CustomerId = EntityId


# --- request and response bodies -----------------------------------------------------------


class ChurnResult(BaseModel):
    customer_id: int
    status: str = Field(description="'scored', or 'not_found' when the online store lacks it")
    score: float | None = Field(description="churn probability in the next 30 days")
    missing_views: list[str] = Field(description="feature views with no row for the customer")


class ChurnResponse(BaseModel):
    request_id: str
    model: str
    version: str = Field(description="registry version of the champion that scored")
    semver: str
    feature_service: str
    results: list[ChurnResult]


class AnomalyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: CustomerId
    day: date = Field(description="the account-day to score (UTC), YYYY-MM-DD, not in the future")


class AnomalyResponse(BaseModel):
    request_id: str
    model: str
    version: str
    semver: str
    feature_service: str
    customer_id: int
    day: date
    status: str = Field(description="'scored', or 'not_found' (see reason)")
    score: float | None = Field(description="reconstruction error; higher is more anomalous")
    is_anomaly: bool | None
    threshold: float
    reason: str | None = None


class ErrorBody(BaseModel):
    detail: Any
    message: str | None = None


class EventInput(BaseModel):
    """One product event to classify: the fields the classifier was trained on."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    event_id: EntityId | None = Field(
        default=None, description="your id of the event; echoed and logged"
    )
    event_name: str = Field(min_length=1, max_length=200, examples=["endpoint_called"])
    module: str = Field(min_length=1, max_length=200, examples=["api"])
    event_text: str = Field(
        max_length=10_000, description="the event's free text", examples=["response time slow"]
    )
    duration_s: float | None = Field(default=None, ge=0)
    items_count: int | None = Field(default=None, ge=0, le=MAX_ENTITY_ID)
    value_usd: float | None = None


class EventResult(BaseModel):
    event_id: int | None
    category: str = Field(description="the most probable category of the taxonomy")
    probability: float = Field(description="the category's probability")
    probabilities: dict[str, float] = Field(description="every category's probability")


class EventClassifyResponse(BaseModel):
    request_id: str
    model: str
    version: str
    semver: str
    feature_service: str
    taxonomy_version: str = Field(description="the taxonomy the champion predicts categories of")
    results: list[EventResult]


def event_request_model(max_events: int) -> type[BaseModel]:
    """The event classifier's request body, with the configured maximum number of events."""

    class EventClassifyRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                "examples": [
                    {
                        "events": [
                            {
                                "event_id": 1,
                                "event_name": "endpoint_called",
                                "module": "api",
                                "event_text": "response time slow on the export endpoint",
                                "duration_s": 0.4,
                                "items_count": 12,
                                "value_usd": 0.0,
                            }
                        ]
                    }
                ]
            },
        )
        events: list[EventInput] | None = Field(
            default=None, min_length=1, max_length=max_events, description="events to classify"
        )
        event: EventInput | None = Field(default=None, description="one event to classify")

        @model_validator(mode="after")
        def one_of(self) -> Self:
            if (self.events is None) == (self.event is None):
                raise ValueError(
                    "expected exactly one of 'events' (a list of 1 to "
                    f"{max_events} events) or 'event'"
                )
            return self

        def items(self) -> list[EventInput]:
            return self.events if self.events is not None else [self.event]  # type: ignore[list-item]

    return EventClassifyRequest


def churn_request_model(max_ids: int) -> type[BaseModel]:
    """The churn request body, with the configured maximum number of ids."""

    class ChurnRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"customer_ids": [1, 2, 3]}, {"customer_id": 1}]},
        )
        customer_ids: list[CustomerId] | None = Field(
            default=None, min_length=1, max_length=max_ids, description="ids to score"
        )
        customer_id: CustomerId | None = Field(default=None, description="one id to score")

        @model_validator(mode="after")
        def one_of(self) -> Self:
            if (self.customer_ids is None) == (self.customer_id is None):
                raise ValueError(
                    "expected exactly one of 'customer_ids' (a list of 1 to "
                    f"{max_ids} ids) or 'customer_id'"
                )
            return self

        def ids(self) -> list[int]:
            return self.customer_ids if self.customer_ids is not None else [self.customer_id or 0]

    return ChurnRequest


# --- the service state ---------------------------------------------------------------------


class ServiceState:
    """What the routes share: settings, the feature reader, champions, log and metrics."""

    def __init__(self, settings: ServingSettings) -> None:
        self.settings = settings
        self.metrics = ServingMetrics(settings.metrics_dir)
        self.champions = Champions(
            settings.registry_settings,
            settings.models,
            reload_interval_s=settings.reload_interval_s,
            on_change=self._on_change,
        )
        self.log = PredictionLog(
            settings.predictions_dir,
            settings.prediction_log,
            on_written=self.metrics.logged.inc,
            on_dropped=self.metrics.dropped.inc,
        )
        self._reader: OnlineFeatureReader | None = None
        self._reader_lock = threading.Lock()
        self.reader_error: str | None = None

    def _on_change(self, model: str, old: Champion | None, new: Champion | None) -> None:
        if old is not None:
            self.metrics.forget_model_version(model, old.version, old.semver)
        if new is not None:
            self.metrics.model_version.labels(model, new.version, new.semver).set(1)
        self.metrics.reloads.labels(model).inc()

    def reader(self) -> OnlineFeatureReader:
        """The feature reader; built on first use (and retried until the repository exists)."""
        if self._reader is None:
            with self._reader_lock:
                if self._reader is None:
                    services = sorted(
                        {MODEL_SPECS[m].default_feature_service for m in self.settings.models}
                        | {c.feature_service for c in self.champions.loaded().values()}
                    )
                    try:
                        self._reader = OnlineFeatureReader(self.settings.feature_store, services)
                        self.reader_error = None
                    except Exception as exc:
                        self.reader_error = str(exc)
                        raise OnlineStoreError(str(exc)) from exc
        return self._reader

    def champion_or_503(self, model: str) -> Champion:
        current = self.champions.get(model)
        if current is None:
            why = self.champions.errors.get(model, "not loaded yet")
            raise HTTPException(
                503,
                f"model {model!r} has no champion to serve ({why}); register a version and "
                f"set its 'champion' alias (python -m flows.retrain model={model}); the "
                f"service picks it up within {self.settings.reload_interval_s:g} s",
            )
        return current

    def start(self) -> None:
        self.log.start()
        self.champions.start()
        try:
            self.reader()
        except OnlineStoreError as exc:
            logger.warning("online store not readable yet: %s", exc)

    def stop(self) -> None:
        self.champions.stop()
        self.log.close()


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that parses ``model`` itself (see :func:`_parse`)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _parse(model: type[BaseModel], raw: bytes) -> BaseModel:
    """The request body validated by pydantic-core straight from the bytes.

    The scoring routes parse their body themselves: FastAPI's dependency solving for a body
    parameter costs about as much as a no-op request, on every request. Errors are the same
    422 as FastAPI's (``loc`` starting with ``body``).
    """
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


def _describe(error: Any) -> str:
    """``field.path: what was wrong`` for one validation error."""
    loc = [str(p) for p in error.get("loc", ())]
    if error.get("type") == "json_invalid":
        where = f" at character {loc[-1]}" if len(loc) > 1 else ""
        return f"body: malformed JSON ({error.get('ctx', {}).get('error', 'invalid')}{where})"
    return f"{'.'.join(loc)}: {error.get('msg', 'invalid')}"


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id", "")
    return given if 0 < len(given) <= 128 and given.isprintable() else secrets.token_hex(16)


def _read(state: ServiceState, service: str, ids: list[int]) -> Any:
    try:
        rows = state.reader().read(service, ids)
    except OnlineStoreError as exc:
        raise HTTPException(503, f"online store unavailable: {exc}") from exc
    except Exception as exc:  # Redis down, SQLite locked, ...
        logger.exception("online read failed")
        raise HTTPException(503, f"online store unavailable: {type(exc).__name__}: {exc}") from exc
    metrics = state.metrics
    for view, stamps in rows.timestamps.items():
        found = len(stamps) - stamps.count(None)
        if found:
            metrics.child(metrics.lookups, view, "found").inc(found)
        if found < len(stamps):
            metrics.child(metrics.lookups, view, "not_found").inc(len(stamps) - found)
    return rows


class DirectRoute(APIRoute):
    """A route whose endpoint takes the :class:`~starlette.requests.Request` and returns a
    :class:`~starlette.responses.Response` itself: FastAPI calls it directly, without solving
    parameters or validating the response (see the module docstring). Exceptions reach the
    app's handlers as from any route."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint: Callable[[Request], Coroutine[Any, Any, Response]] = self.endpoint
        return endpoint


# --- the app -------------------------------------------------------------------------------


def create_app(settings: ServingSettings | None = None) -> FastAPI:
    """The scoring service for ``settings`` (default: the platform home's defaults)."""
    settings = settings or ServingSettings()
    state = ServiceState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="mlinfra scoring service",
        version="1.0",
        description=(
            "Scores customers with the registry's champions on the online features. Bad input "
            "gets a 4xx JSON body naming the field; a model with no champion answers 503."
        ),
        lifespan=lifespan,
        responses={422: {"model": ErrorBody, "description": "invalid request"}},
    )
    app.state.service = state
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        parts = [_describe(e) for e in errors]
        return JSONResponse(
            status_code=422,
            content={"detail": jsonable_encoder(errors), "message": "; ".join(parts)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": exc.detail, "message": str(exc.detail)},
            headers=getattr(exc, "headers", None),
        )

    score_nulls = settings.missing_entity == "score_with_nulls"
    churn_request = churn_request_model(settings.max_ids_per_request)
    event_request = event_request_model(settings.max_ids_per_request)
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorBody, "description": "no champion, or the online store is down"}
    }

    def post(path: str, **options: Any) -> Callable[[Any], Any]:
        """Register a model route as a :class:`DirectRoute`."""

        def register(endpoint: Any) -> Any:
            app.router.add_api_route(
                path, endpoint, methods=["POST"], route_class_override=DirectRoute, **options
            )
            return endpoint

        return register

    if "churn" in settings.models:

        @post(
            "/v1/churn/score",
            response_model=ChurnResponse,
            responses=unavailable,
            tags=["churn"],
            summary="Churn probability of one or many customers",
            openapi_extra=_json_body(churn_request),
        )
        async def score_churn(request: Request) -> Response:
            body = _parse(churn_request, await request.body())
            champion = state.champion_or_503("churn")
            ids: list[int] = body.ids()  # type: ignore[attr-defined]
            rows = _read(state, champion.feature_service, ids)
            request_id = _request_id(request)
            missing = [rows.missing_views(i) for i in range(len(ids))]
            if score_nulls:
                index = list(range(len(ids)))
            else:
                index = [i for i in range(len(ids)) if not missing[i]]
            scorer = champion.scorer
            assert isinstance(scorer, ChurnScorer)
            scores = scorer.score(rows, index).tolist()
            by_row = dict(zip(index, scores, strict=True))
            now = datetime.now(UTC)
            version, semver, service = champion.version, champion.semver, champion.feature_service
            features = scorer.features
            state.log.append(
                [
                    Prediction(
                        request_id,
                        "churn",
                        version,
                        semver,
                        service,
                        ids[i],
                        None,
                        score,
                        now,
                        rows.row(i, features),
                    )
                    for i, score in zip(index, scores, strict=True)
                ]
            )
            metrics = state.metrics
            metrics.child(metrics.predictions, "churn", version).inc(len(index))
            results = [
                {
                    "customer_id": cid,
                    "status": "scored" if i in by_row else "not_found",
                    "score": by_row.get(i),
                    "missing_views": missing[i],
                }
                for i, cid in enumerate(ids)
            ]
            return JSONResponse(
                {
                    "request_id": request_id,
                    "model": "churn",
                    "version": version,
                    "semver": semver,
                    "feature_service": service,
                    "results": results,
                },
                headers={"x-request-id": request_id},
            )

    if "anomaly_detector" in settings.models:

        @post(
            "/v1/anomaly_detector/score",
            response_model=AnomalyResponse,
            responses=unavailable,
            tags=["anomaly_detector"],
            summary="Anomaly score of one customer's account-day",
            description=(
                "The online store holds each customer's latest account-day only (stamped at "
                "the end of the day). A day that is not the one it holds is answered "
                "'not_found' with the day it does hold: the service never scores one day's "
                "request with another day's features."
            ),
            openapi_extra=_json_body(AnomalyRequest),
        )
        async def score_anomaly(request: Request) -> Response:
            body = _parse(AnomalyRequest, await request.body())
            assert isinstance(body, AnomalyRequest)
            today = datetime.now(UTC).date()
            if body.day > today:
                raise HTTPException(
                    422, f"day {body.day.isoformat()} is in the future; expected a day <= {today}"
                )
            champion = state.champion_or_503("anomaly_detector")
            scorer = champion.scorer
            assert isinstance(scorer, AnomalyScorer)
            rows = _read(state, champion.feature_service, [body.customer_id])
            request_id = _request_id(request)
            missing = rows.missing_views(0)
            # The pipeline stamps a day's activity at the end of that day: day + 1 day.
            stamps = [ts[0] for ts in rows.timestamps.values() if ts[0] is not None]
            held = {(ts.astimezone(UTC) - timedelta(days=1)).date() for ts in stamps}
            reason: str | None = None
            if missing:
                reason = f"the online store has no account activity for customer {body.customer_id}"
            elif held != {body.day}:
                reason = (
                    f"the online store holds customer {body.customer_id}'s activity of "
                    f"{', '.join(sorted(d.isoformat() for d in held))} only (the latest "
                    "materialized day); other days are not served online"
                )
            elif any(rows.columns[f][0] is None for f in scorer.features):
                reason = "the account-day lacks feature values"
            score: float | None = None
            flagged: bool | None = None
            if reason is None:
                score = float(scorer.score(rows, [0])[0])
                flagged = score > scorer.threshold
                state.log.append(
                    [
                        Prediction(
                            request_id,
                            "anomaly_detector",
                            champion.version,
                            champion.semver,
                            champion.feature_service,
                            body.customer_id,
                            body.day,
                            score,
                            datetime.now(UTC),
                            rows.row(0, scorer.features),
                        )
                    ]
                )
                metrics = state.metrics
                metrics.child(metrics.predictions, "anomaly_detector", champion.version).inc()
            return JSONResponse(
                {
                    "request_id": request_id,
                    "model": "anomaly_detector",
                    "version": champion.version,
                    "semver": champion.semver,
                    "feature_service": champion.feature_service,
                    "customer_id": body.customer_id,
                    "day": body.day.isoformat(),
                    "status": "scored" if reason is None else "not_found",
                    "score": score,
                    "is_anomaly": flagged,
                    "threshold": scorer.threshold,
                    "reason": reason,
                },
                headers={"x-request-id": request_id},
            )

    if "event_classifier" in settings.models:

        @post(
            "/v1/event_classifier/classify",
            response_model=EventClassifyResponse,
            responses={503: {"model": ErrorBody, "description": "no champion"}},
            tags=["event_classifier"],
            summary="Category of one or many product events",
            description=(
                "Classifies the events the request carries (name, module, text, numbers) into "
                "the champion's taxonomy; nothing is read from the online store. Each result "
                "has the most probable category, its probability and every category's."
            ),
            openapi_extra=_json_body(event_request),
        )
        async def classify_events(request: Request) -> Response:
            body = _parse(event_request, await request.body())
            champion = state.champion_or_503("event_classifier")
            scorer = champion.scorer
            assert isinstance(scorer, EventScorer)
            events: list[EventInput] = body.items()  # type: ignore[attr-defined]
            fields = [e.model_dump(exclude={"event_id"}) for e in events]
            proba = await run_in_threadpool(scorer.probabilities, fields)
            request_id = _request_id(request)
            classes = scorer.classes
            best = proba.argmax(axis=1).tolist()
            now = datetime.now(UTC)
            version, semver, service = champion.version, champion.semver, champion.feature_service
            results = []
            predictions = []
            for event, values, row, k in zip(events, fields, proba.tolist(), best, strict=True):
                category, probability = classes[k], row[k]
                results.append(
                    {
                        "event_id": event.event_id,
                        "category": category,
                        "probability": probability,
                        "probabilities": dict(zip(classes, row, strict=True)),
                    }
                )
                predictions.append(
                    Prediction(
                        request_id,
                        "event_classifier",
                        version,
                        semver,
                        service,
                        event.event_id,
                        None,
                        probability,
                        now,
                        tuple(values[f] for f in scorer.features),
                        label=category,
                    )
                )
            state.log.append(predictions)
            metrics = state.metrics
            metrics.child(metrics.predictions, "event_classifier", version).inc(len(events))
            for category in (classes[k] for k in best):
                metrics.child(metrics.categories, "event_classifier", category).inc()
            return JSONResponse(
                {
                    "request_id": request_id,
                    "model": "event_classifier",
                    "version": version,
                    "semver": semver,
                    "feature_service": service,
                    "taxonomy_version": champion.tags.get("taxonomy_version", "unknown"),
                    "results": results,
                },
                headers={"x-request-id": request_id},
            )

    @app.post("/v1/{model}/score", include_in_schema=False)
    @app.post("/v1/{model}/classify", include_in_schema=False)
    async def unknown_model(model: str) -> Any:
        raise HTTPException(
            404, f"unknown model route {model!r}; this service serves {list(settings.models)}"
        )

    @app.get("/healthz", tags=["ops"], summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["ops"],
        summary="Champions loaded and online store reachable",
        responses={503: {"description": "not ready; the body says why"}},
    )
    async def readyz() -> Any:
        loaded = state.champions.loaded()
        models = {
            m: (
                {"version": loaded[m].version, "semver": loaded[m].semver}
                if m in loaded
                else {"error": state.champions.errors.get(m, "not loaded yet")}
            )
            for m in settings.models
        }
        store: dict[str, Any] = {"type": settings.feature_store.online_store}
        try:
            state.reader().ping()
            store["reachable"] = True
        except Exception as exc:
            store["reachable"] = False
            store["error"] = str(exc)
        ready = store["reachable"] and all(m in loaded for m in settings.models)
        return JSONResponse(
            {"ready": ready, "models": models, "online_store": store},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["ops"], summary="Prometheus metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """uvicorn's factory in worker processes: the settings the CLI put in the environment."""
    text = os.environ.get(SETTINGS_ENV)
    return create_app(ServingSettings.from_json(text) if text else None)
