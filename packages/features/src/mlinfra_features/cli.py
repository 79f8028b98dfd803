"""``mlinfra-features``: inspect the feature store from a shell.

mlinfra-features freshness [--json] [--home DIR]   per-view freshness (table or JSON)
mlinfra-features feast-yaml [--home DIR]           write feature_store.yaml for the Feast CLI
mlinfra-features runs [--view V] [--home DIR]      the materialization ledger
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mlinfra_features.freshness import freshness
from mlinfra_features.ledger import Ledger
from mlinfra_features.store import FeatureStoreSettings, default_home, write_feature_store_yaml


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    hours = seconds / 3600
    return f"{hours / 24:.1f}d" if hours >= 48 else f"{hours:.1f}h"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mlinfra-features", description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=None, help="platform home (MLINFRA_HOME)")
    sub = parser.add_subparsers(dest="command", required=True)
    fresh = sub.add_parser("freshness", help="freshness of every feature view")
    fresh.add_argument("--json", action="store_true", help="print a JSON list")
    sub.add_parser("feast-yaml", help="write feature_store.yaml for the Feast CLI")
    runs = sub.add_parser("runs", help="materialization runs from the ledger")
    runs.add_argument("--view", default=None)
    args = parser.parse_args(argv)
    settings = FeatureStoreSettings(home=args.home or default_home())

    if args.command == "freshness":
        report = freshness(settings)
        if args.json:
            print(json.dumps([v.as_json() for v in report], indent=2))
        else:
            print(f"{'feature_view':<26} {'state':<8} {'age':>7} {'sla':>7}  newest event")
            for v in report:
                newest = v.newest_event_timestamp.isoformat() if v.newest_event_timestamp else "-"
                print(
                    f"{v.feature_view:<26} {v.state:<8} {_age(v.age_seconds):>7} "
                    f"{_age(v.sla_seconds):>7}  {newest}"
                )
        return 0 if all(v.state == "fresh" for v in report) else 1
    if args.command == "feast-yaml":
        print(write_feature_store_yaml(settings))
        return 0
    for run in Ledger(settings.ledger_path).runs(args.view):
        print(
            f"{run.run_id:>5} {run.feature_view:<26} {run.status:<8} "
            f"({run.window_start.isoformat()}, {run.window_end.isoformat()}] rows={run.rows}"
            + (f" error={run.error}" if run.error else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
