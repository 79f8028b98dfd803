"""Alerts: what went wrong, sent to configured sinks.

An :class:`Alert` is a plain record (kind, subject, message, facts). Sinks deliver it; the log
sink (the default) writes it to the Python logger and appends it as one JSON line to the alert
log under the platform home, which is also the alert history. A failing sink never stops the
other sinks or the job that raised the alert: its error is logged and returned.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

__all__ = ["Alert", "AlertSink", "LogSink", "read_alert_log", "send_alert"]

logger = logging.getLogger("mlinfra.alerts")


@dataclass(frozen=True)
class Alert:
    kind: str  # e.g. "features_late", "features_fresh"
    subject: str  # e.g. the feature view
    message: str
    severity: str = "warning"
    facts: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def as_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload["at"] = self.at.isoformat()
        payload["facts"] = dict(self.facts)
        return payload


class AlertSink(Protocol):
    def send(self, alert: Alert) -> None: ...


@dataclass(frozen=True)
class LogSink:
    """Log the alert and append it to ``<home>/alerts/alerts.jsonl``."""

    home: Path

    def send(self, alert: Alert) -> None:
        log = logger.error if alert.severity in ("error", "critical") else logger.warning
        log("[%s] %s: %s", alert.kind, alert.subject, alert.message)
        path = Path(self.home) / "alerts" / "alerts.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(alert.as_json(), default=str) + "\n"
        # a single O_APPEND write: concurrent writers never interleave within a line
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def read_alert_log(home: Path) -> list[dict[str, Any]]:
    """Every alert recorded under ``home``, oldest first."""
    path = Path(home) / "alerts" / "alerts.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def send_alert(alert: Alert, sinks: Sequence[AlertSink]) -> dict[str, str | None]:
    """Send to every sink; return ``{sink: error or None}``, a sink named by its class (with
    ``#<position>`` when two share one). Never raises for a sink's failure."""
    results: dict[str, str | None] = {}
    for index, sink in enumerate(sinks):
        name = type(sink).__name__
        if name in results:
            name = f"{name}#{index}"
        try:
            sink.send(alert)
            results[name] = None
        except Exception as exc:  # a broken sink must not stop the others or the job
            logger.exception("alert sink %s failed for %s/%s", name, alert.kind, alert.subject)
            results[name] = f"{type(exc).__name__}: {exc}"
    return results
