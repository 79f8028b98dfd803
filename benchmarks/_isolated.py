"""Run one benchmark function in this fresh process and report its wall time and peak memory.

What ``conftest.run_isolated`` runs::

    python benchmarks/_isolated.py BENCH_FILE FUNCTION --args JSON --result PATH
        [--save DIR] [--preload MODULE ...]

``FUNCTION`` is looked up in ``BENCH_FILE`` (loaded by path, so it works whatever pytest's import
mode) and called with the JSON-decoded positional ``--args``. ``--preload`` modules are imported
first, outside the measurement (an import is not part of what a benchmark times).

Peak memory is the process's high-water resident set size (``VmHWM`` in ``/proc/self/status``),
which sees the native allocations of Polars, Arrow and NumPy that ``tracemalloc`` misses;
``rss_before_mb`` is the resident set just before the call (interpreter plus imports), a floor
every implementation pays. If the function returns a mapping of data frames and ``--save`` is
given, each frame is written there as ``<name>.parquet`` after the measurement; any other return
value must be JSON-serialisable and comes back as ``result``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # the file reports kB
    raise RuntimeError(f"/proc/self/status has no {field} line: peak memory needs Linux")


def measure(function: Callable[..., Any], args: Sequence[Any], save: Path | None) -> dict[str, Any]:
    """Call ``function(*args)``; its wall time, this process's peak memory and its result."""
    rss_before = status_mb("VmRSS")
    start, cpu_start = time.perf_counter(), time.process_time()
    result = function(*args)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = status_mb("VmHWM")
    if save is not None and isinstance(result, dict):
        save.mkdir(parents=True, exist_ok=True)
        for name, frame in result.items():
            if hasattr(frame, "write_parquet"):  # polars
                frame.write_parquet(save / f"{name}.parquet")
            else:  # pandas
                frame.to_parquet(save / f"{name}.parquet", index=False)
        result = sorted(result)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,  # all threads: above ``seconds`` when it ran in parallel
        "peak_mb": peak,
        "rss_before_mb": rss_before,
        "result": result,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("bench_file", type=Path)
    parser.add_argument("function")
    parser.add_argument("--args", default="[]", help="JSON list of positional arguments")
    parser.add_argument("--result", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--save", type=Path, help="directory for returned data frames")
    parser.add_argument("--preload", nargs="*", default=[], help="modules to import first")
    options = parser.parse_args(argv)

    spec = importlib.util.spec_from_file_location("_isolated_bench", options.bench_file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load a benchmark module from {options.bench_file}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in options.preload:
        importlib.import_module(name)

    payload = measure(getattr(module, options.function), json.loads(options.args), options.save)
    options.result.write_text(json.dumps(payload))


if __name__ == "__main__":
    main()
