"""Alert sinks beyond the log: Slack-compatible and generic JSON webhooks, e-mail, tickets.

Each sink delivers one :class:`~mlinfra_ops.alerts.Alert` or raises :class:`SinkError` naming
the sink, the destination and what went wrong. Network sinks retry transient failures
(connection refused or reset, timeouts, HTTP 429 and 5xx) with exponential backoff; a 4xx
answer is not retried, since a resend would get the same answer. :func:`send_alert` catches the
error, so a broken sink never stops the other sinks or the job.

Sinks are chosen and combined by config: a list of mappings with a ``type`` (``log``,
``slack``, ``webhook``, ``email``, ``ticket``) and that sink's fields, built by
:func:`build_sinks`. Secrets (webhook URLs with tokens, SMTP passwords, ticket API tokens) are
read from the environment variable a field names, never stored in the config.

=========  ==============================================================================
type       delivers
=========  ==============================================================================
log        Python logger + one JSON line in ``<home>/alerts/alerts.jsonl`` (the history)
slack      ``{"text": ..., "blocks": [...]}`` to a Slack-compatible incoming webhook
webhook    the alert as JSON (``Alert.as_json()``) to any URL, with optional headers
email      a plain-text message over SMTP (optional STARTTLS and login)
ticket     an issue through a Jira-compatible REST call
           (``POST {base_url}/rest/api/2/issue``, project key e.g. ``MLINFRA``)
=========  ==============================================================================
"""

from __future__ import annotations

import json
import os
import smtplib
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from mlinfra_ops.alerts import Alert, AlertSink, LogSink

__all__ = [
    "SINK_TYPES",
    "EmailSink",
    "JsonWebhookSink",
    "RetryPolicy",
    "SinkError",
    "SlackWebhookSink",
    "TicketSink",
    "build_sinks",
]

SEVERITIES = ("info", "warning", "error", "critical")


class SinkError(RuntimeError):
    """A sink could not deliver an alert."""


@dataclass(frozen=True)
class RetryPolicy:
    """How a network sink retries transient failures."""

    attempts: int = 3
    initial_delay_s: float = 0.5
    backoff: float = 2.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be >= 1, got {self.attempts}")
        if self.initial_delay_s < 0 or self.backoff < 1 or self.timeout_s <= 0:
            raise ValueError(
                f"RetryPolicy needs initial_delay_s >= 0, backoff >= 1 and timeout_s > 0, got "
                f"{self.initial_delay_s}, {self.backoff}, {self.timeout_s}"
            )


def _secret(env: str | None, what: str) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise SinkError(f"{what}: environment variable {env} is not set; expected the secret")
    return value


