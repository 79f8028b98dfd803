"""Alert sinks against real HTTP servers on 127.0.0.1: payloads, retries, failures, config."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from mlinfra_ops import (
    Alert,
    EmailSink,
    JsonWebhookSink,
    LogSink,
    RetryPolicy,
    SinkError,
    SlackWebhookSink,
    TicketSink,
    build_sinks,
    read_alert_log,
    send_alert,
)

FAST = RetryPolicy(attempts=3, initial_delay_s=0.01, backoff=2.0, timeout_s=2.0)
ALERT = Alert(
    kind="features_late",
    subject="customer_logins",
    message="customer_logins is late: age 3 days, SLA 2 days, late by 1 day",
    facts={"view": "customer_logins", "late_by_seconds": 86400.0, "downstream": ["churn"]},
)


@dataclass
class Recorder:
    """What an HTTP endpoint received; ``fail_first`` requests are answered with ``status``."""

    fail_first: int = 0
    status: int = 500
    requests: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def server() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorder.requests.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
            )
            failing = len(recorder.requests) <= recorder.fail_first
            self.send_response(recorder.status if failing else 201)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"key": "MLINFRA-1"}' if not failing else b'{"error": "boom"}')

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", recorder
    finally:
        httpd.shutdown()
        httpd.server_close()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/hook"  # nothing listens there any more


def test_slack_webhook_receives_text_and_facts(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    SlackWebhookSink(url=f"{url}/services/T0/B0/x", retry=FAST).send(ALERT)
    (request,) = recorder.requests
    assert request["path"] == "/services/T0/B0/x"
    payload = request["json"]
    assert "*features_late*" in payload["text"] and "customer_logins" in payload["text"]
    fields = payload["blocks"][1]["fields"]
    assert any("late_by_seconds" in f["text"] and "86400.0" in f["text"] for f in fields)


def test_json_webhook_posts_the_alert_with_secret_headers(
    server: tuple[str, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, recorder = server
    monkeypatch.setenv("MLINFRA_TEST_WEBHOOK_AUTH", "Bearer s3cret")
    JsonWebhookSink(
        url=f"{url}/alerts", header_envs={"Authorization": "MLINFRA_TEST_WEBHOOK_AUTH"}, retry=FAST
    ).send(ALERT)
    (request,) = recorder.requests
    assert request["headers"]["Authorization"] == "Bearer s3cret"
    assert request["json"]["kind"] == "features_late"
    assert request["json"]["facts"]["downstream"] == ["churn"]


def test_ticket_sink_opens_a_jira_issue_with_the_facts(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    sink = TicketSink(base_url=url, project_key="MLINFRA", retry=FAST)
    sink.send(ALERT)
    sink.send(
        Alert(kind="features_fresh", subject="customer_logins", message="ok", severity="info")
    )
    (request,) = recorder.requests  # the recovery (info) opened no ticket
    assert request["path"] == "/rest/api/2/issue"
    fields = request["json"]["fields"]
    assert fields["project"] == {"key": "MLINFRA"}
    assert fields["summary"] == "[warning] features_late: customer_logins"
    assert '"late_by_seconds": 86400.0' in fields["description"]
    assert fields["labels"] == ["mlinfra", "features_late"]


def test_a_500_is_retried_with_backoff_until_it_succeeds(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.fail_first = 2
    JsonWebhookSink(url=url, retry=FAST).send(ALERT)
    assert len(recorder.requests) == 3


def test_a_4xx_is_not_retried(server: tuple[str, Recorder]) -> None:
    url, recorder = server
    recorder.fail_first, recorder.status = 5, 400
    with pytest.raises(
        SinkError, match=r"json webhook to http://127\.0\.0\.1:\d+ failed: HTTP 400"
    ):
        JsonWebhookSink(url=url, retry=FAST).send(ALERT)
    assert len(recorder.requests) == 1


def test_a_failing_sink_never_stops_the_others(
    server: tuple[str, Recorder], tmp_path: Path
) -> None:
    url, recorder = server
    recorder.fail_first, recorder.status = 100, 500
    sinks = [
        JsonWebhookSink(url=refused_url(), retry=FAST),
        SlackWebhookSink(url=url, retry=FAST),
        LogSink(tmp_path),
    ]
    results = send_alert(ALERT, sinks)
    assert (
        results["JsonWebhookSink"] is not None and "after 3 attempts" in results["JsonWebhookSink"]
    )
    assert results["SlackWebhookSink"] is not None and "HTTP 500" in results["SlackWebhookSink"]
    assert len(recorder.requests) == 3, "retried, then given up"
    assert results["LogSink"] is None
    assert [a["kind"] for a in read_alert_log(tmp_path)] == ["features_late"]


def test_sinks_are_built_from_config(server: tuple[str, Recorder], tmp_path: Path) -> None:
    url, _ = server
    sinks = build_sinks(
        [
            {"type": "log"},
            {"type": "slack", "url": url, "retry": {"attempts": 2, "initial_delay_s": 0.1}},
            {"type": "ticket", "base_url": url, "project_key": "OPS"},
        ],
        tmp_path,
    )
    assert [type(s).__name__ for s in sinks] == ["LogSink", "SlackWebhookSink", "TicketSink"]
    assert sinks[0] == LogSink(tmp_path)
    assert sinks[1].retry == RetryPolicy(attempts=2, initial_delay_s=0.1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "pager"}, r"alert sink #0 has type 'pager'; expected one of \['email', "),
        ({"type": "slack", "url": "x", "channel": "#a"}, r"unknown field\(s\) \['channel'\]"),
        ({"type": "slack"}, r"exactly one of url and url_env"),
        ({"type": "ticket", "base_url": "x", "min_severity": "loud"}, r"min_severity='loud'"),
        ({"type": "email", "host": "h", "port": 25, "sender": "a", "recipients": []}, "empty"),
    ],
)
def test_bad_sink_config_is_named(spec: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        build_sinks([spec], tmp_path)


def test_a_missing_secret_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLINFRA_TEST_SLACK_URL", raising=False)
    with pytest.raises(SinkError, match="MLINFRA_TEST_SLACK_URL is not set"):
        SlackWebhookSink(url_env="MLINFRA_TEST_SLACK_URL", retry=FAST).send(ALERT)


def test_email_sink_delivers_to_a_real_smtp_server() -> None:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    received: list[Any] = []

    class Inbox(Message):  # type: ignore[misc]
        def handle_message(self, message: Any) -> None:
            received.append(message)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Inbox(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        EmailSink(
            host="127.0.0.1",
            port=port,
            sender="mlinfra@example.com",
            recipients=["ml-oncall@example.com", "data-eng@example.com"],
            retry=FAST,
        ).send(ALERT)
    finally:
        controller.stop()
    (message,) = received
    assert message["Subject"] == "[mlinfra] WARNING features_late: customer_logins"
    assert message["To"] == "ml-oncall@example.com, data-eng@example.com"
    body = message.get_payload()
    assert "late by 1 day" in body and 'downstream: ["churn"]' in body


def test_an_unreachable_smtp_server_is_a_named_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(SinkError, match=rf"email to smtp://127\.0\.0\.1:{port} failed after 3"):
        EmailSink(
            host="127.0.0.1",
            port=port,
            sender="a@example.com",
            recipients=["b@example.com"],
            retry=FAST,
        ).send(ALERT)
