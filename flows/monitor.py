"""Monitor flow: the platform watching itself (hourly deployment).

    uv run python -m flows.monitor [hydra overrides, e.g. alerts=team]

Checks every feature view's freshness against its SLA (from the materialization ledger) and
the platform's own flow runs (failed, crashed or late, from the Prefect API), and reports each
problem as an incident through the configured alert sinks: one alert per incident, re-notified
after ``alerts.incidents.renotify_after_s``, and a recovery message once it is gone.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect import flow, get_run_logger, task

from flows.config import build, load
from mlinfra_features import FEATURE_SERVICES, FeatureStoreSettings, freshness
from mlinfra_ops import Alert, IncidentPolicy, Incidents, build_sinks
from mlinfra_ops.freshness import USABLE, describe

PROBLEM_STATES = ("FAILED", "CRASHED")


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


@task
def check_feature_views(cfg: dict[str, Any]) -> dict[str, str]:
    """Report late, failed or missing views; resolve the ones that are fresh again."""
    logger = get_run_logger()
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    incidents = incidents_for(cfg)
    downstream = downstream_jobs(cfg)
    outcomes: dict[str, str] = {}
    for view in freshness(store):
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
    for sink, error in incidents.delivery_errors.items():
        logger.warning("alert sink %s failed: %s", sink, error)
    return outcomes


@task
def check_flow_runs(cfg: dict[str, Any]) -> dict[str, str]:
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
    return outcomes


@flow(name="monitor", log_prints=True)
def monitor(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, dict[str, str]]:
    """Check feature freshness and the platform's flow runs; alert per incident."""
    cfg = cfg if cfg is not None else load("monitor", overrides)
    views = check_feature_views(cfg)
    runs = check_flow_runs(cfg)
    problems = {k: v for k, v in {**views, **runs}.items() if v in {"opened", "renotified"}}
    print(f"monitor: {len(views)} views, {len(runs)} flow checks; new alerts: {problems or 'none'}")
    return {"feature_views": views, "flow_runs": runs}


def main(argv: list[str] | None = None) -> None:
    monitor(load("monitor", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
