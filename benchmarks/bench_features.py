"""Churn features: the Polars pipeline against a plain pandas implementation of the same features.

The Polars side is :func:`mlinfra_features.pipelines.churn_features` (three lazy views, collected
together). The baseline, :func:`pandas_churn_features`, is what one would write in idiomatic
pandas: the same snapshot grid and population, and windowed counts as point-in-time lookups with
``merge_asof`` (as Feast's pandas offline store joins): a customer's number of events in
``(t - w, t]`` is their running event count at ``t`` minus their running count at ``t - w``.

Targets: Polars at least 3x faster and at most 0.5x the peak memory of pandas, memory being each
fresh process's peak resident set above what its imports hold. At any size the test checks that
both give equal tables.

The Polars pipeline counts events per customer in snapshot-aligned buckets and sums neighbouring
buckets, which does far less work than per-window lookups. So that the ratios are not read as
Polars' alone, a second baseline, :func:`pandas_bucketed_churn_features`, does the same in pandas
(``groupby`` into a customers x buckets table); it is measured, checked equal and reported
beside the first (the targets stay on the first, the baseline they were set against).

The module imports no ``mlinfra_features`` at the top, so that the pandas process does not pay
for the Polars pipeline's imports (Feast among them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import polars as pl
from polars.testing import assert_frame_equal

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

    from mlinfra_features.sources import Warehouse

TARGET_SPEEDUP = 3.0
TARGET_MEMORY_RATIO = 0.5

TS = "event_timestamp"
TREND_WEEKS = 8
VIEW_KEYS = ["customer_id", TS]
VIEWS = ("customer_profile", "customer_logins", "customer_support")


def polars_churn_features(warehouse_dir: str) -> dict[str, pl.DataFrame]:
    """The three churn views of the platform pipeline, collected together."""
    from mlinfra_features.pipelines import churn_features
    from mlinfra_features.sources import Warehouse

    views = churn_features(Warehouse(Path(warehouse_dir)))
    return dict(zip(views, pl.collect_all(list(views.values())), strict=True))


def pandas_churn_features(
    warehouse_dir: str, cadence: timedelta = timedelta(days=7)
) -> dict[str, pd.DataFrame]:
    """The same three views as :func:`polars_churn_features`, in pandas only."""
    root = Path(warehouse_dir)
    end = pd.Timestamp(json.loads((root / "_manifest.json").read_text())["data_end"])
    customers = pd.read_parquet(
        root / "customers.parquet",
        columns=["customer_id", "signup_at", "plan", "seats", "monthly_spend"],
    )
    churn = pd.read_parquet(root / "churn_events.parquet", columns=["customer_id", "churned_at"])
    logins = pd.read_parquet(root / "logins.parquet", columns=["customer_id", "timestamp"])
    tickets = pd.read_parquet(
        root / "support_tickets.parquet", columns=["customer_id", "opened_at"]
    )

    # Snapshot grid: end - k * cadence, back to eight weeks after the first login.
    start = min(end, logins["timestamp"].min() + pd.Timedelta(weeks=TREND_WEEKS))
    n_snapshots = int((end - start) / cadence) + 1
    grid = pd.DataFrame({TS: [end - k * cadence for k in reversed(range(n_snapshots))]})
    grid[TS] = grid[TS].astype(customers["signup_at"].dtype)

    # Population: every customer signed up and not yet churned at each snapshot.
    first_churn = churn.groupby("customer_id", as_index=False)["churned_at"].min()
    population = customers[["customer_id", "signup_at"]].merge(grid, how="cross")
    population = population[population["signup_at"] <= population[TS]]
    population = population.merge(first_churn, on="customer_id", how="left")
    alive = population["churned_at"].isna() | (population["churned_at"] > population[TS])
    population = population.loc[alive, VIEW_KEYS].sort_values(TS, kind="stable")
    population = population.reset_index(drop=True)

    profile = population.merge(customers, on="customer_id", how="left")
    profile["account_age_days"] = (profile[TS] - profile["signup_at"]).dt.days
    profile = profile[[*VIEW_KEYS, "plan", "seats", "monthly_spend", "account_age_days"]]

    week_windows = {f"w{k}": pd.Timedelta(weeks=k) for k in range(1, TREND_WEEKS + 1)}
    logins = logins.rename(columns={"timestamp": TS})
    counts = _window_counts(
        logins, population, {"logins_30d": pd.Timedelta(days=30), **week_windows}
    )
    weekly = np.column_stack(
        [counts[f"w{k}"] - (counts[f"w{k - 1}"] if k > 1 else 0) for k in range(1, TREND_WEEKS + 1)]
    )
    # x = 7 for the latest week down to 0 for the oldest, centred at 3.5.
    centred_x = (TREND_WEEKS - 1) / 2 - np.arange(TREND_WEEKS)
    slope = weekly @ centred_x / (centred_x**2).sum()
    mean = counts[f"w{TREND_WEEKS}"] / TREND_WEEKS
    since_last = counts[TS] - counts["last_event_at"]  # exact microseconds, as Polars counts them
    since_last_us = since_last / pd.Timedelta(microseconds=1)  # type: ignore[operator]
    login_view = pd.DataFrame(
        {
            "customer_id": counts["customer_id"],
            TS: counts[TS],
            "logins_30d": counts["logins_30d"],
            "days_since_last_login": since_last_us / 86_400e6,
            "login_trend_8w": slope / (mean + 0.5),
        }
    )

    tickets = tickets.rename(columns={"opened_at": TS})
    support = _window_counts(
        tickets,
        population,
        {
            "support_tickets_30d": pd.Timedelta(days=30),
            "support_tickets_90d": pd.Timedelta(days=90),
        },
    )
    support_view = support[[*VIEW_KEYS, "support_tickets_30d", "support_tickets_90d"]]
    return {
        "customer_profile": profile,
        "customer_logins": login_view,
        "customer_support": support_view,
    }


def _window_counts(
    events: pd.DataFrame, population: pd.DataFrame, windows: dict[str, pd.Timedelta]
) -> pd.DataFrame:
    """Each customer's number of events in ``(t - window, t]`` at every population row (sorted
    by ``t``), plus the time of their last event at or before ``t`` (``last_event_at``)."""
    events = events.sort_values(TS, kind="stable").reset_index(drop=True)
    events["n_events"] = events.groupby("customer_id").cumcount() + 1
    events["last_event_at"] = events[TS]

    def running_count(at: pd.Series, right: pd.DataFrame) -> pd.DataFrame:
        """The customer's latest event at or before ``at`` (running count 0 when none)."""
        probe = pd.DataFrame({"customer_id": population["customer_id"], TS: at})
        probe[TS] = probe[TS].astype(right[TS].dtype)  # offsets are ns: keep the data's unit
        hit = pd.merge_asof(probe, right, on=TS, by="customer_id", direction="backward")
        hit["n_events"] = hit["n_events"].fillna(0).astype("int64")
        return hit

    now = running_count(population[TS], events)
    out = population.assign(last_event_at=now["last_event_at"].to_numpy())
    counts_only = events.drop(columns="last_event_at")
    for name, window in windows.items():
        before = running_count(population[TS] - window, counts_only)
        out[name] = now["n_events"].to_numpy() - before["n_events"].to_numpy()
    return out


