"""Fixtures shared by every test directory of the workspace (the members' and the flows')."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# Read when ray is first imported: workers reuse this venv instead of re-running `uv run`, and a
# throwaway local cluster needs no auth token written to the home directory.
_RAY_ENV = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole session (2 CPUs, no dashboard), shut down at the end."""
    saved = {k: os.environ.get(k) for k in _RAY_ENV}
    os.environ.update(_RAY_ENV)
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
