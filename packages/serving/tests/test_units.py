"""Settings, the CLI's parsing and the prediction log's writer, without a server."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlinfra_serving import (
    Prediction,
    PredictionLog,
    PredictionLogSettings,
    ServingSettings,
    read_prediction_log,
)
from mlinfra_serving.cli import parse_settings


def test_settings_default_to_the_home_and_round_trip(tmp_path: Path) -> None:
    settings = ServingSettings(home=tmp_path, reload_interval_s=2.5, models=("churn",))
    assert settings.feature_store.home == tmp_path
    assert settings.registry_settings.home == tmp_path
    assert settings.predictions_dir == tmp_path / "predictions"
    assert ServingSettings.from_json(settings.to_json()) == settings


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ("fraud",)}, "subset of"),
        ({"models": ()}, "non-empty"),
        ({"reload_interval_s": 0}, "reload_interval_s"),
        ({"max_ids_per_request": 0}, "max_ids_per_request"),
        ({"missing_entity": "guess"}, "missing_entity"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, kwargs: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError, match=message):
        ServingSettings(home=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        PredictionLogSettings(batch_size=0)


def test_cli_builds_settings(tmp_path: Path) -> None:
    args, settings = parse_settings(
        [
            "--home",
            str(tmp_path),
            "--port",
            "9001",
            "--workers",
            "2",
            "--online-store",
            "redis",
            "--redis",
            "127.0.0.1:7777",
            "--models",
            "churn",
            "--reload-interval",
            "5",
        ]
    )
    assert (args.port, args.workers) == (9001, 2)
    assert settings.feature_store.online_store == "redis"
    assert settings.feature_store.redis_connection_string == "127.0.0.1:7777"
    assert settings.models == ("churn",)
    assert settings.reload_interval_s == 5


def _prediction(n: int, when: datetime) -> Prediction:
    return Prediction(
        f"r{n}", "churn", "1", "1.0.0", "churn_v2", n, None, n / 1000, when, (n, "basic")
    )


def test_prediction_log_batches_partitions_and_flushes_on_close(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path, PredictionLogSettings(batch_size=100, flush_interval_s=30))
    log.start()
    days = [datetime(2026, 11, 30, 23, 59, tzinfo=UTC), datetime(2026, 12, 1, 0, 1, tzinfo=UTC)]

    def producer(offset: int) -> None:
        for n in range(offset, offset + 250):
            log.append([_prediction(n, days[n % 2])])

    threads = [threading.Thread(target=producer, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()  # writes the last, partial batch although the interval has not passed
    frame = read_prediction_log(tmp_path, "churn")
    assert frame.height == 1000 and frame["request_id"].n_unique() == 1000
    assert log.written == 1000 and log.dropped == 0
    folders = sorted(p.name for p in (tmp_path / "churn").iterdir())
    assert folders == ["date=2026-11-30", "date=2026-12-01"]
    assert set(frame["day"].to_list()) == {None}
    assert frame.filter(frame["entity_id"] == 3)["feature_hash"].item() != (
        frame.filter(frame["entity_id"] == 5)["feature_hash"].item()
    )


def test_prediction_log_drops_and_counts_beyond_its_queue(tmp_path: Path) -> None:
    dropped: list[int] = []
    log = PredictionLog(
        tmp_path, PredictionLogSettings(max_queue=10), on_dropped=dropped.append
    )  # not started: nothing drains the queue
    when = datetime(2026, 12, 1, tzinfo=UTC)
    log.append([_prediction(n, when) for n in range(8)])
    log.append([_prediction(n, when) for n in range(8, 16)])
    assert log.dropped == 8 and dropped == [8]
    assert read_prediction_log(tmp_path, "churn").is_empty()


def test_compiled_trees_equal_catboost_with_categoricals_ctrs_and_nans() -> None:
    import numpy as np
    from catboost import CatBoostClassifier, Pool

    from mlinfra_serving.trees import compile_trees

    rng = np.random.default_rng(0)
    n = 3000
    plan = rng.choice(["basic", "pro", "enterprise"], n, p=[0.55, 0.35, 0.1])
    x = rng.normal(size=(n, 3))
    x[rng.random((n, 3)) < 0.1] = np.nan
    y = ((plan == "basic") + np.nan_to_num(x[:, 0]) + rng.normal(size=n) > 0.8).astype(int)
    rows = [[p, *r] for p, r in zip(plan, x.tolist(), strict=True)]
    new = [[str(rng.choice(["basic", "pro", "enterprise", "new"])), *r] for r in x[:500].tolist()]
    for options in ({}, {"one_hot_max_size": 4}, {"nan_mode": "Max"}):  # CTRs, one-hot, NaN high
        booster = CatBoostClassifier(
            iterations=40, depth=4, verbose=False, allow_writing_files=False, **options
        ).fit(Pool(rows, y, cat_features=[0]))
        trees, why = compile_trees(booster, ["plan", "a", "b", "c"])
        assert trees is not None, why
        want = booster.predict_proba(Pool(new, cat_features=[0]))[:, 1]
        floats = np.asarray([r[1:] for r in new], dtype=np.float32)
        got = trees.probabilities(floats, [(r[0],) for r in new])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
        one = [trees.probability(r[1:], (r[0],)) for r in new[:50]]
        np.testing.assert_allclose(one, want[:50], rtol=1e-12, atol=1e-15)
    text = CatBoostClassifier(iterations=5, verbose=False, allow_writing_files=False).fit(
        Pool([[f"w{i % 7} x", i % 3] for i in range(200)], [i % 2 for i in range(200)],
             text_features=[0])
    )  # fmt: skip
    trees, why = compile_trees(text, ["t", "n"])
    assert trees is None and "text" in why.lower(), why
