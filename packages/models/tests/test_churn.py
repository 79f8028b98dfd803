from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from mlinfra_models import CHURN_LABEL, ChurnSettings, churn_labels, time_split, train_churn


def test_labels_are_churn_within_the_horizon_for_active_customers() -> None:
    t = datetime(2026, 9, 1, tzinfo=UTC)
    customers = pl.DataFrame(
        {
            "customer_id": [1, 2, 3, 4],
            "signup_at": [t - timedelta(days=100)] * 3 + [t + timedelta(days=1)],
        }
    )
    churn = pl.DataFrame(
        {
            "customer_id": [1, 2],
            "churned_at": [t + timedelta(days=10), t + timedelta(days=45)],
        }
    )
    labels = churn_labels(customers, churn, [t, t + timedelta(days=20)], t + timedelta(days=60))
    first = labels.filter(pl.col("event_timestamp") == t)
    assert dict(zip(first["customer_id"], first[CHURN_LABEL], strict=True)) == {1: 1, 2: 0, 3: 0}
    second = labels.filter(pl.col("event_timestamp") == t + timedelta(days=20))
    # customer 1 churned before the second date; customer 4 signed up in between
    assert dict(zip(second["customer_id"], second[CHURN_LABEL], strict=True)) == {2: 1, 3: 0, 4: 0}
    with pytest.raises(ValueError, match="matured"):
        churn_labels(customers, churn, [t], t + timedelta(days=10))
    with pytest.raises(ValueError, match=r"customers lacks column\(s\) \['signup_at'\]"):
        churn_labels(customers.drop("signup_at"), churn, [t], t + timedelta(days=60))


def test_time_split_is_purged_and_never_random(rows: pl.DataFrame) -> None:
    settings = ChurnSettings(train_snapshots=4)
    split = time_split(rows, settings)
    horizon = timedelta(days=30)
    train_end = split.train["event_timestamp"].max()
    val_start, val_end = (
        split.validation["event_timestamp"].min(),
        split.validation["event_timestamp"].max(),
    )
    eval_start = split.evaluation["event_timestamp"].min()
    assert train_end + horizon <= val_start  # type: ignore[operator]
    assert val_end + horizon <= eval_start  # type: ignore[operator]
    assert split.evaluation["event_timestamp"].n_unique() == 2
    assert eval_start == sorted(rows["event_timestamp"].unique())[-2]
    with pytest.raises(ValueError, match="purged time split"):
        time_split(rows.filter(pl.col("event_timestamp") >= eval_start), settings)


def test_training_is_seeded_and_learns(rows: pl.DataFrame, fast_settings: ChurnSettings) -> None:
    split = time_split(rows, fast_settings)
    features = ["plan", "logins_30d", "login_trend_8w", "support_tickets_30d", "account_age_days"]
    a = train_churn(split.train, split.validation, features, fast_settings)
    b = train_churn(split.train, split.validation, features, fast_settings)
    pa, pb = a.predict_proba(split.evaluation), b.predict_proba(split.evaluation)
    assert (pa == pb).all()
    falling = split.evaluation.head(1).with_columns(
        login_trend_8w=pl.lit(-0.4), support_tickets_30d=pl.lit(3)
    )
    steady = falling.with_columns(login_trend_8w=pl.lit(0.0), support_tickets_30d=pl.lit(0))
    assert a.predict_proba(falling)[0] > a.predict_proba(steady)[0]


def test_bad_training_sets_are_named(rows: pl.DataFrame, fast_settings: ChurnSettings) -> None:
    split = time_split(rows, fast_settings)
    one_class = split.train.with_columns(pl.lit(0, pl.Int8).alias(CHURN_LABEL))
    with pytest.raises(ValueError, match="training set has a single class"):
        train_churn(one_class, split.validation, ["seats"], fast_settings)
    with pytest.raises(ValueError, match=f"lacks the label column '{CHURN_LABEL}'"):
        train_churn(split.train.drop(CHURN_LABEL), split.validation, ["seats"], fast_settings)
    with pytest.raises(ValueError, match="validation set is empty"):
        train_churn(split.train, split.validation.clear(), ["seats"], fast_settings)
    with pytest.raises(ValueError, match=r"lacks feature column\(s\) \['nope'\]"):
        train_churn(split.train, split.validation, ["nope"], fast_settings)
