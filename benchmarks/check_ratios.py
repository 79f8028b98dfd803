"""Check the headline ratios of a benchmark run against their targets.

    uv run python benchmarks/check_ratios.py RESULTS.json [MORE.json ...] [--min-ratios N]

Reads pytest-benchmark's ``--benchmark-json`` output, where every suite stores its ratios with
``record_ratio`` (``benchmarks/conftest.py``) as ``extra_info["ratios"]``: a list of
``{"name", "ratio", "target", "higher_is_better"}``. Prints each ratio against its target and
exits

* 0 when none is worse than half its target (below ``target / 2`` when higher is better,
  above ``target * 2`` when lower is better): a missed target is reported, not failed, because
  machine noise can miss a target but not by half;
* 1 when one is (a regression), or fewer than ``--min-ratios`` ratios were recorded (default
  1: a run that recorded none was not timed, e.g. ``--benchmark-enable`` was left out);
* 2 when a file can't be read or doesn't have that shape.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Ratio:
    benchmark: str
    name: str
    ratio: float
    target: float
    higher_is_better: bool

    @property
    def meets_target(self) -> bool:
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    @property
    def regressed(self) -> bool:
        """Worse than half the target (or not a number)."""
        if math.isnan(self.ratio):
            return True
        if self.higher_is_better:
            return self.ratio < self.target / 2
        return self.ratio > self.target * 2

    def line(self) -> str:
        if self.regressed:
            verdict = "REGRESSION: worse than half the target"
        elif self.meets_target:
            verdict = "target met"
        else:
            verdict = "target missed (within half of it)"
        sense = ">=" if self.higher_is_better else "<="
        return (
            f"{self.benchmark} | {self.name}: {self.ratio:.3g} (target {sense} "
            f"{self.target:.3g}) {verdict}"
        )


class ResultsError(ValueError):
    """A results file that can't be read or isn't pytest-benchmark's JSON with ratios."""


def read_ratios(path: Path) -> list[Ratio]:
    """Every ratio recorded in one ``--benchmark-json`` file, in the file's order."""
    try:
        data: Any = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ResultsError(f"{path}: cannot read it as JSON ({exc})") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list):
        raise ResultsError(
            f"{path}: expected pytest-benchmark's JSON (an object with a 'benchmarks' list), "
            "as --benchmark-json writes it"
        )
    ratios = []
    for bench in benchmarks:
        name = str(bench.get("fullname") or bench.get("name") or "?")
        for entry in (bench.get("extra_info") or {}).get("ratios", []):
            try:
                ratios.append(
                    Ratio(
                        benchmark=name,
                        name=str(entry["name"]),
                        ratio=float(entry["ratio"]),
                        target=float(entry["target"]),
                        higher_is_better=bool(entry.get("higher_is_better", True)),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise ResultsError(
                    f"{path}: {name} has a ratio {entry!r} without a numeric 'name', 'ratio' "
                    f"and 'target' ({exc}); record it with record_ratio"
                ) from None
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="check_ratios", description=__doc__.split("\n")[0] if __doc__ else None
    )
    parser.add_argument("results", nargs="+", type=Path, help="--benchmark-json files")
    parser.add_argument("--min-ratios", type=int, default=1, help="fail below this many")
    args = parser.parse_args(argv)
    try:
        ratios = [r for path in args.results for r in read_ratios(path)]
    except ResultsError as exc:
        print(f"check_ratios: {exc}", file=sys.stderr)
        return 2
    for ratio in ratios:
        print(ratio.line())
    regressed = [r for r in ratios if r.regressed]
    missed = [r for r in ratios if not r.meets_target and not r.regressed]
    print(
        f"check_ratios: {len(ratios)} ratio(s), {len(ratios) - len(regressed) - len(missed)} "
        f"meet their target, {len(missed)} miss it by less than half, {len(regressed)} regressed"
    )
    if len(ratios) < args.min_ratios:
        print(
            f"check_ratios: expected at least {args.min_ratios} recorded ratio(s), found "
            f"{len(ratios)}; was the run timed (--benchmark-enable)?",
            file=sys.stderr,
        )
        return 1
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