def pandas_bucketed_churn_features(
    warehouse_dir: str, cadence: timedelta = timedelta(days=7)
) -> dict[str, pd.DataFrame]:
    """The same three views in pandas with the Polars pipeline's algorithm (a second baseline).

    Events are counted once per customer and snapshot-aligned bucket (``groupby``, then
    ``unstack`` into a customers x buckets table); a window of ``q`` buckets and ``r`` more is a
    difference of cumulative bucket counts plus the events of bucket ``k + q`` less than ``r``
    before its end. This tells what the algorithm gains apart from what Polars gains.
    """
    root = Path(warehouse_dir)
    end = pd.Timestamp(json.loads((root / "_manifest.json").read_text())["data_end"])
    customers = pd.read_parquet(
        root / "customers.parquet",
        columns=["customer_id", "signup_at", "plan", "seats", "monthly_spend"],
    )
    churn = pd.read_parquet(root / "churn_events.parquet", columns=["customer_id", "churned_at"])
    logins = pd.read_parquet(root / "logins.parquet", columns=["customer_id", "timestamp"])
    tickets = pd.read_parquet(
        root / "support_tickets.parquet", columns=["customer_id", "opened_at"]
    )

    def epoch_us(times: pd.Series) -> np.ndarray:
        return times.to_numpy(dtype="datetime64[us]").astype(np.int64)

    end_us, step = end.value // 1_000, cadence // timedelta(microseconds=1)
    start = min(end, logins["timestamp"].min() + pd.Timedelta(weeks=TREND_WEEKS))
    n_snapshots = int((end - start) / cadence) + 1

    # Snapshot k is at end - k * cadence (0 the newest). A customer is in the population at
    # snapshots first_k <= k <= last_k: signed up at or before, not churned at or before.
    churned_at = customers["customer_id"].map(churn.groupby("customer_id")["churned_at"].min())
    last_k = np.minimum((end_us - epoch_us(customers["signup_at"])) // step, n_snapshots - 1)
    since_churn = end_us - epoch_us(churned_at.fillna(end))
    first_k = np.where(churned_at.isna(), 0, np.maximum(since_churn // step + 1, 0))
    spans = customers[["customer_id"]].assign(first_k=first_k, last_k=last_k)
    spans = spans[spans["first_k"] <= spans["last_k"]].reset_index(drop=True)
    # Population rows, customer by customer and oldest snapshot first.
    length = (spans["last_k"] - spans["first_k"] + 1).to_numpy()
    who = np.repeat(np.arange(len(spans)), length)
    k = spans["last_k"].to_numpy()[who] - (np.arange(who.size) - (length.cumsum() - length)[who])
    population = pd.DataFrame(
        {
            "customer_id": spans["customer_id"].to_numpy()[who],
            TS: pd.Series((end_us - k * step).astype("datetime64[us]")).dt.tz_localize("UTC"),
        }
    )

    profile = population.merge(customers, on="customer_id", how="left")
    profile["account_age_days"] = (profile[TS] - profile["signup_at"]).dt.days
    profile = profile[[*VIEW_KEYS, "plan", "seats", "monthly_spend", "account_age_days"]]

    def window_counts(
        events: pd.DataFrame, at: str, windows: dict[str, pd.Timedelta], last_event: bool = False
    ) -> pd.DataFrame:
        """Each population row's events in ``(t - window, t]`` (and ``last_event_at``)."""
        splits = {
            name: divmod(window // pd.Timedelta(microseconds=1), step)
            for name, window in windows.items()
        }
        heads = sorted({r for _, r in splits.values() if r})
        oldest = n_snapshots + max(q for q, _ in splits.values())  # also takes older events
        at_us = epoch_us(events[at])
        age = end_us - at_us
        customer = pd.Index(spans["customer_id"]).get_indexer(events["customer_id"])
        keep = (age >= 0) & (customer >= 0)
        age, at_us, width = age[keep], at_us[keep], oldest + 1
        frame = pd.DataFrame(
            {
                "bucket": customer[keep] * width + np.minimum(age // step, oldest),
                **{f"head_{r}": age % step < r for r in heads},
                "at": at_us,
            }
        )
        del age, at_us
        aggregations = {
            "n": ("bucket", "size"),
            **{f"head_{r}": (f"head_{r}", "sum") for r in heads},
            "at": ("at", "max"),
        }
        buckets = frame.groupby("bucket").agg(**aggregations)
        del frame

        def table(column: str, fill: int) -> np.ndarray:
            """customers x buckets (bucket 0, the newest, first)."""
            every = buckets[column].reindex(range(len(spans) * width), fill_value=fill)
            return every.to_numpy().reshape(len(spans), width)

        counts = table("n", 0)
        before = np.zeros((len(spans), oldest + 2), dtype=np.int64)  # events in buckets < j
        before[:, 1:] = counts.cumsum(axis=1)
        out = population.copy()
        for name, (q, r) in splits.items():
            total = before[who, k + q] - before[who, k]
            out[name] = total + table(f"head_{r}", 0)[who, k + q] if r else total
        if last_event:
            newest = table("at", -1)
            # the newest event in bucket k or an older one: a running max from the oldest
            newest = np.maximum.accumulate(newest[:, ::-1], axis=1)[:, ::-1][who, k]
            last = newest.astype("datetime64[us]")
            last[newest < 0] = np.datetime64("NaT")
            out["last_event_at"] = pd.Series(last).dt.tz_localize("UTC")
        return out

    week_windows = {f"w{k}": pd.Timedelta(weeks=k) for k in range(1, TREND_WEEKS + 1)}
    counts = window_counts(
        logins, "timestamp", {"logins_30d": pd.Timedelta(days=30), **week_windows}, True
    )
    weekly = np.column_stack(
        [counts[f"w{k}"] - (counts[f"w{k - 1}"] if k > 1 else 0) for k in range(1, TREND_WEEKS + 1)]
    )
    centred_x = (TREND_WEEKS - 1) / 2 - np.arange(TREND_WEEKS)
    slope = weekly @ centred_x / (centred_x**2).sum()
    mean = counts[f"w{TREND_WEEKS}"] / TREND_WEEKS
    since_last_us = (counts[TS] - counts["last_event_at"]) / pd.Timedelta(microseconds=1)  # type: ignore[operator]
    login_view = pd.DataFrame(
        {
            "customer_id": counts["customer_id"],
            TS: counts[TS],
            "logins_30d": counts["logins_30d"],
            "days_since_last_login": since_last_us / 86_400e6,
            "login_trend_8w": slope / (mean + 0.5),
        }
    )
    support = window_counts(
        tickets,
        "opened_at",
        {
            "support_tickets_30d": pd.Timedelta(days=30),
            "support_tickets_90d": pd.Timedelta(days=90),
        },
    )
    return {
        "customer_profile": profile,
        "customer_logins": login_view,
        "customer_support": support,
    }


def _n_customers(warehouse: Warehouse) -> int:
    settings = warehouse.manifest()["settings"]
    assert isinstance(settings, dict)
    return int(settings["n_customers"])


def assert_same_views(polars_dir: Path, pandas_dir: Path) -> int:
    """Both implementations wrote equal views (floats to 1e-9); the number of rows compared."""
    rows = 0
    for view in VIEWS:
        left = pl.read_parquet(polars_dir / f"{view}.parquet").sort(VIEW_KEYS)
        right = pl.read_parquet(pandas_dir / f"{view}.parquet").sort(VIEW_KEYS)
        assert left.columns == right.columns, (view, left.columns, right.columns)
        assert_frame_equal(left, right, check_dtypes=False, rel_tol=1e-9, abs_tol=1e-9)
        rows += left.height
    return rows


def test_churn_features_polars_vs_pandas(
    benchmark: BenchmarkFixture,
    *,
    demo_warehouse: Warehouse,
    measure: Callable[..., Any],
    bench_report: Callable[[str], None],
    record_ratio: Callable[..., None],
    tmp_path: Path,
) -> None:
    n = _n_customers(demo_warehouse)
    root = str(demo_warehouse.root)
    # When timing, each side runs in a fresh process. In the normal (disabled) test run the
    # Polars side runs in the test process, which has already paid for importing
    # mlinfra_features (Feast and what it pulls in: seconds); the pandas side still runs in a
    # fresh process, so the subprocess measurement stays exercised.
    fast = benchmark.pedantic(
        measure,
        args=(polars_churn_features, root),
        kwargs={
            "save": tmp_path / "polars",
            "isolated": not benchmark.disabled,
            "preload": ["mlinfra_features.pipelines"],
        },
        rounds=1,
        iterations=1,
    )
    slow = measure(pandas_churn_features, root, save=tmp_path / "pandas")
    same = measure(pandas_bucketed_churn_features, root, save=tmp_path / "pandas_bucketed")

    # The correctness guard that keeps the baselines honest.
    rows = assert_same_views(tmp_path / "polars", tmp_path / "pandas")
    assert assert_same_views(tmp_path / "polars", tmp_path / "pandas_bucketed") == rows

    # Memory is compared above each process's floor (interpreter and imports: mlinfra_features
    # pulls in Feast, whose footprint has nothing to do with the pipeline).
    fast_work_mb = fast.peak_mb - fast.rss_before_mb
    slow_work_mb = slow.peak_mb - slow.rss_before_mb
    speedup = slow.seconds / fast.seconds
    memory_ratio = fast_work_mb / slow_work_mb
    line = (
        f"churn features N={n:,} ({rows // len(VIEWS):,} snapshot rows per view): "
        f"polars {fast.seconds:.1f} s / {fast_work_mb / 1024:.2f} GB, "
        f"pandas {slow.seconds:.1f} s / {slow_work_mb / 1024:.2f} GB "
        f"-> {speedup:.1f}x faster, {memory_ratio:.2f}x memory "
        f"(target >= {TARGET_SPEEDUP:.0f}x, <= {TARGET_MEMORY_RATIO}x; GB = peak RSS above "
        f"imports; process peaks {fast.peak_mb / 1024:.2f} / {slow.peak_mb / 1024:.2f} GB; "
        f"CPU {fast.cpu_seconds:.1f} / {slow.cpu_seconds:.1f} s)"
    )
    same_work_mb = same.peak_mb - same.rss_before_mb
    line += (
        f"; same algorithm in pandas (buckets): {same.seconds:.1f} s / "
        f"{same_work_mb / 1024:.2f} GB (process peak {same.peak_mb / 1024:.2f} GB, "
        f"CPU {same.cpu_seconds:.1f} s) -> polars {same.seconds / fast.seconds:.1f}x faster, "
        f"{fast_work_mb / same_work_mb:.2f}x memory"
    )
    if not fast.isolated:
        line += " [polars in the test process: its memory is not its own]"
    bench_report(line)
    benchmark.extra_info.update(
        n_customers=n,
        snapshot_rows=rows // len(VIEWS),
        polars_seconds=fast.seconds,
        polars_cpu_seconds=fast.cpu_seconds,
        polars_peak_mb=fast.peak_mb,
        polars_rss_before_mb=fast.rss_before_mb,
        pandas_seconds=slow.seconds,
        pandas_cpu_seconds=slow.cpu_seconds,
        pandas_peak_mb=slow.peak_mb,
        pandas_rss_before_mb=slow.rss_before_mb,
        speedup_vs_pandas=speedup,
        memory_ratio_vs_pandas=memory_ratio,
        process_peak_ratio_vs_pandas=fast.peak_mb / slow.peak_mb,
        pandas_bucketed_seconds=same.seconds,
        pandas_bucketed_cpu_seconds=same.cpu_seconds,
        pandas_bucketed_peak_mb=same.peak_mb,
        pandas_bucketed_rss_before_mb=same.rss_before_mb,
        speedup_vs_pandas_bucketed=same.seconds / fast.seconds,
        memory_ratio_vs_pandas_bucketed=fast_work_mb / same_work_mb,
    )
    # Only at scale: at 2,000 customers both sides take tenths of a second and the speedup
    # swung from 6.8x to 2.1x between two runs on a loaded machine (Polars, on both cores, loses
    # most), and memory above the imports is tens of MB, too little to compare.
    if not benchmark.disabled and n >= 100_000:
        record_ratio(benchmark, "churn features speedup vs pandas", speedup, TARGET_SPEEDUP)
        record_ratio(
            benchmark,
            "churn features memory vs pandas",
            memory_ratio,
            TARGET_MEMORY_RATIO,
            higher_is_better=False,
        )
        assert speedup >= TARGET_SPEEDUP, line
        assert memory_ratio <= TARGET_MEMORY_RATIO, line
