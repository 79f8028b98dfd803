"""Raw source tables: the deterministic demo warehouse and a validated reader for any warehouse.

The demo warehouse is what makes every mlinfra job runnable on a fresh machine. It is generated
locally from a seed, sized by ``n_customers``, and its timeline ends at ``as_of`` (default: now,
so freshly generated data is fresh). The same seed and ``as_of`` give the same tables.

Generative process (the hidden truth that tests and model evaluations rely on)
------------------------------------------------------------------------------
Customers
    ``plan`` is basic (55%), pro (35%) or enterprise (10%); ``seats`` is log-normal per plan;
    ``monthly_spend`` = per-seat price of the plan x seats x log-normal noise; ``region`` is
    uniform over na/eu/apac/latam. Account age at ``as_of`` is 14 days plus a gamma variate
    (shape 1.1, mean ~520 days), so a sizeable share of accounts is young; accounts that sign up
    inside the history window start with no logins before their signup.

Engagement and churn (simulated week by week over ``history_weeks``)
    Each customer has a base weekly login rate (plan, seats^0.2 and a log-normal personal
    factor with sigma 0.6 that no feature sees directly). Each week a healthy customer may enter
    a *decline* with a hazard that is higher for young accounts (x ``1 + 2.5 exp(-age/120d)``)
    and for low spenders. A decline lasts 5 to 10 weeks; over it the login rate falls linearly to
    10-50% of the base and the support-ticket rate rises linearly to 2.5-5x the base. At its end
    the customer churns with probability 0.75, otherwise recovers to the base rate. Young
    accounts also churn suddenly, without a decline, with a weekly hazard
    ``0.004 exp(-age/90d)``; this is what only ``account_age_days`` can see. So young accounts,
    falling logins and frequent tickets all raise churn risk, and the three v2.3 features
    (account age, ticket frequency, login-frequency trend) carry signal that the baseline
    (plan, seats, spend, logins in 30 days, days since last login) only partly sees.

Logins and support tickets
    Weekly counts are Poisson with the customer's rate times the week's multiplier and the share
    of the week the customer was active; timestamps are uniform within the active part of the
    week. Tickets have a severity (low/medium/high, higher in declines) and a topic.

Account activity and anomalies
    For the last ``activity_days`` days, one row per active customer-day: ``logins`` (the day's
    count from the logins table), ``api_calls`` (customer level x weekday factor, negative
    binomial), ``errors`` (binomial on api calls), ``spend`` (monthly spend / 30 with noise) and
    ``data_volume_mb`` (proportional to api calls). About ``anomaly_rate`` of customer-days start
    an injected anomaly: a *spike* (one day, api calls, errors and volume x 4-12), a *drop* (one
    day, api calls and volume x 0-0.1) or a *level shift* (api calls and volume x 2.5-4 from that
    day on). ``anomaly_truth`` lists each anomalous customer-day with its kind (level shifts mark
    their first three days) and is meant for evaluation only.

Product events and annotations
    See :mod:`mlinfra_features._events`: events of 24 fine categories (taxonomy v1) with name,
    module, text and numeric attributes, and a multi-annotator sample with realistic confusions.

``delay_hours`` holds back everything newer than ``as_of - delay``, as a late upstream job would.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from mlinfra_features._events import generate_product_events

__all__ = [
    "SCHEMAS",
    "DemoWarehouseSettings",
    "SourceError",
    "Warehouse",
    "generate_demo_warehouse",
    "write_parquet_atomic",
]

UTC_US = pl.Datetime("us", "UTC")

#: The columns every warehouse (demo or real) must provide, with their Polars types.
SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "customers": {
        "customer_id": pl.Int64(),
        "signup_at": UTC_US,
        "plan": pl.String(),
        "seats": pl.Int64(),
        "monthly_spend": pl.Float64(),
        "region": pl.String(),
    },
    "logins": {"customer_id": pl.Int64(), "timestamp": UTC_US},
    "support_tickets": {
        "customer_id": pl.Int64(),
        "opened_at": UTC_US,
        "severity": pl.String(),
        "topic": pl.String(),
    },
    "churn_events": {"customer_id": pl.Int64(), "churned_at": UTC_US},
    "account_activity": {
        "customer_id": pl.Int64(),
        "day": pl.Date(),
        "api_calls": pl.Int64(),
        "logins": pl.Int64(),
        "spend": pl.Float64(),
        "errors": pl.Int64(),
        "data_volume_mb": pl.Float64(),
    },
    "anomaly_truth": {"customer_id": pl.Int64(), "day": pl.Date(), "kind": pl.String()},
    "product_events": {
        "event_id": pl.Int64(),
        "customer_id": pl.Int64(),
        "event_timestamp": UTC_US,
        "name": pl.String(),
        "module": pl.String(),
        "text": pl.String(),
        "duration_s": pl.Float64(),
        "items_count": pl.Int64(),
        "value_usd": pl.Float64(),
        "true_category": pl.String(),
    },
    "event_annotations": {
        "event_id": pl.Int64(),
        "annotator_id": pl.String(),
        "label": pl.String(),
    },
}

#: Tables that may legitimately be empty (a tiny demo can have no anomalies or churn yet).
_MAY_BE_EMPTY = frozenset({"churn_events", "anomaly_truth", "event_annotations"})

_MANIFEST = "_manifest.json"
_WEEK = np.timedelta64(7, "D").astype("timedelta64[us]")
_DAY = np.timedelta64(1, "D").astype("timedelta64[us]")
#: Customers per block where the generator works through customers in blocks (memory).
_BLOCK_CUSTOMERS = 50_000


class SourceError(ValueError):
    """A source table is missing, empty or does not have the expected columns."""


@dataclass(frozen=True)
class DemoWarehouseSettings:
    """Size, seed and timeline of the demo warehouse."""

    n_customers: int = 100_000
    seed: int = 7
    as_of: datetime | str | None = None
    delay_hours: float = 0.0
    history_weeks: int = 26
    activity_days: int = 56
    anomaly_rate: float = 0.004
    events_per_customer: float = 0.2
    n_annotated_events: int = 500

    def resolved_as_of(self) -> datetime:
        """``as_of`` as an aware UTC datetime; now (to the second) when unset."""
        as_of = self.as_of or datetime.now(UTC)
        if isinstance(as_of, str):
            as_of = datetime.fromisoformat(as_of)
        if as_of.tzinfo is None:
            as_of = as_of.replace(tzinfo=UTC)
        return as_of.astimezone(UTC).replace(microsecond=0)

    @property
    def delay(self) -> timedelta:
        """How much of the newest data is held back, as a late upstream job would."""
        return timedelta(hours=self.delay_hours)

    def validate(self) -> None:
        if self.n_customers < 10:
            raise ValueError(f"n_customers must be at least 10, got {self.n_customers}")
        if self.history_weeks < 10:
            raise ValueError(f"history_weeks must be at least 10, got {self.history_weeks}")
        if not 29 <= self.activity_days <= 7 * self.history_weeks:
            raise ValueError(
                f"activity_days must be between 29 and {7 * self.history_weeks} "
                f"(7 x history_weeks), got {self.activity_days}"
            )
        if self.delay_hours < 0:
            raise ValueError(f"delay_hours must not be negative, got {self.delay_hours}")
        if not 0 <= self.anomaly_rate < 0.2:
            raise ValueError(f"anomaly_rate must be in [0, 0.2), got {self.anomaly_rate}")


def write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` through a temporary file and a rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        frame.write_parquet(tmp, compression="zstd", statistics=True)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json_atomic(payload: Mapping[str, object], path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2, default=str)
    Path(tmp).replace(path)


class Warehouse:
    """A directory of Parquet source tables, read lazily and validated against :data:`SCHEMAS`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def exists(self) -> bool:
        return (self.root / _MANIFEST).is_file()

    def manifest(self) -> dict[str, object]:
        path = self.root / _MANIFEST
        if not path.is_file():
            raise SourceError(f"no warehouse at {self.root}: {_MANIFEST} is missing")
        manifest: dict[str, object] = json.loads(path.read_text())
        return manifest

    def data_end(self) -> datetime:
        """The newest instant the warehouse covers (``as_of - delay`` for the demo)."""
        return datetime.fromisoformat(str(self.manifest()["data_end"]))

    def scan(self, table: str) -> pl.LazyFrame:
        """Lazily read ``table``, checking that it exists, is not empty and has its columns."""
        if table not in SCHEMAS:
            raise SourceError(f"unknown source table {table!r}; expected one of {sorted(SCHEMAS)}")
        path = self.path(table)
        if not path.is_file():
            raise SourceError(f"source table {table!r} is missing: expected {path}")
        frame = pl.scan_parquet(path)
        schema = frame.collect_schema()
        expected = SCHEMAS[table]
        missing = [c for c in expected if c not in schema]
        if missing:
            raise SourceError(
                f"source table {table!r} ({path}) lacks column(s) {missing}; "
                f"expected columns {list(expected)}"
            )
        wrong = {
            c: str(schema[c]) for c, dtype in expected.items() if not _same_type(schema[c], dtype)
        }
        if wrong:
            raise SourceError(
                f"source table {table!r} ({path}) has column(s) of the wrong type {wrong}; "
                f"expected { ({c: str(expected[c]) for c in wrong}) }"
            )
        if table not in _MAY_BE_EMPTY and frame.select(pl.len()).collect().item() == 0:
            raise SourceError(f"source table {table!r} ({path}) is empty; expected rows")
        return frame.select(list(expected))


