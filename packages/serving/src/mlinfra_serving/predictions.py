"""The prediction log: every prediction, appended off the request path, as Parquet partitions.

Layout (one file per written batch and partition; Hive-style, so ``pl.scan_parquet`` and the
ops jobs read ``<home>/predictions/<model>/**/*.parquet`` with a ``date`` column)::

    <home>/predictions/<model>/date=YYYY-MM-DD/part-<UTC time>-<random>.parquet

Columns: ``request_id``, ``model``, ``version``, ``semver``, ``feature_service``,
``entity_id``, ``day`` (the anomaly detector's account-day; null for churn), ``score``,
``timestamp`` (UTC, when it was scored) and ``feature_hash`` (BLAKE2b of the feature values the
model saw, in contract order, to join with outcomes without storing the values twice).

A request only appends a tuple to a queue. A writer thread takes up to ``batch_size``
predictions or what arrived within ``flush_interval_s``, and writes each partition's rows to a
temporary name in the partition folder and renames it (readers never see half a file).
:meth:`PredictionLog.close` drains the queue and writes the rest before the service exits.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from mlinfra_serving.settings import PredictionLogSettings

__all__ = ["Prediction", "PredictionLog", "read_prediction_log"]

logger = logging.getLogger(__name__)

SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "request_id": pl.String,
    "model": pl.String,
    "version": pl.String,
    "semver": pl.String,
    "feature_service": pl.String,
    "entity_id": pl.Int64,
    "day": pl.Date,
    "score": pl.Float64,
    "timestamp": pl.Datetime("us", "UTC"),
    "feature_hash": pl.String,
}


@dataclass(frozen=True)
class Prediction:
    request_id: str
    model: str
    version: str
    semver: str
    feature_service: str
    entity_id: int
    day: date | None
    score: float
    timestamp: datetime
    features: tuple[Any, ...]


def feature_hash(values: Sequence[Any]) -> str:
    return hashlib.blake2b(repr(tuple(values)).encode(), digest_size=16).hexdigest()


class PredictionLog:
    """Queue + background writer; see the module docstring."""

    def __init__(
        self,
        root: Path,
        settings: PredictionLogSettings,
        *,
        on_written: Callable[[int], None] | None = None,
        on_dropped: Callable[[int], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.settings = settings
        self._queue: queue.Queue[list[Prediction] | None] = queue.Queue()
        self._pending = 0  # predictions queued, not yet taken by the writer
        self._pending_lock = threading.Lock()
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, predictions: list[Prediction]) -> None:
        """Queue predictions for writing (never blocks; drops and counts beyond ``max_queue``)."""
        if not predictions:
            return
        with self._pending_lock:
            if self._pending + len(predictions) > self.settings.max_queue:
                self.dropped += len(predictions)
                if self._on_dropped is not None:
                    self._on_dropped(len(predictions))
                return
            self._pending += len(predictions)
        self._queue.put(predictions)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, then stop the writer."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        batch: list[Prediction] = []
        deadline: float | None = None
        stopping = False
        while not stopping:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = []
            if item is None:
                stopping = True
            elif item:
                with self._pending_lock:
                    self._pending -= len(item)
                batch.extend(item)
                if deadline is None:
                    deadline = time.monotonic() + self.settings.flush_interval_s
            due = deadline is not None and time.monotonic() >= deadline
            if batch and (stopping or due or len(batch) >= self.settings.batch_size):
                self._write(batch)
                batch, deadline = [], None

    def _write(self, batch: list[Prediction]) -> None:
        try:
            groups: dict[tuple[str, date], list[Prediction]] = defaultdict(list)
            for p in batch:
                groups[(p.model, p.timestamp.astimezone(UTC).date())].append(p)
            for (model, day), rows in groups.items():
                write_partition(self.root, model, day, rows)
            self.written += len(batch)
            if self._on_written is not None:
                self._on_written(len(batch))
        except Exception:  # a full disk must not kill the writer; count and go on
            logger.exception("writing %d predictions failed", len(batch))
            self.dropped += len(batch)
            if self._on_dropped is not None:
                self._on_dropped(len(batch))


def write_partition(root: Path, model: str, day: date, rows: list[Prediction]) -> Path:
    frame = pl.DataFrame(
        {
            "request_id": [p.request_id for p in rows],
            "model": [p.model for p in rows],
            "version": [p.version for p in rows],
            "semver": [p.semver for p in rows],
            "feature_service": [p.feature_service for p in rows],
            "entity_id": [p.entity_id for p in rows],
            "day": [p.day for p in rows],
            "score": [p.score for p in rows],
            "timestamp": [p.timestamp for p in rows],
            "feature_hash": [feature_hash(p.features) for p in rows],
        },
        schema=SCHEMA,
    )
    folder = root / model / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"part-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = folder / f".{name}.tmp"
    frame.write_parquet(tmp)
    tmp.replace(folder / name)
    return folder / name


def read_prediction_log(root: Path, model: str) -> pl.DataFrame:
    """Every logged prediction of ``model`` (empty, with the log's columns, when none)."""
    folder = Path(root) / model
    files = sorted(folder.glob("date=*/*.parquet"))
    if not files:
        return pl.DataFrame(schema=SCHEMA)
    return pl.concat([pl.read_parquet(f, hive_partitioning=False) for f in files])
