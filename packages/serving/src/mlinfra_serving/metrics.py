"""Prometheus metrics of the service, in a registry of its own (one per app, so that several
apps in one process, as in the tests, do not collide).

With ``--workers N`` the worker processes share one scrape: ``mlinfra-serve`` gives them an empty
folder (``ServingSettings.metrics_dir``), each worker keeps its values in files there
(prometheus_client's multiprocess mode) and ``/metrics``, whichever worker answers it, sums the
counters and histograms of all of them; the loaded-version gauge is the maximum over live
workers. One worker keeps its values in memory (faster: no file per metric).

Importing Feast (``feast.metrics``) sets ``PROMETHEUS_MULTIPROC_DIR`` to a temporary folder, which
switches ``prometheus_client`` to file-backed multiprocess values for every metric created
afterwards: slower, and shared between apps of one process. :class:`ServingMetrics` switches it
back to in-process values when it is created (at app creation, never at import).
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["MetricsMiddleware", "ServingMetrics"]

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


class ServingMetrics:
    """The service's metrics; ``registry`` is what ``/metrics`` exposes.

    ``multiprocess_dir``: the folder the worker processes of one service share (see the module
    docstring); it must be set in ``PROMETHEUS_MULTIPROC_DIR`` too, where prometheus_client's
    file-backed values look for it."""

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        from prometheus_client import values

        self.registry = CollectorRegistry()
        own: CollectorRegistry | None = self.registry
        if multiprocess_dir is None:
            values.ValueClass = values.MutexValue
        else:
            from prometheus_client.multiprocess import MultiProcessCollector

            if os.environ.get("PROMETHEUS_MULTIPROC_DIR") != str(multiprocess_dir):
                raise ValueError(
                    f"metrics folder {multiprocess_dir} is not PROMETHEUS_MULTIPROC_DIR "
                    f"({os.environ.get('PROMETHEUS_MULTIPROC_DIR')!r}); expected the same folder"
                )
            values.ValueClass = values.MultiProcessValue()
            MultiProcessCollector(self.registry, path=str(multiprocess_dir))
            own = None  # the values are read back from the folder, every worker's
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.requests = Counter(
            "mlinfra_serving_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=own,
        )
        self.latency = Histogram(
            "mlinfra_serving_request_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=own,
        )
        self.lookups = Counter(
            "mlinfra_serving_online_lookups",
            "Online-feature lookups per feature view, found or not found.",
            ["feature_view", "result"],
            registry=own,
        )
        self.predictions = Counter(
            "mlinfra_serving_predictions",
            "Predictions served, by model and version.",
            ["model", "version"],
            registry=own,
        )
        self.categories = Counter(
            "mlinfra_serving_predicted_categories",
            "Predicted categories of classifiers, by model and category.",
            ["model", "category"],
            registry=own,
        )
        self.model_version = Gauge(
            "mlinfra_serving_model_version_info",
            "The loaded champion of each model (value 1), with its version and semver.",
            ["model", "version", "semver"],
            registry=own,
            multiprocess_mode="livemax",
        )
        self.logged = Counter(
            "mlinfra_serving_predictions_logged",
            "Predictions written to the prediction log.",
            registry=own,
        )
        self.dropped = Counter(
            "mlinfra_serving_predictions_dropped",
            "Predictions that could not be queued or written to the prediction log.",
            registry=own,
        )
        self.reloads = Counter(
            "mlinfra_serving_model_reloads",
            "Champion swaps (a new version loaded, or a model removed), by model.",
            ["model"],
            registry=own,
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached (prometheus_client returns the same child for the
        same labels; finding it costs more than counting)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def forget_model_version(self, model: str, version: str, semver: str) -> None:
        self.model_version.labels(model, version, semver).set(0)  # what a shared file keeps
        with warnings.catch_warnings():  # the multiprocess-mode warning does not apply
            warnings.simplefilter("ignore")
            self.model_version.remove(model, version, semver)


class MetricsMiddleware:
    """Pure ASGI middleware: counts requests and times them per matched route template."""

    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            metrics = self.metrics
            metrics.child(metrics.latency, label).observe(time.perf_counter() - started)
            metrics.child(metrics.requests, label, scope["method"], str(status["code"])).inc()