def _same_type(actual: pl.DataType, expected: pl.DataType) -> bool:
    if isinstance(expected, pl.Datetime):
        return isinstance(actual, pl.Datetime) and actual.time_zone == expected.time_zone
    return actual == expected


@dataclass
class _Timeline:
    start: np.datetime64  # beginning of the simulated history
    end: np.datetime64  # as_of
    weeks: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n_weeks = int((self.end - self.start) // _WEEK)
        self.weeks = self.start + np.arange(n_weeks) * _WEEK


def generate_demo_warehouse(settings: DemoWarehouseSettings, root: Path) -> Warehouse:
    """Generate the demo warehouse into ``root`` and return it.

    Each table is written atomically as soon as it is generated, and dropped before the next
    one is made, so that memory holds about one large table at a time; the manifest (seed,
    size, ``as_of``, ``data_end``, row counts) is written last, so a warehouse with a manifest
    is complete.
    """
    settings.validate()
    as_of = settings.resolved_as_of()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / _MANIFEST).unlink(missing_ok=True)
    rows: dict[str, int] = {}
    for name, frame in _generate_tables(settings):
        write_parquet_atomic(frame, root / f"{name}.parquet")
        rows[name] = frame.height
        del frame  # before the next table is generated
    settings_dict = asdict(settings) | {"as_of": as_of.isoformat()}
    _write_json_atomic(
        {
            "generator": "mlinfra demo warehouse",
            "settings": settings_dict,
            "as_of": as_of.isoformat(),
            "data_end": (as_of - settings.delay).isoformat(),
            "rows": {name: rows[name] for name in SCHEMAS},
        },
        root / _MANIFEST,
    )
    return Warehouse(root)


