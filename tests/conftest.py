from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One real, temporary Prefect API (its own SQLite database) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@contextlib.contextmanager
def _json_webhook(status: int) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A JSON webhook on 127.0.0.1 answering ``status``, and the payloads it received."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/alerts", received
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A JSON webhook on 127.0.0.1 that accepts every alert (204), and the alerts it received."""
    with _json_webhook(204) as hook:
        yield hook


@pytest.fixture
def failing_webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook on 127.0.0.1 that answers every request with 500."""
    with _json_webhook(500) as hook:
        yield hook
