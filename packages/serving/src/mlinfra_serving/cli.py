"""``mlinfra-serve``: run the scoring service under uvicorn.

    uv run mlinfra-serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--home .mlinfra]
                         [--online-store sqlite|redis] [--redis 127.0.0.1:6379]
                         [--models churn,anomaly_detector,event_classifier] [--reload-interval 30]
                         [--max-ids 1000] [--missing-entity not_found|score_with_nulls]

Also ``python -m mlinfra_serving``. The settings travel to uvicorn's workers as JSON in
``MLINFRA_SERVING_SETTINGS``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from mlinfra_features import FeatureStoreSettings, default_home
from mlinfra_models import RegistrySettings
from mlinfra_serving.settings import MISSING_ENTITY_POLICIES, ServingSettings

__all__ = ["main", "parse_settings"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlinfra-serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--home", type=Path, default=None, help="platform home ($MLINFRA_HOME)")
    parser.add_argument("--online-store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--redis", default="127.0.0.1:6379", help="Redis connection string")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI")
    parser.add_argument("--models", default="churn,anomaly_detector,event_classifier")
    parser.add_argument("--reload-interval", type=float, default=30.0, help="seconds")
    parser.add_argument("--max-ids", type=int, default=1000)
    parser.add_argument("--missing-entity", choices=MISSING_ENTITY_POLICIES, default="not_found")
    parser.add_argument("--log-level", default="info")
    return parser


def parse_settings(argv: list[str] | None = None) -> tuple[argparse.Namespace, ServingSettings]:
    args = _parser().parse_args(argv)
    home = (args.home or default_home()).absolute()
    settings = ServingSettings(
        home=home,
        store=FeatureStoreSettings(
            home=home, online_store=args.online_store, redis_connection_string=args.redis
        ),
        registry=RegistrySettings(home=home, tracking_uri=args.tracking_uri),
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        reload_interval_s=args.reload_interval,
        max_ids_per_request=args.max_ids,
        missing_entity=args.missing_entity,
    )
    return args, settings


def main(argv: list[str] | None = None) -> None:
    try:
        args, settings = parse_settings(argv)
    except ValueError as exc:
        print(f"mlinfra-serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    if args.workers < 1:
        print(f"mlinfra-serve: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        raise SystemExit(2)
    import uvicorn

    metrics_dir = None
    if args.workers > 1:  # the workers' metrics meet in a folder of this run (one scrape)
        metrics_dir = Path(tempfile.mkdtemp(prefix="mlinfra-serve-metrics-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        settings = replace(settings, metrics_dir=metrics_dir)
    os.environ["MLINFRA_SERVING_SETTINGS"] = settings.to_json()
    try:
        uvicorn.run(
            "mlinfra_serving.app:app_from_env",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_level=args.log_level,
            access_log=False,
            # A worker loads Feast, MLflow and the champions before it answers the supervisor's
            # pings: seconds on a busy machine, longer than uvicorn's default 5 s.
            timeout_worker_healthcheck=120,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