def demo_tables(settings: DemoWarehouseSettings) -> dict[str, pl.DataFrame]:
    """Generate every demo table in memory (see the module docstring for the process)."""
    tables = dict(_generate_tables(settings))
    return {name: tables[name] for name in SCHEMAS}


def _generate_tables(settings: DemoWarehouseSettings) -> Iterator[tuple[str, pl.DataFrame]]:
    """Generate the demo tables one at a time, in the order the random draws need them.

    Each table is final (cut at ``as_of - delay`` and cast to :data:`SCHEMAS`) when yielded, and
    this generator keeps no reference to it, so a consumer that drops it frees it.
    """
    settings.validate()
    as_of = settings.resolved_as_of()
    rng = np.random.default_rng(settings.seed)
    end = np.datetime64(as_of.replace(tzinfo=None), "us")
    timeline = _Timeline(start=end - settings.history_weeks * _WEEK, end=end)
    cutoff = end - np.timedelta64(int(settings.delay.total_seconds() * 1e6), "us")
    cut = pl.lit(cutoff).dt.replace_time_zone("UTC")
    cut_day = (cutoff - _DAY).astype("datetime64[D]")  # last complete day before the cutoff

    def final(
        name: str, frame: pl.DataFrame, keep: pl.Expr | None = None
    ) -> tuple[str, pl.DataFrame]:
        if keep is not None:
            frame = frame.filter(keep)
        return name, frame.select([pl.col(c).cast(t) for c, t in SCHEMAS[name].items()])

    customers = _customers(rng, settings.n_customers, end)
    sim = _simulate_engagement(rng, customers, timeline)
    logins = _weekly_events_to_rows(
        rng, sim.pop("login_counts"), customers["signup_at"], sim["churned_at"], timeline
    )
    daily_logins = _daily_counts(logins, settings.n_customers, end, settings.activity_days)
    login_table = final("logins", logins, pl.col("timestamp") <= cut)
    del logins
    yield login_table
    del login_table

    ticket_rows = _weekly_events_to_rows(
        rng, sim.pop("ticket_counts"), customers["signup_at"], sim["churned_at"], timeline
    )
    tickets = _ticket_attributes(rng, ticket_rows, sim, timeline)
    del ticket_rows
    yield final("support_tickets", tickets, pl.col("opened_at") <= cut)
    del tickets

    activity, truth = _account_activity(
        rng, customers, sim, daily_logins, timeline=timeline, settings=settings, cut_day=cut_day
    )
    del daily_logins
    yield final("account_activity", activity)  # cut at cut_day
    del activity
    yield final("anomaly_truth", truth)
    del truth

    customers_df = pl.DataFrame(
        {
            "customer_id": customers["customer_id"],
            "signup_at": customers["signup_at"],
            "plan": customers["plan"],
            "seats": customers["seats"],
            "monthly_spend": customers["monthly_spend"],
            "region": customers["region"],
        }
    ).with_columns(pl.col("signup_at").dt.replace_time_zone("UTC"))
    churned = sim["churned_at"]
    churn_mask = ~np.isnat(churned)
    churn_df = pl.DataFrame(
        {"customer_id": customers["customer_id"][churn_mask], "churned_at": churned[churn_mask]}
    ).with_columns(pl.col("churned_at").dt.replace_time_zone("UTC"))
    yield final("customers", customers_df.sort("customer_id"), pl.col("signup_at") <= cut)
    yield final("churn_events", churn_df.sort("customer_id"), pl.col("churned_at") <= cut)

    window_start = datetime.fromisoformat(str(timeline.start)).replace(tzinfo=UTC)
    n_events = max(24, round(settings.n_customers * settings.events_per_customer))
    events, annotations = generate_product_events(
        rng,
        customers_df.join(churn_df, on="customer_id", how="left"),
        start=window_start,
        end=as_of,
        n_events=n_events,
        n_annotated=settings.n_annotated_events,
    )
    name, events = final("product_events", events, pl.col("event_timestamp") <= cut)
    yield name, events
    kept = events.select("event_id")
    del events
    yield final("event_annotations", annotations.join(kept, on="event_id", how="semi"))


