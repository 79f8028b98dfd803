"""Monitor flow: the platform watching itself (hourly deployment).

    uv run python -m flows.monitor [hydra overrides, e.g. alerts=team]

Checks every feature view's freshness against its SLA (from the materialization ledger) and
the platform's own flow runs (failed, crashed or late, from the Prefect API), and reports each
problem as an incident through the configured alert sinks: one alert per incident, re-notified
after ``alerts.incidents.renotify_after_s``, and a recovery message once it is gone.

A view's SLA is its cadence in the feature repository and ``features.store.sla_factor`` x that
cadence as the late-after threshold, unless ``feature_views.<view>`` (``cadence_hours``,
``late_after_hours``) says otherwise. Bad config (an SLA shorter than the cadence, a
non-positive cadence or threshold, an unknown view, sink type or field) is refused when the
config is loaded, naming the view or sink and the values. A sink that fails at delivery is
retried, logged and counted; the other sinks and the monitor go on.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task

from flows.config import build, load
from mlinfra_features import FEATURE_SERVICES, VIEWS, FeatureStoreSettings
from mlinfra_ops import (
    Alert,
    IncidentPolicy,
    Incidents,
    ViewSLA,
    build_sinks,
    freshness_under_slas,
)
from mlinfra_ops.freshness import USABLE, describe

PROBLEM_STATES = ("FAILED", "CRASHED")
SLA_FIELDS = ("cadence_hours", "late_after_hours")


def feature_slas(cfg: dict[str, Any]) -> dict[str, ViewSLA]:
    """Every feature view's SLA (see the module docstring); a bad one raises ValueError naming
    the view, the values and the config keys they came from."""
    configured = cfg.get("feature_views") or {}
    unknown = sorted(set(configured) - set(VIEWS))
    if unknown:
        raise ValueError(
            f"feature_views names unknown feature view(s) {unknown}; expected some of "
            f"{sorted(VIEWS)}"
        )
    factor = cfg["features"]["store"]["sla_factor"]
    slas = {}
    for name, spec in VIEWS.items():
        entry = {k: v for k, v in (configured.get(name) or {}).items() if v is not None}
        extra = sorted(set(entry) - set(SLA_FIELDS))
        if extra:
            raise ValueError(
                f"feature_views.{name} has unknown field(s) {extra}; expected some of "
                f"{list(SLA_FIELDS)}"
            )
        try:
            hours = {k: float(v) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise ValueError(
                f"feature_views.{name} = {entry}: expected numbers of hours for {list(SLA_FIELDS)}"
            ) from None
        cadence_s = hours["cadence_hours"] * 3600 if "cadence_hours" in hours else None
        cadence_s = spec.cadence.total_seconds() if cadence_s is None else cadence_s
        if "late_after_hours" in hours:
            late_after_s = hours["late_after_hours"] * 3600
            source = f"feature_views.{name}.late_after_hours={entry['late_after_hours']}"
        else:
            late_after_s = float(factor) * cadence_s
            source = f"features.store.sla_factor={factor} x the cadence"
        try:
            slas[name] = ViewSLA(name, cadence_s, late_after_s)
        except ValueError as exc:
            raise ValueError(f"{exc} (late-after threshold from {source})") from None
    return slas


def check_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Refuse a bad monitor config before any check runs: SLAs, sinks, incident policy and the
    flow-run window. Returns ``cfg``."""
    feature_slas(cfg)
    incidents_for(cfg)
    lookback = cfg["flow_runs"]["lookback_hours"]
    if not lookback > 0:
        raise ValueError(f"flow_runs.lookback_hours={lookback}; expected a positive number")
    return cfg


def load_config(overrides: list[str] | None = None) -> dict[str, Any]:
    """The monitor's config, composed and checked (:func:`check_config`)."""
    return check_config(load("monitor", overrides))


def incidents_for(cfg: dict[str, Any]) -> Incidents:
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    alerts = cfg["alerts"]
    return Incidents(
        store.home,
        build_sinks(alerts["sinks"], store.home),
        IncidentPolicy(**alerts["incidents"]),
    )


