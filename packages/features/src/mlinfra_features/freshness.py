"""Freshness of each feature view, from the run ledger and the data it moved.

A view's *age* is ``now`` minus the newest event timestamp materialized by a successful run (when
successful runs moved no rows at all, the data is older than their earliest window start, and
that start gives a lower bound of the age); its SLA is ``sla_factor`` (default 2) times its
cadence. States, in order of precedence:

``missing``  no successful run yet;
``late``     age beyond the SLA (the data is stale, whatever the runs say);
``failed``   data within the SLA, but the latest run failed;
``fresh``    data within the SLA and the latest run succeeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from mlinfra_features.ledger import Ledger
from mlinfra_features.repo import VIEWS
from mlinfra_features.store import FeatureStoreSettings

__all__ = ["ViewFreshness", "freshness"]


@dataclass(frozen=True)
class ViewFreshness:
    feature_view: str
    state: str
    age_seconds: float | None
    sla_seconds: float
    newest_event_timestamp: datetime | None
    last_success_at: datetime | None
    last_run_status: str | None
    last_error: str | None

    @property
    def late_by_seconds(self) -> float | None:
        """How far past its SLA the view is (None unless late)."""
        if self.state != "late" or self.age_seconds is None:
            return None
        return self.age_seconds - self.sla_seconds

    def as_json(self) -> dict[str, Any]:
        payload = asdict(self)
        for key, value in payload.items():
            if isinstance(value, datetime):
                payload[key] = value.isoformat()
        return payload


def freshness(
    settings: FeatureStoreSettings,
    views: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[ViewFreshness]:
    """The freshness of ``views`` (all by default) at ``now``."""
    names = list(VIEWS) if views is None else list(views)
    unknown = [v for v in names if v not in VIEWS]
    if unknown:
        raise LookupError(f"unknown feature view(s) {unknown}; expected some of {sorted(VIEWS)}")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    ledger = Ledger(settings.ledger_path)
    result = []
    for name in names:
        runs = [r for r in ledger.runs(name) if r.status != "running"]
        successes = [r for r in runs if r.status == "success"]
        newest = max(
            (r.max_event_timestamp for r in successes if r.max_event_timestamp), default=None
        )
        sla = VIEWS[name].cadence.total_seconds() * settings.sla_factor
        if newest is not None:
            age = (now - newest).total_seconds()
        elif successes:  # runs succeeded but moved no rows: the data predates every window
            age = (now - min(r.window_start for r in successes)).total_seconds()
        else:
            age = None
        last = runs[-1] if runs else None
        if age is None:
            state = "missing"
        elif age > sla:
            state = "late"
        elif last is not None and last.status == "failed":
            state = "failed"
        else:
            state = "fresh"
        result.append(
            ViewFreshness(
                feature_view=name,
                state=state,
                age_seconds=age,
                sla_seconds=sla,
                newest_event_timestamp=newest,
                last_success_at=successes[-1].finished_at if successes else None,
                last_run_status=last.status if last else None,
                last_error=last.error if last else None,
            )
        )
    return result
