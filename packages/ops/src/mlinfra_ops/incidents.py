"""One alert per incident: deduplicated across checks, re-notified, and closed with a recovery.

A watcher (the monitor flow, say) calls :meth:`Incidents.report` on every check for every
problem it sees, keyed by what is wrong (``feature_view:customer_logins``). The first report
opens an incident and notifies the sinks; repeats are suppressed (and counted) until
``renotify_after_s`` has passed since the last notification; :meth:`Incidents.resolve` closes
an open incident with a recovery message. State lives in ``<home>/alerts/incidents.json``,
rewritten atomically (temporary file, then rename), so repeated runs of a scheduled monitor
share it; every notification also goes through the sinks' own history (the log sink's JSONL).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mlinfra_ops._atomic import write_text_atomic
from mlinfra_ops.alerts import Alert, AlertSink, send_alert

__all__ = ["IncidentPolicy", "Incidents"]

Outcome = Literal["opened", "renotified", "suppressed"]


@dataclass(frozen=True)
class IncidentPolicy:
    """When an open incident is announced again."""

    renotify_after_s: float = 6 * 3600

    def __post_init__(self) -> None:
        if self.renotify_after_s <= 0:
            raise ValueError(
                f"IncidentPolicy.renotify_after_s must be > 0, got {self.renotify_after_s}"
            )


class Incidents:
    """Open incidents under a platform home, and the sinks that hear about them."""

    def __init__(
        self,
        home: Path,
        sinks: Sequence[AlertSink],
        policy: IncidentPolicy | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.path = Path(home) / "alerts" / "incidents.json"
        self.sinks = list(sinks)
        self.policy = policy or IncidentPolicy()
        self.clock = clock
        self.delivery_errors: dict[str, str] = {}  # the latest error per sink
        self.delivery_failures: Counter[str] = Counter()  # failed deliveries per sink

    def open_incidents(self) -> dict[str, dict[str, Any]]:
        if not self.path.exists():
            return {}
        try:
            state: dict[str, dict[str, Any]] = json.loads(self.path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"incident state {self.path} is not valid JSON ({exc}); expected the file this "
                "module writes (move it aside to start afresh)"
            ) from exc
        return state

    def _save(self, state: dict[str, dict[str, Any]]) -> None:
        write_text_atomic(self.path, json.dumps(state, indent=2, sort_keys=True))

    def _notify(self, alert: Alert) -> None:
        for sink, error in send_alert(alert, self.sinks).items():
            if error is not None:
                self.delivery_errors[sink] = error
                self.delivery_failures[sink] += 1

    def report(self, key: str, alert: Alert) -> Outcome:
        """A problem seen now: notify unless its incident was notified recently."""
        state = self.open_incidents()
        now = self.clock()
        incident = state.get(key)
        if incident is not None:
            last = datetime.fromisoformat(incident["last_notified_at"])
            incident["checks"] += 1
            incident["last_seen_at"] = now.isoformat()
            incident["last_message"] = alert.message
            if (now - last).total_seconds() < self.policy.renotify_after_s:
                incident["suppressed"] += 1
                self._save(state)
                return "suppressed"
            opened = datetime.fromisoformat(incident["opened_at"])
            alert = Alert(
                kind=alert.kind,
                subject=alert.subject,
                message=f"still open after {now - opened}: {alert.message}",
                severity=alert.severity,
                facts={**alert.facts, "incident": key, "opened_at": incident["opened_at"]},
                at=alert.at,
            )
            self._notify(alert)
            incident["last_notified_at"] = now.isoformat()
            incident["notifications"] += 1
            self._save(state)
            return "renotified"
        self._notify(alert)
        state[key] = {
            "kind": alert.kind,
            "subject": alert.subject,
            "opened_at": now.isoformat(),
            "last_notified_at": now.isoformat(),
            "last_seen_at": now.isoformat(),
            "last_message": alert.message,
            "checks": 1,
            "notifications": 1,
            "suppressed": 0,
        }
        self._save(state)
        return "opened"

    def resolve(self, key: str, alert: Alert) -> bool:
        """The problem is gone: send ``alert`` as the recovery if an incident was open."""
        state = self.open_incidents()
        incident = state.pop(key, None)
        if incident is None:
            return False
        opened = datetime.fromisoformat(incident["opened_at"])
        self._notify(
            Alert(
                kind=alert.kind,
                subject=alert.subject,
                message=f"{alert.message} (open for {self.clock() - opened})",
                severity="info",
                facts={**alert.facts, "incident": key, "opened_at": incident["opened_at"]},
                at=alert.at,
            )
        )
        self._save(state)
        return True
