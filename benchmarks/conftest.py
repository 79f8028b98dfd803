"""Shared fixtures of the benchmark suites.

Size: ``MLINFRA_BENCH_CUSTOMERS`` customers (default 2,000, so that the normal test run, which
executes every benchmark once with ``--benchmark-disable``, stays fast). Time the real scale with

    MLINFRA_BENCH_CUSTOMERS=1000000 uv run pytest benchmarks --benchmark-enable -p no:cacheprovider

Every measured implementation runs in a fresh Python process (``benchmarks/_isolated.py``), so its
peak resident memory is its own and includes native (Polars/Arrow/NumPy) allocations.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mlinfra_features.sources import DemoWarehouseSettings, Warehouse, generate_demo_warehouse

#: Environment variable that sets the number of demo customers.
CUSTOMERS_ENV = "MLINFRA_BENCH_CUSTOMERS"
DEFAULT_CUSTOMERS = 2_000
#: Fixed end of the demo timeline, so that every run generates the same warehouse.
AS_OF = datetime(2025, 6, 1, tzinfo=UTC)

_CHILD = Path(__file__).with_name("_isolated.py")
_SUMMARY = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class Measurement:
    """Wall time and peak resident memory of one call (see ``_isolated.py``)."""

    seconds: float
    cpu_seconds: float  # user + system time of all its threads
    peak_mb: float
    rss_before_mb: float  # resident set just before the call: interpreter plus imports
    result: Any = None
    isolated: bool = True  # False: measured inside the test process, so the peak is not its own


def _customers_from_env() -> int:
    raw = os.environ.get(CUSTOMERS_ENV, str(DEFAULT_CUSTOMERS))
    try:
        n = int(raw.replace("_", ""))
    except ValueError:
        raise pytest.UsageError(
            f"{CUSTOMERS_ENV}={raw!r}: expected an integer number of customers, e.g. 1000000"
        ) from None
    if n < 10:
        raise pytest.UsageError(f"{CUSTOMERS_ENV}={n}: expected at least 10 customers")
    return n


def _load_child() -> Any:
    """``_isolated.py`` as a module (this directory is not on ``sys.path``)."""
    spec = importlib.util.spec_from_file_location("_mlinfra_bench_isolated", _CHILD)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure_call(
    function: Callable[..., object],
    *args: object,
    isolated: bool = True,
    save: Path | None = None,
    preload: Sequence[str] = (),
) -> Measurement:
    """Call module-level ``function(*args)`` and measure its wall time and peak memory.

    ``isolated`` (the default) runs it in a fresh interpreter, so the peak is its own; otherwise
    it runs in the test process, which is cheaper and gets the same result, but whose peak is the
    whole test process's. ``args`` must be JSON-serialisable (pass paths as strings);
    ``preload`` modules are imported before the measurement. With ``save``, a returned mapping of
    data frames is written there as Parquet after the measurement, and ``result`` is the list of
    their names.
    """
    if not isolated:
        return Measurement(**_load_child().measure(function, args, save), isolated=False)
    with tempfile.TemporaryDirectory(prefix="mlinfra-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        command = [
            sys.executable,
            str(_CHILD),
            inspect.getfile(function),
            function.__name__,
            f"--args={json.dumps(list(args))}",
            f"--result={result_path}",
            *([f"--save={save}"] if save is not None else []),
            *(["--preload", *preload] if preload else []),
        ]
        proc = subprocess.run(command, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{function.__name__}{args} failed in its subprocess (exit {proc.returncode}):\n"
                f"{proc.stderr[-4000:]}"
            )
        return Measurement(**json.loads(result_path.read_text()))


@pytest.fixture(scope="session")
def bench_customers() -> int:
    """Number of demo customers, from ``MLINFRA_BENCH_CUSTOMERS`` (default 2,000)."""
    return _customers_from_env()


@pytest.fixture(scope="session")
def warehouse_settings(bench_customers: int) -> DemoWarehouseSettings:
    return DemoWarehouseSettings(n_customers=bench_customers, as_of=AS_OF)


@pytest.fixture(scope="session")
def demo_warehouse(
    warehouse_settings: DemoWarehouseSettings, tmp_path_factory: pytest.TempPathFactory
) -> Warehouse:
    """The demo warehouse at the benchmark size, generated once per session in a temp dir."""
    return generate_demo_warehouse(warehouse_settings, tmp_path_factory.mktemp("warehouse"))


@pytest.fixture(scope="session")
def measure() -> Callable[..., Measurement]:
    """:func:`measure_call`: time one call and take its peak memory, in a fresh process."""
    return measure_call


@pytest.fixture(scope="session")
def bench_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a result line now and repeat it in the terminal summary, whatever the capture."""
    lines = request.config.stash.setdefault(_SUMMARY, [])

    def report(line: str) -> None:
        print(line)
        lines.append(line)

    return report


def _record_ratio(
    benchmark: Any,
    name: str,
    ratio: float,
    target: float,
    *,
    higher_is_better: bool = True,
) -> None:
    """Store one measured ratio and its target in ``benchmark.extra_info["ratios"]``.

    Every suite records its headline ratios this way, so that ``--benchmark-json`` carries them
    in one shape and ``benchmarks/check_ratios.py`` can compare each with its target: a ratio
    worse than half its target (``higher_is_better``: below ``target / 2``; otherwise above
    ``target * 2``) is a regression, whatever the machine's noise.
    """
    if math.isnan(ratio) or target <= 0:  # NaN, or a target that can't be halved
        raise ValueError(
            f"ratio {name!r}: expected a number and a positive target, got {ratio}, {target}"
        )
    ratios = benchmark.extra_info.setdefault("ratios", [])
    ratios.append(
        {
            "name": name,
            "ratio": float(ratio),
            "target": float(target),
            "higher_is_better": higher_is_better,
        }
    )


@pytest.fixture(scope="session")
def record_ratio() -> Callable[..., None]:
    """``record_ratio(benchmark, name, ratio, target, *, higher_is_better=True)``: store a
    headline ratio and its target in ``benchmark.extra_info["ratios"]`` (see ``_record_ratio``).

    A fixture, because the suites are imported with ``--import-mode=importlib`` and can't import
    this module by name.
    """
    return _record_ratio


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_SUMMARY, [])
    if lines:
        terminalreporter.section("mlinfra benchmarks")
        for line in lines:
            terminalreporter.write_line(line)
