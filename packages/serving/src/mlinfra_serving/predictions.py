"""The prediction log: every prediction, appended off the request path, as Parquet partitions.

Layout (one file per written batch and partition; Hive-style, so ``pl.scan_parquet`` and the
ops jobs read ``<home>/predictions/<model>/**/*.parquet`` with a ``date`` column)::

    <home>/predictions/<model>/date=YYYY-MM-DD/part-<UTC time>-<random>.parquet

Columns: ``request_id``, ``model``, ``version``, ``semver``, ``feature_service``,
``entity_id``, ``day`` (the anomaly detector's account-day; null for churn), ``score``,
``timestamp`` (UTC, when it was scored) and ``feature_hash`` (BLAKE2b of the feature values the
model saw, in contract order, to join with outcomes without storing the values twice). The event
classifier's files add ``label`` (the predicted category; ``score`` is its probability, and
``entity_id`` the event id when the request gave one).

A request only appends to a buffer. A writer thread takes what is buffered
every ``flush_interval_s`` (sooner once ``batch_size`` wait) and writes each partition's rows to a
temporary name in the partition folder and renames it (readers never see half a file).
:meth:`PredictionLog.close` drains the buffer and writes the rest before the service exits.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections import defaultdict, deque
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
#: The event classifier's predicted category (only in the files of models that predict one).
LABEL_COLUMN = "label"


@dataclass(frozen=True)
class Prediction:
    request_id: str
    model: str
    version: str
    semver: str
    feature_service: str
    entity_id: int | None
    day: date | None
    score: float
    timestamp: datetime
    features: tuple[Any, ...]
    label: str | None = None


def feature_hash(values: Sequence[Any]) -> str:
    return hashlib.blake2b(repr(tuple(values)).encode(), digest_size=16).hexdigest()


class PredictionLog:
    """A buffer + background writer; see the module docstring.

    Appending is a ``deque.append`` under a short lock and wakes nobody: the writer sleeps until
    ``flush_interval_s`` has passed or ``batch_size`` predictions are waiting, then takes all of
    them. (A queue whose consumer wakes on every item costs a GIL hand-off per request.)
    """

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
        self._buffer: deque[Prediction] = deque()
        self._lock = threading.Lock()
        self._full = threading.Event()
        self._stop = threading.Event()
        self._on_written = on_written
        self._on_dropped = on_dropped
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def append(self, predictions: list[Prediction]) -> None:
        """Buffer predictions for writing (never blocks; drops and counts beyond ``max_queue``)."""
        if not predictions or not self.settings.enabled:
            return
        with self._lock:
            if len(self._buffer) + len(predictions) > self.settings.max_queue:
                self.dropped += len(predictions)
                overflow = True
            else:
                self._buffer.extend(predictions)
                overflow = False
                if len(self._buffer) >= self.settings.batch_size:
                    self._full.set()
        if overflow and self._on_dropped is not None:
            self._on_dropped(len(predictions))

    def close(self, timeout: float = 60.0) -> None:
        """Write everything buffered, then stop the writer."""
        if self._thread is None:
            return
        self._stop.set()
        self._full.set()
        self._thread.join(timeout)
        self._thread = None

    def _take(self) -> list[Prediction]:
        with self._lock:
            batch = list(self._buffer)
            self._buffer.clear()
            self._full.clear()
        return batch

    def _run(self) -> None:
        while not self._stop.is_set():
            self._full.wait(self.settings.flush_interval_s)
            batch = self._take()
            if batch:
                self._write(batch)
        batch = self._take()
        if batch:
            self._write(batch)

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
    if any(p.label is not None for p in rows):
        frame = frame.with_columns(
            pl.Series(LABEL_COLUMN, [p.label for p in rows], dtype=pl.String)
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
    frames = [pl.read_parquet(f, hive_partitioning=False) for f in files]
    return pl.concat(frames, how="diagonal_relaxed")
