"""flows.batch_score end to end on a fresh platform home: the retrain flow makes a champion, the
batch flow scores every active customer with it, and a rerun resumes instead of rescoring."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from flows.batch_score import batch_score, parse_as_of
from flows.config import load
from flows.retrain import retrain

CHURN = [
    "model=churn",
    "model.churn.settings.iterations=40",
    "model.churn.settings.bootstrap_resamples=5",
    "model.churn.settings.ablation=[]",
]


@pytest.mark.usefixtures("prefect_harness")
def test_batch_score_flow_scores_everyone_and_resumes(tmp_path: Path) -> None:
    home = [f"paths.home={tmp_path}", "features.n_customers=2000"]
    with pytest.raises(LookupError, match="no champion"):
        batch_score(load("batch_score", home))
    trained = retrain(load("retrain", [*home, *CHURN]))["churn"]  # materializes first

    first = batch_score(load("batch_score", [*home, "partition_rows=600"]))
    assert (first["version"], first["semver"]) == (trained["version"], trained["semver"])
    assert first["engine"] == "in_process" and "crossover" in first["engine_reason"]
    run = Path(first["run_dir"])
    assert run.parent.parent == tmp_path / "batch_scores" / "churn"
    assert first["partitions"] == len(list(run.glob("part-*.parquet"))) >= 2
    scores = pl.read_parquet(run / "part-*.parquet")
    assert scores.height == first["rows"] > 1000
    assert scores["customer_id"].is_unique().all()
    assert scores["score"].is_between(0, 1).all()
    assert scores.select("model", "version", "semver").unique().rows() == [
        ("churn", trained["version"], trained["semver"])
    ]

    again = batch_score(load("batch_score", [*home, "partition_rows=600"]))
    assert again["run_dir"] == first["run_dir"]
    assert again["scored"] == [] and again["skipped"] == list(range(first["partitions"]))


def test_as_of_accepts_dates_times_and_null() -> None:
    assert parse_as_of("2026-11-29").isoformat() == "2026-11-29T00:00:00+00:00"
    assert parse_as_of("2026-11-29T06:00:00Z").isoformat() == "2026-11-29T06:00:00+00:00"
    assert parse_as_of(None).tzinfo is not None
    with pytest.raises(ValueError, match=r"as_of='yesterday': expected an ISO date or time"):
        parse_as_of("yesterday")


@pytest.mark.usefixtures("prefect_harness", "ray_session")
def test_batch_score_flow_on_ray_warms_the_workers_and_scores_what_in_process_scores(
    tmp_path: Path,
) -> None:
    home = [f"paths.home={tmp_path}", "features.n_customers=1000"]
    retrain(load("retrain", [*home, *CHURN]))
    runs = {
        engine: batch_score(
            load(
                "batch_score",
                [
                    *home,
                    f"engine={engine}",
                    "partition_rows=300",
                    f"batch.output_dir={tmp_path / engine}",
                    "batch.ray.actors=2",
                ],
            )
        )
        for engine in ("ray", "in_process")
    }
    assert runs["ray"]["engine"] == "ray" and runs["ray"]["partitions"] >= 2
    # warmed on a thread while the population was read: a process per concurrent task
    assert runs["ray"]["warm_up"] == {
        "tasks": 2,
        "processes": 2,
        "seconds": runs["ray"]["warm_up"]["seconds"],
    }
    assert runs["in_process"]["warm_up"] is None
    scores = {e: pl.read_parquet(Path(r["run_dir"]) / "part-*.parquet") for e, r in runs.items()}
    assert scores["ray"].drop("scored_at").equals(scores["in_process"].drop("scored_at"))
