"""The materialization run ledger: one row per run of one feature view, in SQLite.

Each run is inserted as ``running`` before Feast is called and finished as ``success`` (with the
rows it materialized and the newest event timestamp it moved) or ``failed`` (with the error).
The *watermark* of a view is the end of the contiguous span covered by successful runs starting
from the earliest one, so a failed run never advances it and a later successful run beyond a gap
does not hide the gap. Incremental runs start at the earlier of the watermark and the newest
event timestamp actually materialized, so rows that an upstream job delivers late, stamped
before the last window's end, are still picked up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Ledger", "LedgerRun"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS materialization_runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    feature_view TEXT NOT NULL,
    window_start TEXT NOT NULL,
    window_end TEXT NOT NULL,
    rows INTEGER,
    max_event_timestamp TEXT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'success', 'failed')),
    error TEXT
)
"""


@dataclass(frozen=True)
class LedgerRun:
    run_id: int
    feature_view: str
    window_start: datetime
    window_end: datetime
    rows: int | None
    max_event_timestamp: datetime | None
    started_at: datetime
    finished_at: datetime | None
    status: str
    error: str | None


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError(f"timestamp {value} must be timezone-aware (UTC expected)")
    return value.astimezone(UTC).isoformat()


class Ledger:
    """Append-only record of materialization runs under the platform home."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            with conn:
                conn.execute(_SCHEMA)
                yield conn
        finally:
            conn.close()

    def start(self, view: str, window_start: datetime, window_end: datetime) -> int:
        with self._connect() as conn:
            cur = conn.execute(
                "INSERT INTO materialization_runs "
                "(feature_view, window_start, window_end, started_at, status) "
                "VALUES (?, ?, ?, ?, 'running')",
                (view, _iso(window_start), _iso(window_end), _iso(datetime.now(UTC))),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    def succeed(self, run_id: int, rows: int, max_event_timestamp: datetime | None) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE materialization_runs SET status='success', rows=?, "
                "max_event_timestamp=?, finished_at=? WHERE run_id=?",
                (
                    rows,
                    _iso(max_event_timestamp) if max_event_timestamp else None,
                    _iso(datetime.now(UTC)),
                    run_id,
                ),
            )

    def fail(self, run_id: int, error: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE materialization_runs SET status='failed', error=?, finished_at=? "
                "WHERE run_id=?",
                (error, _iso(datetime.now(UTC)), run_id),
            )

    def runs(self, view: str | None = None) -> list[LedgerRun]:
        """All runs (of one view, if given), oldest first."""
        if not self.path.exists():
            return []
        query = "SELECT * FROM materialization_runs"
        params: tuple[str, ...] = ()
        if view is not None:
            query += " WHERE feature_view = ?"
            params = (view,)
        with self._connect() as conn:
            rows = conn.execute(query + " ORDER BY run_id", params).fetchall()
        return [
            LedgerRun(
                run_id=r[0],
                feature_view=r[1],
                window_start=datetime.fromisoformat(r[2]),
                window_end=datetime.fromisoformat(r[3]),
                rows=r[4],
                max_event_timestamp=_ts(r[5]),
                started_at=datetime.fromisoformat(r[6]),
                finished_at=_ts(r[7]),
                status=r[8],
                error=r[9],
            )
            for r in rows
        ]

    def newest_event(self, view: str) -> datetime | None:
        """The newest event timestamp any successful run of ``view`` moved to the online store."""
        return max(
            (
                r.max_event_timestamp
                for r in self.runs(view)
                if r.status == "success" and r.max_event_timestamp
            ),
            default=None,
        )

    def watermark(self, view: str) -> datetime | None:
        """End of the contiguous span of successful runs from the earliest one; None if none."""
        spans = sorted(
            (r.window_start, r.window_end) for r in self.runs(view) if r.status == "success"
        )
        if not spans:
            return None
        covered_until = spans[0][1]
        for start, end in spans[1:]:
            if start > covered_until:
                break
            covered_until = max(covered_until, end)
        return covered_until
