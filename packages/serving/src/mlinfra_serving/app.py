"""The scoring service: FastAPI routes over online features and the registry's champions.

Endpoints are ``async`` and do their (short, blocking) feature read and scoring inline on the
event loop: no thread-pool hop per request, and each worker process reads the online store from
one thread. :class:`~mlinfra_serving.online.OnlineFeatureReader` is also safe from any number of
threads (one connection per thread), which is what the batch and benchmark paths use.
"""

import logging
import os
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Self

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from mlinfra_serving.champions import Champion, Champions
from mlinfra_serving.metrics import MetricsMiddleware, ServingMetrics
from mlinfra_serving.models import MODEL_SPECS, AnomalyScorer
from mlinfra_serving.online import MAX_ENTITY_ID, OnlineFeatureReader, OnlineStoreError
from mlinfra_serving.predictions import Prediction, PredictionLog
from mlinfra_serving.settings import ServingSettings

__all__ = ["SETTINGS_ENV", "ServiceState", "app_from_env", "create_app"]

logger = logging.getLogger(__name__)

#: JSON of :class:`ServingSettings` handed to uvicorn's worker processes by the CLI.
SETTINGS_ENV = "MLINFRA_SERVING_SETTINGS"

CustomerId = Annotated[int, Field(strict=True, ge=0, le=MAX_ENTITY_ID)]


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
        self.metrics = ServingMetrics()
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
    return given if 0 < len(given) <= 128 and given.isprintable() else uuid.uuid4().hex


def _read(state: ServiceState, service: str, ids: list[int]) -> Any:
    try:
        rows = state.reader().read(service, ids)
    except OnlineStoreError as exc:
        raise HTTPException(503, f"online store unavailable: {exc}") from exc
    except Exception as exc:  # Redis down, SQLite locked, ...
        logger.exception("online read failed")
        raise HTTPException(503, f"online store unavailable: {type(exc).__name__}: {exc}") from exc
    lookups = state.metrics.lookups
    for view, stamps in rows.timestamps.items():
        found = sum(ts is not None for ts in stamps)
        if found:
            lookups.labels(view, "found").inc(found)
        if found < len(stamps):
            lookups.labels(view, "not_found").inc(len(stamps) - found)
    return rows


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

    churn_request = churn_request_model(settings.max_ids_per_request)
    unavailable: dict[int | str, dict[str, Any]] = {
        503: {"model": ErrorBody, "description": "no champion, or the online store is down"}
    }

    if "churn" in settings.models:

        @app.post(
            "/v1/churn/score",
            response_model=ChurnResponse,
            responses=unavailable,
            tags=["churn"],
            summary="Churn probability of one or many customers",
            openapi_extra=_json_body(churn_request),
        )
        async def score_churn(request: Request) -> Any:
            body = _parse(churn_request, await request.body())
            champion = state.champion_or_503("churn")
            ids: list[int] = body.ids()  # type: ignore[attr-defined]
            rows = _read(state, champion.feature_service, ids)
            request_id = _request_id(request)
            score_nulls = settings.missing_entity == "score_with_nulls"
            missing = [rows.missing_views(i) for i in range(len(ids))]
            index = [i for i in range(len(ids)) if score_nulls or not missing[i]]
            scorer = champion.scorer
            scores = scorer.score(rows, index)
            by_row = dict(zip(index, scores.tolist(), strict=True))
            now = datetime.now(UTC)
            state.log.append(
                [
                    Prediction(
                        request_id,
                        "churn",
                        champion.version,
                        champion.semver,
                        champion.feature_service,
                        ids[i],
                        None,
                        by_row[i],
                        now,
                        rows.row(i, scorer.features),
                    )
                    for i in index
                ]
            )
            state.metrics.predictions.labels("churn", champion.version).inc(len(index))
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
                    "version": champion.version,
                    "semver": champion.semver,
                    "feature_service": champion.feature_service,
                    "results": results,
                },
                headers={"x-request-id": request_id},
            )

    if "anomaly_detector" in settings.models:

        @app.post(
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
        async def score_anomaly(request: Request) -> Any:
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
                state.metrics.predictions.labels("anomaly_detector", champion.version).inc()
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
