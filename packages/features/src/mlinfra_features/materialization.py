"""Materialization: move a time window of feature views to the online store, with a ledger.

``materialize`` and ``materialize_incremental`` wrap Feast and record every run in the
:class:`~mlinfra_features.ledger.Ledger`. Caller mistakes (unknown view, inverted window, naive
timestamps) raise before anything is recorded or written. A broken feature table (missing,
empty, lacking columns) or a Feast failure is recorded as a failed run, writes nothing for that
view and never advances its watermark; the error is raised once every view has been tried.
Online writes are upserts keyed by entity with the newest event timestamp, so re-running a
window leaves the online store identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import polars as pl

from mlinfra_features.ledger import Ledger
from mlinfra_features.repo import ENTITIES, VIEWS
from mlinfra_features.store import FeatureStoreSettings, feature_store

__all__ = ["MaterializationError", "MaterializationRun", "materialize", "materialize_incremental"]


class MaterializationError(RuntimeError):
    """One or more views failed to materialize; each failure is in the ledger."""


@dataclass(frozen=True)
class MaterializationRun:
    feature_view: str
    window_start: datetime
    window_end: datetime
    rows: int
    max_event_timestamp: datetime | None
    run_id: int


def _check_views(views: Sequence[str] | None) -> list[str]:
    names = list(VIEWS) if views is None else list(views)
    unknown = [v for v in names if v not in VIEWS]
    if unknown:
        raise LookupError(f"unknown feature view(s) {unknown}; expected some of {sorted(VIEWS)}")
    if not names:
        raise ValueError("views is empty; expected at least one feature view")
    return names


def _check_time(name: str, value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{name} {value} must be timezone-aware (UTC expected)")
    return value.astimezone(UTC)


def _window_stats(
    settings: FeatureStoreSettings, view: str, start: datetime, end: datetime
) -> tuple[int, datetime | None]:
    """Validate the view's feature table; return rows moved (one per entity) and newest time."""
    spec = VIEWS[view]
    path = spec.table_path(settings.offline_dir)
    if not path.is_file():
        raise FileNotFoundError(f"feature table of view {view!r} is missing: expected {path}")
    frame = pl.scan_parquet(path)
    key = ENTITIES[spec.entity][0]
    expected = [key, "event_timestamp", *spec.features]
    schema = frame.collect_schema()
    missing = [c for c in expected if c not in schema]
    if missing:
        raise ValueError(
            f"feature table of view {view!r} ({path}) lacks column(s) {missing}; "
            f"expected columns {expected}"
        )
    stats = (
        frame.select(
            pl.len().alias("total"),
            pl.col(key)
            .filter(pl.col("event_timestamp").is_between(start, end, closed="right"))
            .n_unique()
            .alias("entities"),
            pl.col("event_timestamp")
            .filter(pl.col("event_timestamp").is_between(start, end, closed="right"))
            .max()
            .alias("newest"),
        )
        .collect()
        .row(0, named=True)
    )
    if stats["total"] == 0:
        raise ValueError(f"feature table of view {view!r} ({path}) is empty; expected rows")
    return int(stats["entities"]), stats["newest"]


def materialize(
    settings: FeatureStoreSettings,
    views: Sequence[str] | None,
    start: datetime,
    end: datetime,
) -> list[MaterializationRun]:
    """Materialize ``(start, end]`` of ``views`` (all views if None) to the online store."""
    names = _check_views(views)
    start, end = _check_time("start", start), _check_time("end", end)
    if end <= start:
        raise ValueError(f"materialization window end {end} precedes or equals its start {start}")
    return _run(settings, {name: start for name in names}, end)


def materialize_incremental(
    settings: FeatureStoreSettings,
    views: Sequence[str] | None = None,
    end: datetime | None = None,
) -> list[MaterializationRun]:
    """Materialize each view from its watermark to ``end`` (``end - ttl`` the first time).

    The start is the earlier of the ledger's watermark and the newest event timestamp already
    materialized, so late-arriving rows are covered; re-covering a span is idempotent.
    """
    names = _check_views(views)
    end = _check_time("end", end or datetime.now(UTC))
    ledger = Ledger(settings.ledger_path)
    starts = {}
    for name in names:
        # Start at the watermark, or earlier at the newest event already materialized: rows
        # that arrive late (stamped before the last window's end) must not be skipped.
        # When successful runs moved no rows yet, start again where the first one started.
        watermark, newest = ledger.watermark(name), ledger.newest_event(name)
        if watermark is None:
            starts[name] = end - VIEWS[name].ttl
        elif newest is None:
            starts[name] = min(r.window_start for r in ledger.runs(name) if r.status == "success")
        else:
            starts[name] = min(watermark, newest)
        if starts[name] >= end:
            raise ValueError(
                f"materialization window end {end} precedes or equals the watermark "
                f"{starts[name]} of view {name!r}"
            )
    return _run(settings, starts, end)


def _run(
    settings: FeatureStoreSettings, starts: dict[str, datetime], end: datetime
) -> list[MaterializationRun]:
    ledger = Ledger(settings.ledger_path)
    store = feature_store(settings)
    done: list[MaterializationRun] = []
    failures: list[str] = []
    for view, start in starts.items():
        run_id = ledger.start(view, start, end)
        try:
            rows, newest = _window_stats(settings, view, start, end)
            store.materialize(start_date=start, end_date=end, feature_views=[view])
        except Exception as exc:  # recorded in the ledger, raised below
            ledger.fail(run_id, f"{type(exc).__name__}: {exc}")
            failures.append(f"{view}: {type(exc).__name__}: {exc}")
            continue
        ledger.succeed(run_id, rows, newest)
        done.append(MaterializationRun(view, start, end, rows, newest, run_id))
    if failures:
        raise MaterializationError(
            f"{len(failures)} of {len(starts)} feature view(s) failed to materialize "
            f"(recorded in {settings.ledger_path}): " + "; ".join(failures)
        )
    return done