_PLANS = np.array(["basic", "pro", "enterprise"])
_PLAN_P = np.array([0.55, 0.35, 0.10])
_SEAT_MEDIAN = np.array([2.0, 12.0, 120.0])
_SEAT_PRICE = np.array([12.0, 25.0, 40.0])
_LOGIN_RATE = np.array([2.0, 2.4, 2.8])  # weekly logins of a median customer, before seats
_REGIONS = np.array(["na", "eu", "apac", "latam"])


def _customers(rng: np.random.Generator, n: int, end: np.datetime64) -> dict[str, np.ndarray]:
    plan_idx = rng.choice(3, size=n, p=_PLAN_P)
    seats = np.maximum(1, np.round(_SEAT_MEDIAN[plan_idx] * rng.lognormal(0, 0.6, n))).astype(
        np.int64
    )
    spend = np.round(_SEAT_PRICE[plan_idx] * seats * rng.lognormal(0, 0.25, n), 2)
    age_days = 14 + rng.gamma(1.1, 470.0, n)
    signup = end - (age_days * 86_400e6).astype("timedelta64[us]")
    return {
        "customer_id": np.arange(1, n + 1, dtype=np.int64),
        "plan_idx": plan_idx,
        "plan": _PLANS[plan_idx],
        "seats": seats,
        "monthly_spend": spend,
        "region": _REGIONS[rng.integers(0, 4, n)],
        "signup_at": signup.astype("datetime64[us]"),
    }


