"""prefect.yaml against a real Prefect: a local server on 127.0.0.1 (its own SQLite database), the
deployments registered by `prefect deploy`, and one of them run by a process worker to the end.

Everything goes through the CLI and the HTTP API in subprocesses, as an operator would do it; the
server's scheduler and late-run services are off, so the only flow runs are the test's: the one it
creates, and the retrain the deployment trigger starts when the materialize flow's code announces
a recovered view.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlinfra_ops import read_alert_log

ROOT = Path(__file__).resolve().parent.parent
PREFECT = [sys.executable, "-m", "prefect"]
DEPLOYMENTS: list[dict[str, Any]] = yaml.safe_load((ROOT / "prefect.yaml").read_text())[
    "deployments"
]
POOL = "mlinfra-local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_env(home: Path, api_url: str) -> dict[str, str]:
    """This process's environment without its Prefect settings, pointed at the test server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": api_url,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
        "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PREFECT_WORKER_PREFETCH_SECONDS": "5",
        "MLINFRA_HOME": str(home / "mlinfra"),
    }
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float) -> str:
    done = subprocess.run(
        [*PREFECT, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{output}"
    return output


@pytest.fixture
def prefect_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`prefect server start` on a free port of 127.0.0.1, stopped (with its children) after."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(tmp_path, api_url)
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the uvicorn child goes with it
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None:
                pytest.fail(f"prefect server exited {server.returncode}:\n{_tail(tmp_path)}")
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prefect server not healthy after 120 s:\n{_tail(tmp_path)}")
            time.sleep(0.5)
        yield api_url, env
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        log.close()


def _tail(tmp_path: Path) -> str:
    return (tmp_path / "server.log").read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_deploy_from_prefect_yaml_and_run_through_a_worker(
    prefect_server: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    api_url, env = prefect_server
    run_cli(["work-pool", "create", POOL, "--type", "process"], env, timeout=120)

    run_cli(["--no-prompt", "deploy", "--all"], env, timeout=300)

    with httpx.Client(base_url=api_url, timeout=30) as api:
        registered = api.post("/deployments/filter", json={"limit": 200}).raise_for_status().json()
        assert sorted(d["name"] for d in registered) == sorted(d["name"] for d in DEPLOYMENTS)
        by_name = {d["name"]: d for d in registered}
        for declared in DEPLOYMENTS:
            deployment = by_name[declared["name"]]
            assert deployment["work_pool_name"] == POOL
            assert deployment["parameters"] == declared["parameters"]
            assert deployment["entrypoint"] == declared["entrypoint"]
            crons = sorted(s["schedule"]["cron"] for s in deployment["schedules"])
            assert crons == sorted(s["cron"] for s in declared["schedules"])

        # The hourly monitor on an empty platform home: seconds of work, and real alerts.
        home = tmp_path / "mlinfra"
        monitor = by_name["monitor-hourly"]
        run = (
            api.post(
                f"/deployments/{monitor['id']}/create_flow_run",
                json={"parameters": {"overrides": [f"paths.home={home}"]}},
            )
            .raise_for_status()
            .json()
        )

        # One poll picks the run up; --run-once waits for it to finish before the worker exits.
        worker = run_cli(
            ["worker", "start", "--pool", POOL, "--type", "process", "--run-once", "--limit", "1"],
            env,
            timeout=300,
        )
        state = api.get(f"/flow_runs/{run['id']}").raise_for_status().json()["state"]
    assert state["type"] == "COMPLETED", f"{state}\n{worker[-3000:]}"
    # Every feature view of the empty home is missing: one alert each, in the home's history.
    kinds = {a["kind"] for a in read_alert_log(home)}
    assert kinds == {"features_missing"}, kinds

    # A late materialization lands: the materialize flow's announcement (its own code, in a
    # process of its own) makes the server's trigger start the weekly anomaly retrain.
    retrain = by_name["retrain-anomaly-detector-weekly"]
    announce = (
        "from flows.materialize import announce_recovered_views as a; "
        "print(a({'account_activity_daily': 'late'}, {'account_activity_daily': 'fresh'}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", announce],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0 and "account_activity_daily" in done.stdout, done.stderr[-3000:]
    deadline = time.monotonic() + 90
    with httpx.Client(base_url=api_url, timeout=30) as api:
        while True:
            triggered = (
                api.post(
                    "/flow_runs/filter",
                    json={"flow_runs": {"deployment_id": {"any_": [retrain["id"]]}}},
                )
                .raise_for_status()
                .json()
            )
            if triggered or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert len(triggered) == 1, "the recovered view starts exactly one retrain"
    assert triggered[0]["parameters"] == {"overrides": ["model=anomaly_detector"]}
