"""Feature pipelines: raw source tables -> feature tables keyed by entity and event timestamp.

Every pipeline is a Polars lazy query. A feature row stamped ``event_timestamp = t`` is computed
from raw rows at or before ``t`` only, so Feast's point-in-time join can never leak the future.

Churn features are computed on a grid of snapshot times ``end - k * cadence`` (weekly by
default, newest at the end of the data) for every customer signed up and not churned at that
time:

* ``customer_profile``: ``plan``, ``seats``, ``monthly_spend``, ``account_age_days``;
* ``customer_logins``: ``logins_30d``, ``days_since_last_login`` (null before the first login)
  and ``login_trend_8w``: the least-squares slope of the last eight weekly login counts divided
  by their mean plus 0.5 (a scale-free relative change per week; about -0.1 when logins fall by
  ~10% of their level each week, 0 when steady);
* ``customer_support``: ``support_tickets_30d`` and ``support_tickets_90d``.

Windows are right-closed, ``(t - window, t]``. They are computed by interleaving the snapshot
rows with the raw event rows of each customer and taking time-based rolling sums over the
customer's stream, which costs one sort and one pass per window.

Anomaly features (``account_activity_daily``) are one row per customer-day, stamped at the end of
the day: each activity metric and its robust z-score against the trailing 28 days before the day
(at least 7 of them): ``(x - median) / (IQR / 1.349)``, the interquartile range scaled to a
normal sigma like ``1.4826 * MAD``, and exact to compute with rolling quantiles; a zero IQR counts
as 1.

Event features (``product_event_features``) are one row per product event, stamped at the event.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from mlinfra_features.sources import Warehouse

__all__ = [
    "ACTIVITY_METRICS",
    "anomaly_features",
    "churn_features",
    "event_features",
    "feature_tables",
    "snapshot_grid",
]

ACTIVITY_METRICS = ("api_calls", "logins", "spend", "errors", "data_volume_mb")
TREND_WEEKS = 8
TRAILING_DAYS = 28
MIN_TRAILING_DAYS = 7
_IQR_TO_SIGMA = 1.349  # the interquartile range of a normal distribution, in sigmas
_TS = "event_timestamp"


def snapshot_grid(end: datetime, start: datetime, cadence: timedelta) -> pl.DataFrame:
    """Snapshot times ``end - k * cadence`` that are at or after ``start``, oldest first."""
    if cadence <= timedelta(0):
        raise ValueError(f"cadence must be positive, got {cadence}")
    if end < start:
        raise ValueError(f"snapshot window end {end} precedes its start {start}")
    n = int((end - start) / cadence) + 1
    times = [end - k * cadence for k in reversed(range(n))]
    return pl.DataFrame({_TS: times}, schema={_TS: pl.Datetime("us", "UTC")})


def _population(warehouse: Warehouse, grid: pl.DataFrame) -> pl.LazyFrame:
    """(customer_id, event_timestamp) for every customer signed up and not churned yet."""
    churn = warehouse.scan("churn_events").group_by("customer_id").agg(pl.col("churned_at").min())
    return (
        warehouse.scan("customers")
        .select("customer_id", "signup_at")
        .join(grid.lazy(), how="cross")
        .filter(pl.col("signup_at") <= pl.col(_TS))
        .join(churn, on="customer_id", how="left")
        .filter(pl.col("churned_at").is_null() | (pl.col("churned_at") > pl.col(_TS)))
        .select("customer_id", _TS)
    )


def _window_counts(
    events: pl.LazyFrame, population: pl.LazyFrame, windows: dict[str, timedelta]
) -> pl.LazyFrame:
    """Count each customer's events in ``(t - window, t]`` at every population row.

    Events (weight 1) and snapshot markers (weight 0) are interleaved per customer, sorted by
    time with events first at equal times, and summed over time-based rolling windows.
    """
    stream = pl.concat(
        [
            events.select("customer_id", _TS, weight=pl.lit(1, pl.Int32), marker=pl.lit(False)),
            population.select("customer_id", _TS, weight=pl.lit(0, pl.Int32), marker=pl.lit(True)),
        ]
    ).sort("customer_id", _TS, "marker")
    sums = [
        pl.col("weight").rolling_sum_by(_TS, window).over("customer_id").alias(name)
        for name, window in windows.items()
    ]
    last_event = (
        pl.when(~pl.col("marker")).then(pl.col(_TS)).forward_fill().over("customer_id")
    ).alias("last_event_at")
    return stream.with_columns(*sums, last_event).filter(pl.col("marker")).drop("weight", "marker")


def churn_features(
    warehouse: Warehouse, *, cadence: timedelta = timedelta(days=7), end: datetime | None = None
) -> dict[str, pl.LazyFrame]:
    """The three churn feature views, as lazy queries over the warehouse."""
    end = end or warehouse.data_end()
    logins = warehouse.scan("logins").rename({"timestamp": _TS})
    first_login = logins.select(pl.col(_TS).min()).collect().item()
    start = min(end, first_login + timedelta(weeks=TREND_WEEKS))
    grid = snapshot_grid(end, start, cadence)
    population = _population(warehouse, grid).collect().lazy()

    profile = (
        population.join(warehouse.scan("customers"), on="customer_id", how="left")
        .with_columns(
            account_age_days=(pl.col(_TS) - pl.col("signup_at")).dt.total_days().cast(pl.Int64)
        )
        .select("customer_id", _TS, "plan", "seats", "monthly_spend", "account_age_days")
    )

    week_windows = {f"w{k}": timedelta(weeks=k) for k in range(1, TREND_WEEKS + 1)}
    counts = _window_counts(logins, population, {"logins_30d": timedelta(days=30), **week_windows})
    weekly = [
        pl.col(f"w{k}") - (pl.col(f"w{k - 1}") if k > 1 else 0) for k in range(1, TREND_WEEKS + 1)
    ]
    # x = 7 for the latest week (k=1) down to 0 for the oldest (k=8), centred at 3.5.
    centred_x = [(TREND_WEEKS - k) - (TREND_WEEKS - 1) / 2 for k in range(1, TREND_WEEKS + 1)]
    slope = pl.sum_horizontal([c * x for c, x in zip(weekly, centred_x, strict=True)]) / sum(
        x * x for x in centred_x
    )
    mean = pl.col(f"w{TREND_WEEKS}") / TREND_WEEKS
    login_view = counts.select(
        "customer_id",
        _TS,
        pl.col("logins_30d").cast(pl.Int64),
        days_since_last_login=(pl.col(_TS) - pl.col("last_event_at")).dt.total_microseconds()
        / 86_400e6,
        login_trend_8w=slope / (mean + 0.5),
    )

    tickets = warehouse.scan("support_tickets").rename({"opened_at": _TS})
    support_view = _window_counts(
        tickets,
        population,
        {"support_tickets_30d": timedelta(days=30), "support_tickets_90d": timedelta(days=90)},
    ).select(
        "customer_id",
        _TS,
        pl.col("support_tickets_30d").cast(pl.Int64),
        pl.col("support_tickets_90d").cast(pl.Int64),
    )
    return {
        "customer_profile": profile,
        "customer_logins": login_view,
        "customer_support": support_view,
    }


def anomaly_features(warehouse: Warehouse) -> pl.LazyFrame:
    """Per customer-day activity metrics with robust z-scores against the trailing 28 days.

    A customer's activity rows are contiguous days (signup to churn), so the trailing 28 days
    are the 28 previous rows of that customer.
    """
    activity = warehouse.scan("account_activity").sort("customer_id", "day")

    def trailing(metric: str, quantile: float) -> pl.Expr:
        return (
            pl.col(metric)
            .cast(pl.Float64)
            .shift(1)
            .rolling_quantile(quantile, window_size=TRAILING_DAYS, min_samples=MIN_TRAILING_DAYS)
            .over("customer_id")
        )

    scores = []
    for m in ACTIVITY_METRICS:
        median, q25, q75 = trailing(m, 0.5), trailing(m, 0.25), trailing(m, 0.75)
        scale = (q75 - q25) / _IQR_TO_SIGMA
        scores.append(
            ((pl.col(m) - median) / pl.when(scale > 0).then(scale).otherwise(1.0)).alias(f"{m}_z")
        )
    return activity.select(
        "customer_id",
        (pl.col("day").cast(pl.Datetime("us", "UTC")) + pl.duration(days=1)).alias(_TS),
        *[pl.col(m).cast(pl.Float64) for m in ACTIVITY_METRICS],
        *scores,
    )


def event_features(warehouse: Warehouse) -> pl.LazyFrame:
    """One row per product event: its name, module, text and numeric attributes."""
    return warehouse.scan("product_events").select(
        "event_id",
        _TS,
        "customer_id",
        pl.col("name").alias("event_name"),
        "module",
        pl.col("text").alias("event_text"),
        "duration_s",
        "items_count",
        "value_usd",
    )


def feature_tables(
    warehouse: Warehouse, *, churn_cadence: timedelta = timedelta(days=7)
) -> dict[str, pl.DataFrame]:
    """Every feature table of the Feast repository, computed and collected."""
    lazy = {
        **churn_features(warehouse, cadence=churn_cadence),
        "account_activity_daily": anomaly_features(warehouse),
        "product_event_features": event_features(warehouse),
    }
    frames = pl.collect_all(list(lazy.values()))
    return dict(zip(lazy, frames, strict=True))