def downstream_jobs(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """Feature view -> the retrain jobs whose configured feature services read it."""

    def services(node: Any) -> set[str]:
        if isinstance(node, str):
            return {node} if node in FEATURE_SERVICES else set()
        if isinstance(node, dict):
            return set().union(*(services(v) for v in node.values())) if node else set()
        if isinstance(node, list):
            return set().union(*(services(v) for v in node)) if node else set()
        return set()

    jobs: dict[str, set[str]] = defaultdict(set)
    for model in cfg["model"].get("selected", []):
        for service in services(cfg["model"].get(model, {})):
            for view in FEATURE_SERVICES[service]:
                jobs[view].add(f"retrain {model}")
    return {view: sorted(names) for view, names in jobs.items()}


def delivery_report(incidents: Incidents) -> dict[str, int]:
    """Log each sink that failed (after its retries) and return the failures per sink."""
    logger = get_run_logger()
    for sink, error in incidents.delivery_errors.items():
        logger.warning(
            "alert sink %s failed %d time(s): %s", sink, incidents.delivery_failures[sink], error
        )
    return dict(incidents.delivery_failures)


@task
def check_feature_views(cfg: dict[str, Any]) -> dict[str, Any]:
    """Report late, failed or missing views; resolve the ones that are fresh again."""
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    incidents = incidents_for(cfg)
    downstream = downstream_jobs(cfg)
    outcomes: dict[str, str] = {}
    for view in freshness_under_slas(store, feature_slas(cfg)):
        key = f"feature_view:{view.feature_view}"
        if view.state == "fresh":
            resolved = incidents.resolve(
                key,
                Alert(
                    kind="features_fresh",
                    subject=view.feature_view,
                    message=f"{view.feature_view} is fresh again",
                    facts={"newest_event_timestamp": view.newest_event_timestamp},
                ),
            )
            outcomes[view.feature_view] = "resolved" if resolved else "fresh"
            continue
        severity = "warning" if view.state in USABLE else "error"
        outcomes[view.feature_view] = incidents.report(
            key,
            Alert(
                kind=f"features_{view.state}",
                subject=view.feature_view,
                message=describe(view),
                severity=severity,
                facts={
                    "view": view.feature_view,
                    "state": view.state,
                    "newest_event_timestamp": view.newest_event_timestamp,
                    "age_seconds": view.age_seconds,
                    "sla_seconds": view.sla_seconds,
                    "late_by_seconds": view.late_by_seconds,
                    "last_successful_run_at": view.last_success_at,
                    "last_run_status": view.last_run_status,
                    "last_error": view.last_error,
                    "downstream_jobs": downstream.get(view.feature_view, []),
                },
            ),
        )
    return {"outcomes": outcomes, "delivery_failures": delivery_report(incidents)}


@task
def check_flow_runs(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per flow: report when its latest run in the window failed or crashed, or when a run is
    late (scheduled and not started); resolve when its latest run completed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterExpectedStartTime,
    )
    from prefect.client.schemas.sorting import FlowRunSort

    incidents = incidents_for(cfg)
    since = datetime.now(UTC) - timedelta(hours=cfg["flow_runs"]["lookback_hours"])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                expected_start_time=FlowRunFilterExpectedStartTime.model_validate({"after_": since})
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=200,
        )
        names = {run.flow_id: client.read_flow(run.flow_id).name for run in runs}
    latest: dict[str, Any] = {}
    late: dict[str, list[Any]] = defaultdict(list)
    for run in runs:
        name = names[run.flow_id]
        if run.state is None:
            continue
        if run.state.name == "Late":
            late[name].append(run)
        elif run.state.is_final() and name not in latest:
            latest[name] = run
    outcomes: dict[str, str] = {}
    for name, run in sorted(latest.items()):
        key = f"flow:{name}"
        state = run.state
        if state.type.value in PROBLEM_STATES:
            outcomes[key] = incidents.report(
                key,
                Alert(
                    kind=f"flow_{state.type.value.lower()}",
                    subject=name,
                    message=f"the latest {name} run ({run.name}) is {state.name}: "
                    f"{state.message or 'no message'}",
                    severity="error",
                    facts={
                        "flow": name,
                        "flow_run": str(run.id),
                        "flow_run_name": run.name,
                        "deployment_id": str(run.deployment_id) if run.deployment_id else None,
                        "started": run.start_time,
                        "state": state.name,
                    },
                ),
            )
        elif state.is_completed():
            resolved = incidents.resolve(
                key,
                Alert(
                    kind="flow_recovered",
                    subject=name,
                    message=f"{name} completed again ({run.name})",
                ),
            )
            outcomes[key] = "resolved" if resolved else "ok"
    for name, runs_late in sorted(late.items()):
        key = f"flow_late:{name}"
        oldest = min(r.expected_start_time for r in runs_late)
        outcomes[key] = incidents.report(
            key,
            Alert(
                kind="flow_late",
                subject=name,
                message=f"{len(runs_late)} scheduled {name} run(s) have not started; the oldest "
                f"was due at {oldest}",
                facts={"flow": name, "runs": [str(r.id) for r in runs_late]},
            ),
        )
    for name in sorted({n for n in names.values()} - set(late)):
        incidents.resolve(
            f"flow_late:{name}",
            Alert(kind="flow_started", subject=name, message=f"{name} runs start on time again"),
        )
    return {"outcomes": outcomes, "delivery_failures": delivery_report(incidents)}


@flow(name="monitor", log_prints=True)
def monitor(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Check feature freshness and the platform's flow runs; alert per incident. Returns the
    outcome per view and per flow check, and the failed deliveries per sink."""
    cfg = check_config(cfg if cfg is not None else load("monitor", overrides))
    views = check_feature_views(cfg)
    runs = check_flow_runs(cfg)
    outcomes = {**views["outcomes"], **runs["outcomes"]}
    problems = {k: v for k, v in outcomes.items() if v in {"opened", "renotified"}}
    failures = Counter(views["delivery_failures"]) + Counter(runs["delivery_failures"])
    print(
        f"monitor: {len(views['outcomes'])} views, {len(runs['outcomes'])} flow checks; "
        f"new alerts: {problems or 'none'}; failed deliveries: {dict(failures) or 'none'}"
    )
    return {
        "feature_views": views["outcomes"],
        "flow_runs": runs["outcomes"],
        "delivery_failures": dict(failures),
    }


def main(argv: list[str] | None = None) -> None:
    monitor(load_config(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