def _simulate_engagement(
    rng: np.random.Generator, customers: dict[str, np.ndarray], timeline: _Timeline
) -> dict[str, np.ndarray]:
    """Week-by-week decline/churn simulation; returns weekly login and ticket counts."""
    n = customers["customer_id"].size
    n_weeks = timeline.weeks.size
    signup = customers["signup_at"]
    plan_idx = customers["plan_idx"]
    seats = customers["seats"].astype(np.float64)
    spend_per_seat = customers["monthly_spend"] / seats / _SEAT_PRICE[plan_idx]

    login_rate = _LOGIN_RATE[plan_idx] * seats**0.1 * rng.lognormal(0, 0.4, n)
    ticket_rate = 0.05 * seats**0.15 * rng.lognormal(0, 0.4, n)
    low_spend = np.clip(1.0 / spend_per_seat, 0.5, 2.0)

    in_decline = np.zeros(n, dtype=bool)
    decline_week = np.zeros(n, dtype=np.int64)
    decline_len = np.ones(n, dtype=np.int64)
    floor = np.ones(n)
    ticket_peak = np.ones(n)
    alive = np.ones(n, dtype=bool)
    churned_at = np.full(n, np.datetime64("NaT", "us"))
    login_mult = np.ones((n, n_weeks), dtype=np.float32)
    ticket_mult = np.ones((n, n_weeks), dtype=np.float32)
    decline_share = np.zeros((n, n_weeks), dtype=np.float32)
    active_share = np.zeros((n, n_weeks), dtype=np.float32)

    for w, week_start in enumerate(timeline.weeks):
        week_end = week_start + _WEEK
        age_days = (week_start - signup) / _DAY
        signed_up = signup < week_end
        live = alive & signed_up
        young = np.exp(-np.clip(age_days, 0, None) / 120.0)

        hazard = 0.008 * (1 + 1.5 * young) * low_spend
        start_now = live & ~in_decline & (rng.random(n) < hazard)
        in_decline |= start_now
        decline_week[start_now] = w
        decline_len[start_now] = rng.integers(5, 7, start_now.sum())
        floor[start_now] = rng.uniform(0.0, 0.1, start_now.sum())
        ticket_peak[start_now] = rng.uniform(4.0, 8.0, start_now.sum())

        progress = np.clip((w - decline_week + 1) / decline_len, 0, 1)
        declining = live & in_decline
        login_mult[:, w] = np.where(declining, 0.35 - (0.35 - floor) * progress, 1.0)
        ticket_mult[:, w] = np.where(declining, 1 + (ticket_peak - 1) * progress, 1.0)
        decline_share[:, w] = np.where(declining, progress, 0.0)

        # share of the week the customer was active (signup inside the week)
        start_in_week = np.clip((signup - week_start) / _WEEK, 0, 1)
        share = np.where(live, 1 - start_in_week, 0.0)

        ends_now = declining & (progress >= 1)
        churn_after_decline = ends_now & (rng.random(n) < 0.85)
        in_decline[ends_now] = False  # churned or recovered
        sudden = (
            live & ~in_decline & (rng.random(n) < 0.003 * np.exp(-np.clip(age_days, 0, None) / 90))
        )
        churn_now = churn_after_decline | sudden
        frac = rng.random(n)
        when = week_start + (np.maximum(start_in_week, frac) * 7 * 86_400e6).astype(
            "timedelta64[us]"
        )
        churned_at[churn_now] = when[churn_now]
        share = np.where(
            churn_now, np.maximum(0, np.maximum(start_in_week, frac) - start_in_week), share
        )
        active_share[:, w] = share
        alive &= ~churn_now

    mean_logins = login_rate[:, None] * login_mult * active_share
    mean_tickets = ticket_rate[:, None] * ticket_mult * active_share
    return {
        "login_counts": rng.poisson(mean_logins).astype(np.int32),
        "ticket_counts": rng.poisson(mean_tickets).astype(np.int32),
        "churned_at": churned_at,
        "decline_share": decline_share,
        "login_rate": login_rate,
    }


def _blocks(n: int) -> list[slice]:
    """Consecutive customer (row) blocks of at most :data:`_BLOCK_CUSTOMERS`."""
    return [slice(a, min(a + _BLOCK_CUSTOMERS, n)) for a in range(0, n, _BLOCK_CUSTOMERS)]


