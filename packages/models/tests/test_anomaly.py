"""The anomaly detector on real Ray Train and real torch: detection, spot-safe resume, bad input.

Every Ray Train run starts a controller and worker processes (tens of seconds on 2 CPUs), so the
runs are module fixtures shared by the tests: one uninterrupted reference run, and one run that
is stopped (as on SIGTERM), rerun, killed by an injected failure and resumed by Ray.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from mlinfra_models.anomaly import (
    ACTIVITY_METRICS,
    ANOMALY_FEATURES,
    COMPLETE_MARKER,
    AnomalyModel,
    AnomalySettings,
    TrainingStopped,
    evaluate_anomaly,
    latest_checkpoint,
    train_anomaly,
)

pytestmark = pytest.mark.ray

N_CUSTOMERS, N_DAYS = 100, 30
ANOMALY_RATE = 0.015
STOP_AT, FAIL_AT, EVERY = 25, 57, 10


def activity(seed: int = 0) -> pl.DataFrame:
    """Daily activity per customer with robust z-scores and known injected spikes (``truth``)."""
    rng = np.random.default_rng(seed)
    n = N_CUSTOMERS * N_DAYS
    customer = np.repeat(np.arange(N_CUSTOMERS), N_DAYS)
    day = np.tile(np.arange(N_DAYS), N_CUSTOMERS)
    scale = rng.gamma(4, 0.25, N_CUSTOMERS)[customer]
    metrics = {
        "api_calls": rng.poisson(200 * scale),
        "logins": rng.poisson(5 * scale),
        "spend": rng.gamma(5, 20 * scale),
        "errors": rng.poisson(2 * scale),
        "data_volume_mb": rng.gamma(3, 50 * scale),
    }
    truth = rng.random(n) < ANOMALY_RATE
    spikes = {"api_calls": 8.0, "errors": 12.0, "data_volume_mb": 6.0}
    for metric, factor in spikes.items():
        hit = truth & (rng.random(n) < 0.7)
        metrics[metric] = np.where(hit, metrics[metric] * factor + 20, metrics[metric])
    frame = pl.DataFrame(
        {"customer_id": customer, "day": day, **{m: v.astype(float) for m, v in metrics.items()}}
    )
    z = []
    for m in ACTIVITY_METRICS:
        median = pl.col(m).median().over("customer_id")
        iqr = (pl.col(m).quantile(0.75) - pl.col(m).quantile(0.25)).over("customer_id") / 1.349
        value = (pl.col(m) - median) / pl.when(iqr > 0).then(iqr).otherwise(1.0)
        z.append(pl.when(pl.col("day") >= 7).then(value).alias(f"{m}_z"))  # null: no history
    return frame.with_columns(*z, pl.Series("truth", truth))


def settings_for(tmp: Path, name: str, **overrides: Any) -> AnomalySettings:
    base = AnomalySettings(
        hidden_sizes=[6, 3],
        epochs=4,
        batch_size=128,
        lr=1e-2,
        seed=11,
        threshold_quantile=0.98,
        checkpoint_every_steps=EVERY,
        num_workers=2,
        storage_path=str(tmp),
        run_name=name,
        max_failures=1,
    )
    return replace(base, **overrides)


def weights(model: AnomalyModel) -> dict[str, np.ndarray]:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def frame() -> pl.DataFrame:
    return activity()


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("anomaly_checkpoints")


@pytest.fixture(scope="module")
def reference(ray_session: None, frame: pl.DataFrame, storage: Path) -> AnomalyModel:
    """An uninterrupted run. It checkpoints by time, with an interval shorter than any step, so
    that every step is due (the interval does not change the weights): one Ray Train run for the
    reference weights and the time-interval behaviour."""
    settings = settings_for(
        storage,
        "reference",
        checkpoint_every_steps=None,
        checkpoint_every_seconds=1e-9,
        notice_poll_steps=1,
        keep_checkpoints=3,
    )
    return train_anomaly(frame, settings)


@pytest.fixture(scope="module")
def interrupted(
    ray_session: None, frame: pl.DataFrame, storage: Path
) -> tuple[TrainingStopped, AnomalyModel]:
    """Stopped at STOP_AT (the job ends), rerun; the rerun fails once at FAIL_AT; Ray resumes."""
    with pytest.raises(TrainingStopped) as stopped:
        train_anomaly(frame, settings_for(storage, "interrupted", stop_at_step=STOP_AT))
    model = train_anomaly(frame, settings_for(storage, "interrupted", fail_at_step=FAIL_AT))
    return stopped.value, model


def test_flags_injected_anomalies_far_above_chance(
    frame: pl.DataFrame, reference: AnomalyModel
) -> None:
    truth = frame["truth"].to_numpy()
    scores = reference.score(frame)
    result = evaluate_anomaly(truth, scores, reference.threshold, k=int(truth.sum()))
    assert result.pr_auc > max(0.5, 20 * result.base_rate)
    assert result.precision_at_k > 0.5
    assert result.recall_at_threshold > 0.6
    assert reference.flags(frame).mean() == pytest.approx(0.02, abs=0.01)
    assert reference.meta["global_step"] == reference.meta["total_steps"] == 4 * (3000 // 128)


def test_stopped_job_resumes_from_its_checkpoint_on_rerun(
    interrupted: tuple[TrainingStopped, AnomalyModel],
) -> None:
    stopped, model = interrupted
    assert stopped.step == STOP_AT
    assert stopped.checkpoint.name == f"checkpoint_{STOP_AT:08d}"
    # the rerun started from the stop, not from step 0
    assert model.meta["resumed_from"][0] == STOP_AT


def test_failure_mid_training_resumes_and_loses_at_most_one_interval(
    interrupted: tuple[TrainingStopped, AnomalyModel],
) -> None:
    _, model = interrupted
    restarts = model.meta["resumed_from"]
    assert len(restarts) == 2  # the rerun, then Ray's restart after the injected failure
    assert FAIL_AT - EVERY <= restarts[1] <= FAIL_AT
    assert model.meta["global_step"] == model.meta["total_steps"]


def test_interrupted_run_ends_with_the_uninterrupted_weights(
    reference: AnomalyModel, interrupted: tuple[TrainingStopped, AnomalyModel]
) -> None:
    _, model = interrupted
    ref, got = weights(reference), weights(model)
    assert ref.keys() == got.keys()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-6, err_msg=key)
    assert model.threshold == pytest.approx(reference.threshold, abs=1e-6)


def test_save_round_trips_and_partial_checkpoints_are_never_loaded(
    frame: pl.DataFrame, reference: AnomalyModel, tmp_path: Path
) -> None:
    saved = reference.save(tmp_path / "model")
    loaded = AnomalyModel.from_checkpoint(saved, features=list(ANOMALY_FEATURES))
    np.testing.assert_array_equal(loaded.score(frame), reference.score(frame))
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp dirs left behind

    partial = tmp_path / "run" / "checkpoint_99999999"
    shutil.copytree(saved, partial)
    (partial / COMPLETE_MARKER).unlink()
    shutil.copytree(saved, tmp_path / "run" / "checkpoint_00000001")
    with pytest.raises(ValueError, match="incomplete"):
        AnomalyModel.from_checkpoint(partial)
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoint_00000001"


def test_incompatible_checkpoint_names_what_differs(
    reference: AnomalyModel, tmp_path: Path
) -> None:
    saved = reference.save(tmp_path / "model")
    with pytest.raises(ValueError, match="features"):
        AnomalyModel.from_checkpoint(saved, features=["api_calls", "logins"])
    meta = json.loads((saved / "meta.json").read_text())
    (saved / "meta.json").write_text(json.dumps({**meta, "format_version": 0}))
    with pytest.raises(ValueError, match="format_version"):
        AnomalyModel.from_checkpoint(saved)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.head(0), "empty"),
        (lambda f: f.drop("errors_z"), r"lacks feature column\(s\) \['errors_z'\]"),
        (lambda f: f.with_columns(spend=pl.lit(float("nan"))), "NaN or infinite.*spend"),
        (lambda f: f.with_columns(logins_z=pl.lit(float("inf"))), "NaN or infinite.*logins_z"),
    ],
)
def test_bad_training_input_names_the_input(
    frame: pl.DataFrame, tmp_path: Path, change: Any, message: str
) -> None:
    # rejected before any Ray work starts, so no cluster is needed
    with pytest.raises(ValueError, match=message):
        train_anomaly(change(frame), settings_for(tmp_path, "bad"))


def test_scoring_bad_input_and_bad_evaluation_input(
    frame: pl.DataFrame, reference: AnomalyModel
) -> None:
    with pytest.raises(ValueError, match="lacks feature column"):
        reference.score(frame.drop("api_calls"))
    with pytest.raises(ValueError, match="same length"):
        evaluate_anomaly(np.zeros(3), np.zeros(4), 0.0, k=1)
    with pytest.raises(ValueError, match="no anomaly"):
        evaluate_anomaly(np.zeros(3), np.zeros(3), 0.0, k=1)


def test_time_interval_checkpoints_every_worker_together(
    reference: AnomalyModel, storage: Path
) -> None:
    # Every step is due: a checkpoint per step, written by every worker at the same step (a
    # report is a collective), and the retained ones are the latest consecutive steps.
    steps = reference.meta["total_steps"]
    assert reference.meta["checkpoints"] == steps == 4 * (3000 // 128)
    kept = sorted(p.name for p in (storage / "reference").glob("checkpoint_0*"))
    assert kept == [f"checkpoint_{s:08d}" for s in range(steps - 2, steps + 1)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"checkpoint_every_steps": None, "checkpoint_every_seconds": None}, "set checkpoint_"),
        ({"checkpoint_every_steps": 0}, "checkpoint_every_steps must be >= 1 or None"),
        ({"checkpoint_every_seconds": 0.0}, "checkpoint_every_seconds must be > 0"),
        ({"controller_poll_s": -1.0}, "controller_poll_s must be > 0"),
    ],
)
def test_checkpoint_interval_settings_are_checked(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        settings_for(tmp_path, "bad", **overrides)
