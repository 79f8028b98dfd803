"""benchmarks/check_ratios.py on pytest-benchmark JSON with passing, missed and regressed
ratios, run as CI runs it (a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "check_ratios.py"


def _results(path: Path, *ratios: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "machine_info": {},
                "benchmarks": [
                    {"name": "test_other", "fullname": "bench_x.py::test_other", "extra_info": {}},
                    {
                        "name": "test_timed",
                        "fullname": "bench_x.py::test_timed",
                        "extra_info": {"ratios": list(ratios)},
                    },
                ],
            }
        )
    )
    return path


def _ratio(name: str, ratio: float, target: float, higher: bool = True) -> dict[str, Any]:
    return {"name": name, "ratio": ratio, "target": target, "higher_is_better": higher}


def _check(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, check=False
    )


def test_ratios_within_half_their_target_pass_and_every_one_is_printed(tmp_path: Path) -> None:
    results = _results(
        tmp_path / "ok.json",
        _ratio("speedup", 3.5, 3.0),
        _ratio("http", 0.3, 0.5),  # missed, but not by half
        _ratio("share", 0.09, 0.05, higher=False),  # missed, but not by half
        _ratio("peak", 0.4, 1.0, higher=False),
    )
    done = _check(results)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "bench_x.py::test_timed | speedup: 3.5 (target >= 3) target met" in lines
    assert "bench_x.py::test_timed | http: 0.3 (target >= 0.5) target missed" in done.stdout
    assert "share: 0.09 (target <= 0.05) target missed" in done.stdout
    assert "peak: 0.4 (target <= 1) target met" in done.stdout
    assert "4 ratio(s), 2 meet their target, 2 miss it by less than half, 0 regressed" in lines[-1]


def test_a_ratio_worse_than_half_its_target_fails(tmp_path: Path) -> None:
    for bad in (_ratio("http", 0.2, 0.5), _ratio("share", 0.11, 0.05, higher=False)):
        results = _results(tmp_path / "bad.json", _ratio("speedup", 3.5, 3.0), bad)
        done = _check(results)
        assert done.returncode == 1, done.stdout
        assert f"{bad['name']}: " in done.stdout and "REGRESSION" in done.stdout
        assert "speedup: 3.5 (target >= 3) target met" in done.stdout  # the others still print


def test_no_ratio_or_a_bad_file_fails(tmp_path: Path) -> None:
    empty = _results(tmp_path / "empty.json")
    done = _check(empty)
    assert done.returncode == 1 and "--benchmark-enable" in done.stderr
    assert _check(empty, "--min-ratios", "0").returncode == 0
    (tmp_path / "broken.json").write_text("{not json")
    broken = _check(tmp_path / "broken.json")
    assert broken.returncode == 2 and "broken.json" in broken.stderr
    (tmp_path / "shape.json").write_text(
        json.dumps({"benchmarks": [{"extra_info": {"ratios": [{"name": "x"}]}}]})
    )
    shaped = _check(tmp_path / "shape.json")
    assert shaped.returncode == 2 and "record_ratio" in shaped.stderr
