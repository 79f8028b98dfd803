"""Batch-score flow: every active customer scored by the churn champion (daily deployment).

    uv run python -m flows.batch_score [hydra overrides, e.g. as_of=2026-11-29 engine=ray
                                         partition_rows=100000 compute=ray_cluster]

Loads the registry's ``churn`` champion, reads the population from the offline store (every
customer active at ``as_of``, with the ``churn_v2`` point-in-time features of the newest
snapshot at or before it) and writes Parquet partitions with the scores, model, version and
semver under ``<home>/batch_scores/churn/as_of=<snapshot>/version=<version>/``. A rerun (or a
Prefect retry) skips the partitions already written. ``engine=auto`` scores in process below
the measured crossover size (none on 2 cores: ``crossover_rows: null``) and on Ray Data above
it, or whenever a cluster address is configured (``compute=ray_cluster``); a run that scores on
Ray warms Ray's workers while it reads the population. See :mod:`mlinfra_serving.batch`.
"""

from __future__ import annotations

import os

# Ray reads this when it is first imported: workers run in this very environment, not under a
# fresh `uv run` of the project.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, date, datetime
from typing import Any

from prefect import flow, get_run_logger, task

from flows.config import build, load
from flows.retrain import start_ray
from mlinfra_features import FeatureStoreSettings, service_entity_key
from mlinfra_models import RegistrySettings
from mlinfra_serving.batch import (
    ENGINE_WORDS,
    BatchScoreSettings,
    RayWarmup,
    choose_engine,
    load_batch_champion,
    population,
    score_population,
    warm_ray_scoring,
)


def parse_as_of(value: Any) -> datetime:
    """``as_of`` from the config: null (now), an ISO date (midnight UTC) or an ISO time (UTC
    unless it says otherwise)."""
    if value is None:
        return datetime.now(UTC)
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"as_of={value!r}: expected an ISO date or time (2026-11-29, "
                "2026-11-29T06:00:00Z) or null for now"
            ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


@task(retries=1, retry_delay_seconds=10)
def score_task(cfg: dict[str, Any]) -> dict[str, Any]:
    """Score the population; a retry resumes from the partitions already written.

    When the run will score on Ray whatever the population's size (``engine=ray``, or a
    cluster address with ``engine=auto``) and the pool is ``tasks``, Ray starts and its
    workers are warmed (:func:`~mlinfra_serving.batch.warm_ray_scoring`) on a thread while
    this one reads the population, so that the workers' start and imports overlap the read
    instead of delaying the scoring.
    """
    logger = get_run_logger()
    as_of = parse_as_of(cfg["as_of"])
    store: FeatureStoreSettings = build(cfg["features"]["store"])
    registry: RegistrySettings = build(cfg["registry"])
    settings: BatchScoreSettings = build(cfg["batch"])
    champion = load_batch_champion(registry, settings.model)
    # Ray for any number of rows: engine=ray, a cluster address, or a crossover of 0
    on_ray = choose_engine(settings, 0)[0] == "ray"
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ray-warm-up") as background:
        warming: Future[RayWarmup] | None = None
        if on_ray and settings.ray.pool == "tasks":
            start_ray(cfg["compute"])
            key = service_entity_key(champion.feature_service)
            warming = background.submit(warm_ray_scoring, champion, settings.ray, key=key)
        frame = population(store, champion.feature_service, as_of)
        warm: dict[str, Any] = {}

        def connect() -> None:
            start_ray(cfg["compute"])
            if warming is not None:
                done = warming.result()
                warm.update(asdict(done))
                logger.info(
                    f"Ray workers warmed while the population was read: {done.processes} "
                    f"process(es) for {done.tasks} concurrent task(s) in {done.seconds:.1f} s"
                )

        result = score_population(frame, champion, settings, connect=connect, log=logger.info)
    return {
        "run_dir": str(result.run_dir),
        "model": result.model,
        "version": result.version,
        "semver": result.semver,
        "feature_service": result.feature_service,
        "as_of": result.as_of.isoformat(),
        "rows": result.rows,
        "partitions": result.partitions,
        "scored": result.scored,
        "skipped": result.skipped,
        "engine": result.engine,
        "engine_reason": result.engine_reason,
        "seconds": result.seconds,
        "warm_up": warm or None,
    }


@flow(name="batch_score", log_prints=True)
def batch_score(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Score every active customer with the churn champion into resumable Parquet partitions."""
    cfg = cfg if cfg is not None else load("batch_score", overrides)
    result = score_task(cfg)
    print(
        f"{result['model']} version {result['version']} ({result['semver']}) as of "
        f"{result['as_of']}: {result['rows']} customers in {result['partitions']} partition(s) "
        f"under {result['run_dir']} ({len(result['scored'])} scored"
        + (f" {ENGINE_WORDS[result['engine']]}" if result["scored"] else "")
        + f", {len(result['skipped'])} already written)"
    )
    return result


def main(argv: list[str] | None = None) -> None:
    batch_score(load("batch_score", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
