"""The churn model: CatBoost on a feature service's training set, split by time.

Labels: a customer active at an as-of date ``t`` (signed up at or before ``t``, not churned at or
before ``t``) is labelled 1 when it churns in ``(t, t + horizon]`` (30 days by default). Only as-of
dates whose horizon has matured by the end of the data are labelled.

Split: the latest ``evaluation_snapshots`` as-of dates are the evaluation window; validation
(early stopping) and training dates come before it, each *purged* so that its labels' horizon
ends before the next window starts: no training label is observed after the evaluation as-of.
Nothing is split at random across time. The library takes Polars frames and knows nothing of
Feast: the caller joins features to the labelled rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

__all__ = [
    "CHURN_LABEL",
    "ChurnModel",
    "ChurnSettings",
    "TimeSplit",
    "churn_labels",
    "time_split",
    "train_churn",
]

CHURN_LABEL = "churned_30d"
CATEGORICAL_FEATURES = frozenset({"plan", "region"})


@dataclass(frozen=True)
class ChurnSettings:
    """Training settings of the churn model."""

    feature_service: str = "churn_v2"
    baseline_feature_service: str = "churn_v1"
    horizon_days: int = 30
    train_snapshots: int = 4
    validation_snapshots: int = 1
    evaluation_snapshots: int = 2
    iterations: int = 400
    depth: int = 6
    learning_rate: float = 0.1
    l2_leaf_reg: float = 3.0
    early_stopping_rounds: int = 60
    seed: int = 7
    thread_count: int = -1
    ablation: list[str] = field(
        default_factory=lambda: ["account_age_days", "support_tickets_30d", "login_trend_8w"]
    )
    ablation_max_rows: int = 80_000
    bootstrap_resamples: int = 100

    @property
    def horizon(self) -> timedelta:
        return timedelta(days=self.horizon_days)


def churn_labels(
    customers: pl.DataFrame,
    churn_events: pl.DataFrame,
    as_of_dates: Sequence[datetime],
    data_end: datetime,
    horizon: timedelta = timedelta(days=30),
) -> pl.DataFrame:
    """Labelled rows ``(customer_id, event_timestamp, churned_30d)`` for matured as-of dates."""
    for name, frame, cols in (
        ("customers", customers, ["customer_id", "signup_at"]),
        ("churn_events", churn_events, ["customer_id", "churned_at"]),
    ):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}; expected {cols}")
    matured = sorted(t for t in as_of_dates if t + horizon <= data_end)
    if not matured:
        raise ValueError(
            f"no as-of date has a matured {horizon.days}-day horizon before {data_end}; "
            f"got {len(as_of_dates)} date(s), the latest {max(as_of_dates, default=None)}"
        )
    dates = pl.DataFrame({"event_timestamp": matured}).with_columns(
        pl.col("event_timestamp").cast(pl.Datetime("us", "UTC"))
    )
    first_churn = churn_events.group_by("customer_id").agg(pl.col("churned_at").min())
    return (
        customers.select("customer_id", "signup_at")
        .join(dates, how="cross")
        .filter(pl.col("signup_at") <= pl.col("event_timestamp"))
        .join(first_churn, on="customer_id", how="left")
        .filter(pl.col("churned_at").is_null() | (pl.col("churned_at") > pl.col("event_timestamp")))
        .with_columns(
            (
                pl.col("churned_at").is_not_null()
                & (pl.col("churned_at") <= pl.col("event_timestamp") + horizon)
            )
            .cast(pl.Int8)
            .alias(CHURN_LABEL)
        )
        .select("customer_id", "event_timestamp", CHURN_LABEL)
        .sort("event_timestamp", "customer_id")
    )


@dataclass(frozen=True)
class TimeSplit:
    train: pl.DataFrame
    validation: pl.DataFrame
    evaluation: pl.DataFrame

    def windows(self) -> dict[str, list[str]]:
        return {
            name: [t.isoformat() for t in frame["event_timestamp"].unique().sort()]
            for name, frame in (
                ("train", self.train),
                ("validation", self.validation),
                ("evaluation", self.evaluation),
            )
        }


def time_split(frame: pl.DataFrame, settings: ChurnSettings) -> TimeSplit:
    """Split labelled rows by as-of date into purged train / validation / evaluation windows."""
    if "event_timestamp" not in frame.columns:
        raise ValueError("the training set lacks column 'event_timestamp'")
    dates = sorted(frame["event_timestamp"].unique().to_list())
    evaluation = dates[-settings.evaluation_snapshots :]
    before_eval = [t for t in dates if t + settings.horizon <= evaluation[0]]
    validation = before_eval[-settings.validation_snapshots :]
    before_val = [t for t in before_eval if validation and t + settings.horizon <= validation[0]]
    train = before_val[-settings.train_snapshots :]
    if not (train and validation and len(evaluation) == settings.evaluation_snapshots):
        raise ValueError(
            f"the training set spans {len(dates)} as-of date(s) ({dates[0]} .. {dates[-1]}); "
            f"a purged time split needs {settings.evaluation_snapshots} evaluation, "
            f"{settings.validation_snapshots} validation and at least one training date, each "
            f"window's {settings.horizon_days}-day horizon ending before the next: use a "
            "longer history or fewer snapshots"
        )

    def take(ts: list[datetime]) -> pl.DataFrame:
        return frame.filter(pl.col("event_timestamp").is_in(ts))

    return TimeSplit(take(train), take(validation), take(evaluation))


def _check_labels(frame: pl.DataFrame, name: str) -> np.ndarray:
    if CHURN_LABEL not in frame.columns:
        raise ValueError(f"the {name} set lacks the label column {CHURN_LABEL!r}")
    if frame.is_empty():
        raise ValueError(f"the {name} set is empty; expected labelled rows")
    y = frame[CHURN_LABEL].to_numpy()
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(
            f"the {name} set has a single class ({classes.tolist()} in {CHURN_LABEL!r}, "
            f"{frame.height} rows); expected both churners and non-churners"
        )
    return y


@dataclass
class ChurnModel:
    """A trained CatBoost classifier with the feature list it expects, in order."""

    booster: Any  # catboost.CatBoostClassifier
    features: list[str]

    @property
    def categorical(self) -> list[str]:
        return [f for f in self.features if f in CATEGORICAL_FEATURES]

    def matrix(self, frame: pl.DataFrame) -> Any:
        """The pandas frame CatBoost scores: features in order, categoricals as strings."""
        missing = [f for f in self.features if f not in frame.columns]
        if missing:
            raise ValueError(f"frame lacks feature column(s) {missing}; expected {self.features}")
        return (
            frame.select(self.features)
            .with_columns(
                [pl.col(c).cast(pl.String).fill_null("unknown") for c in self.categorical]
            )
            .to_pandas()
        )

    def predict_proba(self, frame: pl.DataFrame) -> np.ndarray:
        """Churn probability per row."""
        return np.asarray(self.booster.predict_proba(self.matrix(frame))[:, 1])


def train_churn(
    train: pl.DataFrame,
    validation: pl.DataFrame,
    features: Sequence[str],
    settings: ChurnSettings,
) -> ChurnModel:
    """Fit CatBoost on ``train`` with early stopping on ``validation``; seeded, reproducible."""
    from catboost import CatBoostClassifier, Pool

    y_train = _check_labels(train, "training")
    y_val = _check_labels(validation, "validation")
    model = ChurnModel(booster=None, features=list(features))
    booster = CatBoostClassifier(
        iterations=settings.iterations,
        depth=settings.depth,
        learning_rate=settings.learning_rate,
        l2_leaf_reg=settings.l2_leaf_reg,
        random_seed=settings.seed,
        thread_count=settings.thread_count,
        eval_metric="AUC",
        od_type="Iter",
        od_wait=settings.early_stopping_rounds,
        use_best_model=True,
        allow_writing_files=False,
        verbose=False,
    )
    booster.fit(
        Pool(model.matrix(train), y_train, cat_features=model.categorical),
        eval_set=Pool(model.matrix(validation), y_val, cat_features=model.categorical),
    )
    model.booster = booster
    return model