def _weekly_events_to_rows(
    rng: np.random.Generator,
    counts: np.ndarray,
    signup: np.ndarray,
    churned_at: np.ndarray,
    timeline: _Timeline,
) -> pl.DataFrame:
    """Spread weekly counts uniformly over the part of each week the customer was active.

    Rows are sorted by customer, then time. Customers are processed in blocks: one uniform draw
    per event, in customer-major order, which is the order of a single draw for all of them.
    """
    total = int(counts.sum(dtype=np.int64))
    customer_id = np.empty(total, dtype=np.int64)
    timestamp = np.empty(total, dtype="datetime64[us]")
    filled = 0
    for rows in _blocks(counts.shape[0]):
        flat = counts[rows].ravel()
        nz = np.flatnonzero(flat)
        cust_idx, week_idx = np.divmod(np.repeat(nz, flat[nz]), counts.shape[1])
        cust_idx += rows.start
        week_start = timeline.weeks[week_idx]
        lo = np.maximum(week_start, signup[cust_idx])
        churn = churned_at[cust_idx]
        hi = np.where(np.isnat(churn), week_start + _WEEK, np.minimum(week_start + _WEEK, churn))
        hi = np.maximum(hi, lo)
        span = (hi - lo).astype(np.int64)
        ts = lo + (rng.random(cust_idx.size) * span).astype("timedelta64[us]")
        order = np.lexsort((ts, cust_idx))
        block = slice(filled, filled + cust_idx.size)
        customer_id[block] = cust_idx[order] + 1
        timestamp[block] = ts[order]
        filled = block.stop
    return pl.DataFrame({"customer_id": customer_id, "timestamp": timestamp}).with_columns(
        pl.col("timestamp").dt.replace_time_zone("UTC")
    )


