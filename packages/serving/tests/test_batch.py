"""Batch scoring on the demo home's real offline store and churn champion: the population is
Feast's point-in-time join, the scores are the served model's, Ray Data and in-process agree,
and an interrupted run resumes without rescoring what it wrote."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlinfra_features import FeatureStoreSettings, training_set
from mlinfra_models import ChurnModel, RegistrySettings
from mlinfra_serving import ChurnScorer, OnlineFeatureReader
from mlinfra_serving.batch import (
    BatchChampion,
    BatchScoreSettings,
    RayScoringSettings,
    choose_engine,
    load_batch_champion,
    partition_path,
    population,
    score_population,
    warm_ray_scoring,
)

from .conftest import DemoHome

LATER = timedelta(days=3)  # between two weekly snapshots: the newest one is scored


@pytest.fixture(scope="module")
def champion(demo_home: DemoHome) -> BatchChampion:
    return load_batch_champion(demo_home.registry)


@pytest.fixture(scope="module")
def frame(demo_home: DemoHome, champion: BatchChampion) -> pl.DataFrame:
    return population(
        demo_home.store, champion.feature_service, demo_home.warehouse.data_end() + LATER
    )


def read_run(directory: Path) -> pl.DataFrame:
    return pl.read_parquet(sorted(directory.glob("part-*.parquet"))).drop("scored_at")


def test_population_is_every_active_customer_with_feasts_point_in_time_features(
    demo_home: DemoHome, frame: pl.DataFrame
) -> None:
    snapshot = demo_home.warehouse.data_end()
    assert frame["event_timestamp"].unique().to_list() == [snapshot]
    customers = demo_home.warehouse.scan("customers").collect()
    churned = demo_home.warehouse.scan("churn_events").collect()
    active = set(
        customers.filter(pl.col("signup_at") <= snapshot)
        .join(churned.filter(pl.col("churned_at") <= snapshot), on="customer_id", how="anti")[
            "customer_id"
        ]
        .to_list()
    )
    assert set(frame["customer_id"].to_list()) == active
    assert frame["customer_id"].is_sorted()
    feast = training_set(
        demo_home.store, "churn_v2", frame.select("customer_id", "event_timestamp")
    )
    assert frame.equals(feast)


def test_scores_are_the_served_models_with_version_and_semver(
    demo_home: DemoHome, champion: BatchChampion, frame: pl.DataFrame, tmp_path: Path
) -> None:
    settings = BatchScoreSettings(output_dir=tmp_path, partition_rows=500)
    result = score_population(frame, champion, settings)
    assert result.engine == "in_process" and result.scored == list(range(result.partitions))
    out = read_run(result.run_dir)
    assert out["customer_id"].to_list() == frame["customer_id"].to_list()
    expected = {
        "model": "churn",
        "version": champion.version,
        "semver": champion.semver,
        "feature_service": "churn_v2",
        "as_of": demo_home.warehouse.data_end(),
    }
    for column, value in expected.items():
        assert out[column].unique().to_list() == [value], column
    assert champion.semver.count(".") == 2
    # the training/evaluation path (pandas into CatBoost) on the same rows
    reference = ChurnModel(champion.booster, champion.features).predict_proba(frame)
    np.testing.assert_array_equal(out["score"].to_numpy(), reference)
    # the scoring service's path on the online store, which holds the same newest snapshot
    ids = frame["customer_id"].to_list()[:300]
    rows = OnlineFeatureReader(demo_home.store, ["churn_v2"]).read("churn_v2", ids)
    served = ChurnScorer(champion.booster, champion.features).score(rows, range(len(ids)))
    np.testing.assert_allclose(out["score"].to_numpy()[:300], served, rtol=1e-12)


@pytest.mark.usefixtures("ray_session")
@pytest.mark.parametrize("pool", ["actors", "tasks"])
def test_ray_engine_scores_exactly_what_in_process_scores(
    champion: BatchChampion, frame: pl.DataFrame, tmp_path: Path, pool: str
) -> None:
    ray = RayScoringSettings(pool=pool, actors=2, block_rows=250)
    results = {
        engine: score_population(
            frame,
            champion,
            BatchScoreSettings(
                output_dir=tmp_path / engine, engine=engine, partition_rows=400, ray=ray
            ),
        )
        for engine in ("ray", "in_process")
    }
    assert results["ray"].engine == "ray" and results["ray"].partitions >= 3
    assert read_run(results["ray"].run_dir).equals(read_run(results["in_process"].run_dir))
    if pool == "tasks":  # a second run reuses the workers' predictors: the same scores
        again = score_population(
            frame,
            champion,
            BatchScoreSettings(
                output_dir=tmp_path / "again", engine="ray", partition_rows=400, ray=ray
            ),
        )
        assert read_run(again.run_dir).equals(read_run(results["in_process"].run_dir))


@pytest.mark.usefixtures("ray_session")
def test_warm_up_gives_every_concurrent_task_a_process_of_its_own(champion: BatchChampion) -> None:
    # three one-task-each warm-ups on 2 CPUs (half a CPU each): the rendezvous keeps a process
    # from taking a second one, which would leave a third process cold
    three = warm_ray_scoring(champion, RayScoringSettings(actors=3))
    assert (three.tasks, three.processes) == (3, 3)
    # more than fit at once (2 CPUs / 0.5) are capped instead of waiting out the rendezvous
    capped = warm_ray_scoring(champion, RayScoringSettings(actors=6), timeout_s=30)
    assert (capped.tasks, capped.processes) == (4, 4) and capped.seconds < 30


def test_an_interrupted_run_resumes_without_rescoring_written_partitions(
    champion: BatchChampion, frame: pl.DataFrame, tmp_path: Path
) -> None:
    settings = BatchScoreSettings(output_dir=tmp_path, partition_rows=300)

    def stop_after_two(index: int, path: Path) -> None:
        if index == 1:
            raise KeyboardInterrupt("the worker was preempted")

    with pytest.raises(KeyboardInterrupt):
        score_population(frame, champion, settings, on_partition=stop_after_two)
    directory = next(tmp_path.glob("churn/as_of=*/version=*"))
    assert sorted(p.name for p in directory.glob("part-*")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert not (directory / "_SUCCESS").exists()
    written = {i: partition_path(directory, i).stat() for i in (0, 1)}
    # a crashed writer's temporary file for partition 2, and a file that is not a partition
    (directory / ".part-00002.parquet.0a1b2c3d.tmp").write_bytes(b"PAR1 half a file")
    partition_path(directory, 3).write_bytes(b"not parquet")

    resumed = score_population(frame, champion, settings)
    assert resumed.skipped == [0, 1]
    assert resumed.scored == list(range(2, resumed.partitions)) and resumed.partitions >= 4
    for i, before in written.items():
        after = partition_path(directory, i).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(directory.glob(".*.tmp"))
    assert (directory / "_SUCCESS").is_file()
    fresh = score_population(
        frame, champion, BatchScoreSettings(output_dir=tmp_path / "fresh", partition_rows=300)
    )
    assert read_run(directory).drop("as_of").equals(read_run(fresh.run_dir).drop("as_of"))

    again = score_population(frame, champion, settings)
    assert again.scored == [] and again.skipped == list(range(resumed.partitions))
    with pytest.raises(ValueError, match="partition_rows"):
        score_population(
            frame, champion, BatchScoreSettings(output_dir=tmp_path, partition_rows=200)
        )


def test_auto_engine_uses_ray_above_the_crossover_or_with_a_cluster(tmp_path: Path) -> None:
    settings = BatchScoreSettings(output_dir=tmp_path, crossover_rows=10_000)
    assert choose_engine(settings, 9_999)[0] == "in_process"
    assert choose_engine(settings, 10_000)[0] == "ray"
    cluster = BatchScoreSettings(
        output_dir=tmp_path, ray=RayScoringSettings(address="ray://head:10001")
    )
    engine, reason = choose_engine(cluster, 10)
    assert engine == "ray" and "ray://head:10001" in reason
    assert (
        choose_engine(BatchScoreSettings(output_dir=tmp_path, engine="in_process"), 10**9)[0]
        == "in_process"
    )
    # the default: no crossover measured (Ray no faster per row on 2 cores), so in process at
    # any size unless a cluster is configured
    default = BatchScoreSettings(output_dir=tmp_path)
    engine, reason = choose_engine(default, 10**12)
    assert default.crossover_rows is None
    assert engine == "in_process" and "no crossover" in reason


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"engine": "spark"}, r"engine must be one of auto, in_process, ray; got 'spark'"),
        ({"partition_rows": 0}, r"partition_rows must be a positive number of rows, got 0"),
        ({"model": "anomaly_detector"}, r"model must be 'churn'"),
        ({"ray": {"actors": 0}}, r"ray.actors must be a positive number"),
        ({"ray": {"pool": "threads"}}, r"ray.pool must be one of actors, tasks; got 'threads'"),
        ({"crossover_rows": -1}, r"crossover_rows must be >= 0 or null \(no crossover\), got -1"),
    ],
)
def test_bad_settings_name_the_setting(
    kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        BatchScoreSettings(output_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


def test_bad_inputs_name_the_input(demo_home: DemoHome, tmp_path: Path) -> None:
    with pytest.raises(LookupError, match=r"no champion .*'churn'.*flows.retrain model=churn"):
        load_batch_champion(RegistrySettings(home=tmp_path))
    first = pl.read_parquet(demo_home.store.offline_dir / "customer_profile.parquet")[
        "event_timestamp"
    ].min()
    assert isinstance(first, datetime)
    with pytest.raises(ValueError, match=r"as_of=.* precedes every feature row .* earliest is"):
        population(demo_home.store, "churn_v2", first - timedelta(days=1))
    with pytest.raises(ValueError, match=r"beyond the features' TTL"):
        population(demo_home.store, "churn_v2", demo_home.warehouse.data_end() + timedelta(days=90))
    with pytest.raises(ValueError, match=r"no time zone"):
        population(demo_home.store, "churn_v2", datetime(2026, 11, 1))
    with pytest.raises(LookupError, match=r"unknown feature service 'churn_v9'"):
        population(demo_home.store, "churn_v9", datetime(2026, 11, 1, tzinfo=UTC))
    empty = FeatureStoreSettings(home=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no table for view 'customer_profile'"):
        population(empty, "churn_v2", datetime(2026, 11, 1, tzinfo=UTC))