def _with_retries(
    name: str, destination: str, retry: RetryPolicy, attempt: Callable[[], Any]
) -> Any:
    """Call ``attempt`` until it succeeds, retrying what :func:`_transient` says is transient."""
    delay, last = retry.initial_delay_s, ""
    for number in range(1, retry.attempts + 1):
        try:
            return attempt()
        except Exception as exc:
            reason = _transient(exc)
            if reason is None:
                raise SinkError(f"{name} to {destination} failed: {_describe(exc)}") from exc
            last = reason
        if number < retry.attempts:
            time.sleep(delay)
            delay *= retry.backoff
    raise SinkError(f"{name} to {destination} failed after {retry.attempts} attempts: {last}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        body = exc.read()[:300].decode(errors="replace")
        return f"HTTP {exc.code} {exc.reason} {body!r}"
    return f"{type(exc).__name__}: {exc}"


def _transient(exc: BaseException) -> str | None:
    """Why ``exc`` is worth a retry, or None when a resend would fail the same way."""
    if isinstance(exc, urllib.error.HTTPError):
        return _describe(exc) if exc.code == 429 or exc.code >= 500 else None
    if isinstance(exc, (urllib.error.URLError, OSError, smtplib.SMTPServerDisconnected)):
        return _describe(exc)
    if isinstance(exc, smtplib.SMTPResponseException) and exc.smtp_code >= 400:
        return None if exc.smtp_code >= 500 else _describe(exc)
    return None


def _post_json(
    url: str, payload: Any, headers: Mapping[str, str], retry: RetryPolicy, name: str
) -> Any:
    body = json.dumps(payload, default=str).encode()

    def attempt() -> Any:
        request = urllib.request.Request(
            url,
            data=body,
            headers={"Content-Type": "application/json", **headers},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=retry.timeout_s) as response:
            raw = response.read()
        try:
            return json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return raw.decode(errors="replace")

    return _with_retries(name, url, retry, attempt)


def _facts_text(alert: Alert) -> str:
    return "\n".join(f"{k}: {json.dumps(v, default=str)}" for k, v in alert.facts.items())


@dataclass(frozen=True)
class SlackWebhookSink:
    """A Slack-compatible incoming webhook (``url`` or, better, ``url_env``)."""

    url: str | None = None
    url_env: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("SlackWebhookSink needs exactly one of url and url_env")

    def payload(self, alert: Alert) -> dict[str, Any]:
        icon = {"info": ":white_check_mark:", "warning": ":warning:"}.get(
            alert.severity, ":rotating_light:"
        )
        text = f"{icon} *{alert.kind}* `{alert.subject}`: {alert.message}"
        blocks: list[dict[str, Any]] = [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        ]
        if alert.facts:
            facts = [
                {"type": "mrkdwn", "text": f"*{k}*\n{json.dumps(v, default=str)[:1900]}"}
                for k, v in list(alert.facts.items())[:10]
            ]
            blocks.append({"type": "section", "fields": facts})
        return {"text": text, "blocks": blocks}

    def send(self, alert: Alert) -> None:
        url = self.url or _secret(self.url_env, "slack sink")
        assert url is not None
        _post_json(url, self.payload(alert), {}, self.retry, "slack webhook")


@dataclass(frozen=True)
class JsonWebhookSink:
    """POST the alert as JSON to any URL (``headers`` values may name env vars via
    ``header_envs``, e.g. ``{"Authorization": "MLINFRA_WEBHOOK_AUTH"}``)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    header_envs: Mapping[str, str] = field(default_factory=dict)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def send(self, alert: Alert) -> None:
        headers = dict(self.headers)
        for header, env in self.header_envs.items():
            headers[header] = _secret(env, f"webhook header {header}") or ""
        _post_json(self.url, alert.as_json(), headers, self.retry, "json webhook")


@dataclass(frozen=True)
class EmailSink:
    """A plain-text e-mail per alert over SMTP."""

    host: str
    port: int
    sender: str
    recipients: Sequence[str]
    starttls: bool = False
    username: str | None = None
    password_env: str | None = None
    subject_prefix: str = "[mlinfra]"
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.recipients:
            raise ValueError("EmailSink.recipients is empty; expected at least one address")

    def message(self, alert: Alert) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = (
            f"{self.subject_prefix} {alert.severity.upper()} {alert.kind}: {alert.subject}"
        )
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message.set_content(f"{alert.message}\n\n{_facts_text(alert)}\n\nat {alert.at.isoformat()}")
        return message

    def send(self, alert: Alert) -> None:
        message = self.message(alert)
        password = _secret(self.password_env, "email sink")

        def attempt() -> None:
            with smtplib.SMTP(self.host, self.port, timeout=self.retry.timeout_s) as smtp:
                if self.starttls:
                    smtp.starttls()
                if self.username:
                    smtp.login(self.username, password or "")
                smtp.send_message(message)

        _with_retries("email", f"smtp://{self.host}:{self.port}", self.retry, attempt)


@dataclass(frozen=True)
class TicketSink:
    """Open an issue through a Jira-compatible REST API for alerts at or above
    ``min_severity`` (recoveries, which are ``info``, open none)."""

    base_url: str
    project_key: str = "MLINFRA"
    issue_type: str = "Incident"
    token_env: str | None = None
    min_severity: str = "warning"
    labels: Sequence[str] = ("mlinfra",)
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITIES:
            raise ValueError(
                f"TicketSink.min_severity={self.min_severity!r}; expected one of {SEVERITIES}"
            )
        if not self.project_key:
            raise ValueError("TicketSink.project_key is empty; expected a key such as MLINFRA")

    def payload(self, alert: Alert) -> dict[str, Any]:
        description = f"{alert.message}\n\n{{code:json}}\n"
        description += json.dumps(dict(alert.facts), indent=2, default=str)
        description += "\n{code}\n\nRaised by mlinfra at " + alert.at.isoformat()
        return {
            "fields": {
                "project": {"key": self.project_key},
                "issuetype": {"name": self.issue_type},
                "summary": f"[{alert.severity}] {alert.kind}: {alert.subject}"[:250],
                "description": description,
                "labels": [*self.labels, alert.kind],
            }
        }

    def send(self, alert: Alert) -> None:
        if SEVERITIES.index(alert.severity) < SEVERITIES.index(self.min_severity):
            return
        headers = {}
        token = _secret(self.token_env, "ticket sink")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{self.base_url.rstrip('/')}/rest/api/2/issue"
        _post_json(url, self.payload(alert), headers, self.retry, "ticket")


SINK_TYPES: dict[str, type] = {
    "log": LogSink,
    "slack": SlackWebhookSink,
    "webhook": JsonWebhookSink,
    "email": EmailSink,
    "ticket": TicketSink,
}


def build_sinks(specs: Sequence[Mapping[str, Any]], home: Path) -> list[AlertSink]:
    """Sinks from config: ``[{"type": "slack", "url_env": "..."}, {"type": "log"}, ...]``.

    ``log`` sinks write under ``home`` unless they name their own. A ``retry`` mapping becomes
    a :class:`RetryPolicy`. Unknown types or fields raise ValueError naming them.
    """
    sinks: list[AlertSink] = []
    for index, spec in enumerate(specs):
        options = dict(spec)
        kind = options.pop("type", None)
        if kind not in SINK_TYPES:
            raise ValueError(
                f"alert sink #{index} has type {kind!r}; expected one of {sorted(SINK_TYPES)}"
            )
        cls = SINK_TYPES[kind]
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"alert sink #{index} ({kind}) has unknown field(s) {unknown}; expected some of "
                f"{sorted(known)}"
            )
        if kind == "log":
            options.setdefault("home", home)
            options["home"] = Path(options["home"])
        if isinstance(options.get("retry"), Mapping):
            options["retry"] = RetryPolicy(**options["retry"])
        sinks.append(cls(**options))
    return sinks