def _daily_counts(
    events: pl.DataFrame, n_customers: int, end: np.datetime64, n_days: int
) -> np.ndarray:
    """Events per customer and day over the ``n_days`` days before ``end``: ``(n, n_days)``.

    ``events`` (``customer_id`` 1..n, ``timestamp``) must be sorted by customer.
    """
    first = (end - n_days * _DAY).astype("datetime64[D]").astype("datetime64[us]")
    customer = events["customer_id"].to_numpy()
    timestamp = events["timestamp"].to_numpy()  # UTC wall time, as datetime64[us]
    counts = np.zeros((n_customers, n_days), dtype=np.int32)
    for rows in _blocks(n_customers):
        lo, hi = np.searchsorted(customer, [rows.start + 1, rows.stop + 1])
        ts = timestamp[lo:hi]
        recent = ts >= first
        day = ((ts[recent] - first) // _DAY).astype(np.int64)
        local = customer[lo:hi][recent] - 1 - rows.start
        keep = day < n_days
        size = rows.stop - rows.start
        counts[rows] = np.bincount(
            local[keep] * n_days + day[keep], minlength=size * n_days
        ).reshape(size, n_days)
    return counts


_SEVERITIES = np.array(["low", "medium", "high"])
_TOPICS = np.array(["billing", "bug", "performance", "how_to", "integration", "account"])


def _ticket_attributes(
    rng: np.random.Generator, rows: pl.DataFrame, sim: dict[str, np.ndarray], timeline: _Timeline
) -> pl.DataFrame:
    n = rows.height
    weeks = sim["decline_share"].shape[1]
    cust = rows["customer_id"].to_numpy() - 1
    opened = rows["timestamp"].dt.replace_time_zone(None).to_numpy()
    week_of = np.clip(((opened - timeline.start) // _WEEK).astype(np.int64), 0, weeks - 1)
    stress = sim["decline_share"][cust, week_of] if n else np.zeros(0)
    p_high = 0.1 + 0.3 * stress
    p_med = 0.35 * np.ones(n)
    u = rng.random(n)
    severity = np.where(u < p_high, 2, np.where(u < p_high + p_med, 1, 0))
    topic = rng.choice(_TOPICS.size, size=n, p=[0.2, 0.25, 0.15, 0.2, 0.1, 0.1])
    return rows.rename({"timestamp": "opened_at"}).with_columns(
        severity=pl.Series(_SEVERITIES[severity]), topic=pl.Series(_TOPICS[topic])
    )


class _BlockDraws:
    """One dense ``(n_customers, days)`` random draw, taken in customer blocks and redrawable.

    NumPy fills an array draw element by element in C order, so drawing rows ``[0, a)``, then
    ``[a, b)``, and so on, consumes the generator exactly as one draw of all rows does, and
    gives the same numbers. :meth:`draw` takes the next block from the shared generator and
    records the generator's state before it; :meth:`redraw` gives block ``i`` again from that
    state, without touching the shared generator. So a later step can use a block of this draw
    without the whole matrix ever being held, and the random stream stays that of the
    whole-matrix draws, in their order.
    """

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._states: list[Mapping[str, Any]] = []

    def draw(self, sample: Callable[[np.random.Generator], np.ndarray]) -> None:
        self._states.append(self._rng.bit_generator.state)
        sample(self._rng)

    def redraw(self, i: int, sample: Callable[[np.random.Generator], np.ndarray]) -> np.ndarray:
        bit_generator = type(self._rng.bit_generator)(0)
        bit_generator.state = self._states[i]
        return sample(np.random.Generator(bit_generator))


def _account_activity(
    rng: np.random.Generator,
    customers: dict[str, np.ndarray],
    sim: dict[str, np.ndarray],
    daily_logins: np.ndarray,
    *,
    timeline: _Timeline,
    settings: DemoWarehouseSettings,
    cut_day: np.datetime64,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Daily activity for the last ``activity_days`` days (to ``cut_day``), with anomalies.

    The process draws several customers x days matrices (api-call noise and counts, anomaly
    starts, errors, volume and spend noise), each whole before the next. Here each is drawn in
    customer blocks (:class:`_BlockDraws`) and the table is assembled block by block, so memory
    holds blocks and the result, never the matrices; the numbers are those of whole-matrix
    draws.
    """
    n = customers["customer_id"].size
    n_days = settings.activity_days
    first_day = (timeline.end - n_days * _DAY).astype("datetime64[D]")
    days = first_day + np.arange(n_days)
    day_idx = np.arange(n_days)
    blocks = _blocks(n)

    signup_day = customers["signup_at"].astype("datetime64[D]")
    churn_day = sim["churned_at"].astype("datetime64[D]")

    def active(rows: slice) -> np.ndarray:
        return (signup_day[rows, None] <= days[None, :]) & (
            np.isnat(churn_day[rows])[:, None] | (days[None, :] <= churn_day[rows, None])
        )

    def shape(rows: slice) -> tuple[int, int]:
        return (rows.stop - rows.start, n_days)

    weekday = (days.astype(np.int64) + 3) % 7  # 0 = Monday
    weekday_factor = np.where(weekday >= 5, 0.45, 1.0)
    api_level = 40 * customers["seats"] ** 0.5 * rng.lognormal(0, 0.5, n)

    def api_mean(rows: slice) -> np.ndarray:
        level = api_level[rows, None] * weekday_factor[None, :]
        return level * (1 + 0.15 * daily_logins[rows])

    # negative binomial with dispersion 20: Poisson-gamma mixture
    def gamma_noise(rows: slice) -> Callable[[np.random.Generator], np.ndarray]:
        return lambda g: g.gamma(20, 1 / 20, shape(rows))

    noise = _BlockDraws(rng)
    for rows in blocks:
        noise.draw(gamma_noise(rows))

    def poisson_calls(i: int, rows: slice) -> Callable[[np.random.Generator], np.ndarray]:
        mean = api_mean(rows) * noise.redraw(i, gamma_noise(rows))
        return lambda g: g.poisson(mean).astype(np.float64)

    calls = _BlockDraws(rng)
    for i, rows in enumerate(blocks):
        calls.draw(poisson_calls(i, rows))
    volume_per_call = rng.lognormal(np.log(0.8), 0.3, n)

    # anomalies: each customer's first start (if any) after a clean trailing window of 28 days
    first_start = np.full(n, -1, dtype=np.int64)
    for rows in blocks:
        starts = (rng.random(shape(rows)) < settings.anomaly_rate) & active(rows)
        starts[:, :28] = False
        first_start[rows] = np.where(starts.any(axis=1), starts.argmax(axis=1), -1)
    has = first_start >= 0
    which = rng.choice(3, size=n, p=[0.45, 0.3, 0.25]) + 1
    kind = np.where(has, which, 0)  # 0 none, 1 spike, 2 drop, 3 level shift
    factor = np.ones(n)  # api calls and volume x factor at the start (from it on for shifts)
    error_boost = np.ones(n)
    spike, drop, shift = kind == 1, kind == 2, kind == 3
    factor[spike] = rng.uniform(4, 12, spike.sum())
    error_boost[spike] = rng.uniform(4, 12, spike.sum())
    factor[drop] = rng.uniform(0, 0.1, drop.sum())
    factor[shift] = rng.uniform(2.5, 4, shift.sum())
    error_rate = 0.01 * rng.lognormal(0, 0.3, n)

    def anomaly_days(rows: slice) -> tuple[np.ndarray, np.ndarray]:
        """Per block: the day of each customer's anomaly start, and the days from it on."""
        start = first_start[rows, None]
        return (day_idx[None, :] == start), (start >= 0) & (day_idx[None, :] >= start)

    def api_calls(i: int, rows: slice) -> np.ndarray:
        base = calls.redraw(i, poisson_calls(i, rows))
        at_start, from_start = anomaly_days(rows)
        multiplier = np.where(at_start, factor[rows, None], 1.0)
        multiplier = np.where(from_start & shift[rows, None], factor[rows, None], multiplier)
        return np.round(base * multiplier)

    def binomial_errors(calls_: np.ndarray, rows: slice) -> Callable[..., np.ndarray]:
        at_start, _ = anomaly_days(rows)
        boost = np.where(at_start, error_boost[rows, None], 1.0)
        p = np.clip(error_rate[rows, None] * boost, 0, 1)
        return lambda g: g.binomial(calls_.astype(np.int64), p)

    errors = _BlockDraws(rng)
    for i, rows in enumerate(blocks):
        errors.draw(binomial_errors(api_calls(i, rows), rows))

    def lognormal(sigma: float, rows: slice) -> Callable[[np.random.Generator], np.ndarray]:
        return lambda g: g.lognormal(0, sigma, shape(rows))

    volume_noise, spend_noise = _BlockDraws(rng), _BlockDraws(rng)
    for rows in blocks:
        volume_noise.draw(lognormal(0.15, rows))
    for rows in blocks:
        spend_noise.draw(lognormal(0.05, rows))

    kinds = np.array(["none", "spike", "drop", "level_shift"])
    keep_days = days <= cut_day
    activity_blocks, truth_blocks = [], []
    for i, rows in enumerate(blocks):
        calls_i = api_calls(i, rows)
        errors_i = errors.redraw(i, binomial_errors(calls_i, rows))
        volume = np.round(
            calls_i * volume_per_call[rows, None] * volume_noise.redraw(i, lognormal(0.15, rows)),
            3,
        )
        spend = np.round(
            customers["monthly_spend"][rows, None]
            / 30
            * spend_noise.redraw(i, lognormal(0.05, rows)),
            2,
        )
        active_i = active(rows) & keep_days[None, :]
        ci, di = np.nonzero(active_i)
        activity_blocks.append(
            pl.DataFrame(
                {
                    "customer_id": customers["customer_id"][rows][ci],
                    "day": days[di],
                    "api_calls": calls_i[ci, di].astype(np.int64),
                    "logins": daily_logins[rows][ci, di].astype(np.int64),
                    "spend": spend[ci, di],
                    "errors": errors_i[ci, di].astype(np.int64),
                    "data_volume_mb": volume[ci, di],
                }
            )
        )
        # level shifts count as anomalous for their first three days
        at_start, from_start = anomaly_days(rows)
        first_three = from_start & (day_idx[None, :] < first_start[rows, None] + 3)
        truth_days = at_start | (first_three & shift[rows, None])
        ti, tj = np.nonzero(truth_days & active_i)
        truth_blocks.append(
            pl.DataFrame(
                {
                    "customer_id": customers["customer_id"][rows][ti],
                    "day": days[tj],
                    "kind": kinds[kind[rows][ti]],
                }
            )
        )
    return pl.concat(activity_blocks, rechunk=False), pl.concat(truth_blocks, rechunk=False)
