"""Freshness SLAs and waiting for fresh features.

A :class:`ViewSLA` is one feature view's expected cadence and the age after which it counts as
late (by default twice the cadence); :func:`freshness_under_slas` reports every view's state
under its SLA. :func:`wait_for_fresh_features` alerts once when a view is late, polls with
backoff, goes on by itself when materialization lands, and fails clearly when it never does:
it keeps a scheduled retrain from training on stale data and from needing a manual retrigger
when the feature job runs late.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from mlinfra_features import VIEWS, FeatureStoreSettings, ViewFreshness, freshness
from mlinfra_ops.alerts import Alert, AlertSink, LogSink, send_alert
from mlinfra_ops.incidents import Incidents

__all__ = [
    "FeaturesLateError",
    "ViewSLA",
    "WaitPolicy",
    "freshness_under_slas",
    "wait_for_fresh_features",
]

#: States whose data may be trained on (``failed``: the last run failed but data is within SLA).
USABLE = frozenset({"fresh", "failed"})


class FeaturesLateError(RuntimeError):
    """Features did not become fresh within the wait; names the views and how late they are."""

    def __init__(self, message: str, late: Sequence[ViewFreshness]) -> None:
        super().__init__(message)
        self.late = list(late)


@dataclass(frozen=True)
class WaitPolicy:
    """How long to wait for late features and how often to look again."""

    max_wait_s: float = 0.0
    initial_poll_s: float = 30.0
    max_poll_s: float = 900.0
    backoff: float = 2.0

    def __post_init__(self) -> None:
        if self.max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {self.max_wait_s}")
        if self.initial_poll_s <= 0 or self.max_poll_s < self.initial_poll_s:
            raise ValueError(
                "poll intervals must satisfy 0 < initial_poll_s <= max_poll_s, got "
                f"{self.initial_poll_s} and {self.max_poll_s}"
            )
        if self.backoff < 1:
            raise ValueError(f"backoff must be at least 1, got {self.backoff}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h"


@dataclass(frozen=True)
class ViewSLA:
    """A feature view's freshness SLA: it is refreshed every ``cadence_s`` and late once its
    newest data is older than ``late_after_s`` (default twice the cadence)."""

    view: str
    cadence_s: float
    late_after_s: float | None = None

    def __post_init__(self) -> None:
        if not self.cadence_s > 0:
            raise ValueError(
                f"feature view {self.view}: cadence {self.cadence_s!r} s is not positive; "
                "expected how often the view is refreshed, e.g. 86400 (daily)"
            )
        if self.late_after_s is not None and not self.late_after_s > 0:
            raise ValueError(
                f"feature view {self.view}: late-after threshold {self.late_after_s!r} s is not "
                "positive; expected an age in seconds, at least the cadence "
                f"({_hours(self.cadence_s)})"
            )
        if self.threshold_s < self.cadence_s:
            raise ValueError(
                f"feature view {self.view}: SLA late after {_hours(self.threshold_s)} is shorter "
                f"than its cadence {_hours(self.cadence_s)}, so the view would be late between "
                "two on-time refreshes; expected late_after >= cadence (default 2 x cadence)"
            )

    @property
    def threshold_s(self) -> float:
        """The age in seconds after which the view is late."""
        return 2.0 * self.cadence_s if self.late_after_s is None else float(self.late_after_s)


def freshness_under_slas(
    store: FeatureStoreSettings, slas: Mapping[str, ViewSLA]
) -> list[ViewFreshness]:
    """Every view's freshness with its own late-after threshold (``sla_seconds``), in the order
    of ``slas``. The state logic is the feature store's (its SLA is ``sla_factor`` x the view's
    cadence in the repository), applied with the factor that makes it this SLA."""
    report = []
    for name, sla in slas.items():
        if name not in VIEWS:
            raise LookupError(f"unknown feature view {name!r}; expected one of {sorted(VIEWS)}")
        factor = sla.threshold_s / VIEWS[name].cadence.total_seconds()
        report += freshness(replace(store, sla_factor=factor), [name])
    return report


def describe(view: ViewFreshness) -> str:
    """One line: the view, its state, age, SLA and how late it is."""
    if view.age_seconds is None:
        return f"{view.feature_view} is {view.state} (never materialized)"
    late_by = timedelta(seconds=round(view.late_by_seconds or 0))
    age = timedelta(seconds=round(view.age_seconds))
    sla = timedelta(seconds=round(view.sla_seconds))
    return f"{view.feature_view} is {view.state}: age {age}, SLA {sla}, late by {late_by}"


def wait_for_fresh_features(
    store: FeatureStoreSettings,
    views: Sequence[str],
    policy: WaitPolicy,
    *,
    job: str,
    sinks: Sequence[AlertSink] | None = None,
    incidents: Incidents | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
) -> list[ViewFreshness]:
    """Return the views' freshness once all are usable; raise :class:`FeaturesLateError` after
    ``policy.max_wait_s``. One ``features_late`` alert per wait, one ``features_fresh`` when the
    views recover after it.

    Alerts go to ``sinks`` (default: the log sink under the store's home) or, given
    ``incidents``, through that incident store under the key ``features_wait:<job>``: one alert
    per incident across runs (a rerun that finds the features still late is suppressed until
    the store's re-notify interval), and the recovery when a later check, in this run or the
    next, finds them usable."""
    if incidents is not None and sinks is not None:
        raise ValueError("pass sinks or incidents (which has its own sinks), not both")
    sinks = list(sinks) if sinks is not None else [LogSink(Path(store.home))]
    key = f"features_wait:{job}"
    started = clock()
    poll = policy.initial_poll_s
    alerted = False
    while True:
        report = freshness(store, views)
        late = [v for v in report if v.state not in USABLE]
        if not late:
            if alerted or incidents is not None:
                after = f" after {clock() - started:.0f} s" if alerted else ""
                recovery = Alert(
                    kind="features_fresh",
                    subject=",".join(views),
                    message=f"features for {job} are fresh again{after}; {job} continues",
                    severity="info",
                    facts={"job": job, "waited_s": clock() - started},
                )
                if incidents is not None:
                    incidents.resolve(key, recovery)
                else:
                    send_alert(recovery, sinks)
            return report
        waited = clock() - started
        details = "; ".join(describe(v) for v in late)
        if not alerted or incidents is not None:
            alert = Alert(
                kind="features_late",
                subject=",".join(v.feature_view for v in late),
                message=f"{job} is waiting for late features (up to {policy.max_wait_s:.0f} s):"
                f" {details}",
                facts={
                    "job": job,
                    "views": {v.feature_view: v.as_json() for v in late},
                    "max_wait_s": policy.max_wait_s,
                },
            )
            if incidents is not None:
                incidents.report(key, alert)
            else:
                send_alert(alert, sinks)
            alerted = True
        if waited >= policy.max_wait_s:
            raise FeaturesLateError(
                f"{job} gave up after waiting {waited:.0f} s for late features "
                f"(max_wait {policy.max_wait_s:.0f} s): {details}. Nothing was trained.",
                late,
            )
        pause = min(poll, policy.max_wait_s - waited)
        log(f"{job}: features late ({details}); checking again in {pause:.0f} s")
        sleep(pause)
        poll = min(poll * policy.backoff, policy.max_poll_s)
