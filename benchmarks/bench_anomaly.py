"""Anomaly-detector training: Ray Train (2 CPU workers, DDP) against a plain single-process
torch loop on the same data, and the cost of spot-safe checkpoints.

Both sides train the same autoencoder with the same global batch, order and number of steps.
Throughput is samples per second of the training loop itself (Ray Train's start-up, which is
paid once per run, is reported separately as the end-to-end wall time). Checkpoint overhead is
the share of the loop's time spent writing and reporting checkpoints at the default interval
(``AnomalySettings.checkpoint_every_seconds`` and each epoch end); target: under 5%. With
benchmarking enabled it also reports the share at a stress interval of 200 steps (about 2 s of
loop time on 2 CPUs), which shows the cost of one checkpoint rather than of the interval.

Size: ``MLINFRA_BENCH_ANOMALY_ROWS`` account-day rows (default 20,000, so that the disabled run
in the test suite stays short). Time the real scale with

    MLINFRA_BENCH_ANOMALY_ROWS=500000 uv run pytest benchmarks/bench_anomaly.py \
        --benchmark-enable -p no:cacheprovider
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pytest

from mlinfra_models.anomaly import ANOMALY_FEATURES, AnomalySettings, train_anomaly

if TYPE_CHECKING:
    from pytest_benchmark.fixture import BenchmarkFixture

ROWS_ENV = "MLINFRA_BENCH_ANOMALY_ROWS"
TARGET_CHECKPOINT_SHARE = 0.05


def activity_rows(n: int, seed: int = 0) -> pl.DataFrame:
    """Account-day feature rows: skewed raw metrics, their z-scores, 1% injected spikes."""
    rng = np.random.default_rng(seed)
    raw = rng.gamma(3.0, 40.0, size=(n, 5))
    spikes = rng.random(n) < 0.01
    raw[spikes] *= rng.uniform(4, 10, size=(int(spikes.sum()), 1))
    z = (raw - np.median(raw, axis=0)) / (
        np.percentile(raw, 75, axis=0) - np.percentile(raw, 25, axis=0)
    )
    return pl.DataFrame(np.hstack([raw, z]), schema=list(ANOMALY_FEATURES))


def single_process_samples_per_s(frame: pl.DataFrame, settings: AnomalySettings) -> float:
    """The baseline: the same network, data order and steps in one process, no Ray, no DDP;
    the faster of torch's default intra-op threads and one thread (small layers often run
    faster on one), so the baseline is the strongest plain loop."""
    import torch

    default = torch.get_num_threads()
    rates = []
    for threads in sorted({default, 1}):
        torch.set_num_threads(threads)
        try:
            rates.append(_plain_loop(frame, settings))
        finally:
            torch.set_num_threads(default)
    return max(rates)


def _plain_loop(frame: pl.DataFrame, settings: AnomalySettings) -> float:
    import torch

    from mlinfra_models.anomaly import (
        _epoch_order,
        _feature_matrix,
        _fit_standardisation,
        _network,
        _standardise,
    )

    raw = _feature_matrix(frame, settings.features, "frame")
    x = _standardise(raw, *_fit_standardisation(raw))
    torch.manual_seed(settings.seed)
    network = _network(x.shape[1], settings.hidden_sizes)
    optimizer = torch.optim.Adam(network.parameters(), lr=settings.lr)
    n, batch = x.shape[0], min(settings.batch_size, x.shape[0])
    steps_per_epoch = max(1, n // batch)
    samples, seconds = 0, 0.0
    network.train()
    for step in range(settings.epochs * steps_per_epoch):
        started = time.perf_counter()
        epoch, in_epoch = divmod(step, steps_per_epoch)
        if in_epoch == 0:
            order = _epoch_order(n, settings.seed, epoch)
        rows = order[in_epoch * batch : (in_epoch + 1) * batch]
        xb = torch.from_numpy(x[np.sort(rows)])
        optimizer.zero_grad()
        loss = ((network(xb) - xb) ** 2).mean()
        loss.backward()
        optimizer.step()
        seconds += time.perf_counter() - started
        samples += len(rows)
    return samples / seconds


@pytest.mark.usefixtures("ray_session")
def test_ray_train_vs_single_process_and_checkpoint_overhead(
    benchmark: BenchmarkFixture,
    bench_report: Callable[[str], None],
    record_ratio: Callable[..., None],
    tmp_path: Path,
) -> None:
    n = int(os.environ.get(ROWS_ENV, "20000").replace("_", ""))
    frame = activity_rows(n)
    settings = replace(
        AnomalySettings(),
        epochs=2 if n >= 100_000 else 1,
        num_workers=2,
        storage_path=str(tmp_path),
        run_name="bench",
    )
    runs = iter(range(1000))

    def train() -> tuple[float, dict[str, float]]:
        started = time.perf_counter()
        model = train_anomaly(frame, replace(settings, run_name=f"bench-{next(runs)}"))
        return time.perf_counter() - started, model.meta

    wall, meta = benchmark.pedantic(train, rounds=1, iterations=1)
    baseline = single_process_samples_per_s(frame, settings)
    ray_samples_per_s = meta["samples"] / meta["compute_seconds"]
    share = _checkpoint_share(meta)
    steps = int(meta["total_steps"])
    line = (
        f"anomaly training N={n:,} rows, {steps} steps of {settings.batch_size}: Ray Train "
        f"{settings.num_workers} CPU workers {ray_samples_per_s:,.0f} samples/s vs single "
        f"process {baseline:,.0f} samples/s -> {ray_samples_per_s / baseline:.2f}x; "
        f"{int(meta['checkpoints'])} checkpoints (every {settings.checkpoint_every_seconds:g} s "
        f"and at epoch ends) {meta['checkpoint_seconds']:.2f} s = {share:.1%} of loop time "
        f"(target < {TARGET_CHECKPOINT_SHARE:.0%}); end-to-end {wall:.1f} s incl. Ray start-up"
    )
    bench_report(line)
    if not benchmark.disabled:
        stress = train_anomaly(
            frame, replace(settings, checkpoint_every_steps=200, run_name="bench-stress")
        ).meta
        bench_report(
            f"anomaly training N={n:,} rows, stress interval of 200 steps: "
            f"{int(stress['checkpoints'])} checkpoints, "
            f"{stress['checkpoint_seconds'] / stress['checkpoints'] * 1000:.0f} ms each = "
            f"{_checkpoint_share(stress):.1%} of loop time"
        )
        benchmark.extra_info["stress_checkpoint_share"] = _checkpoint_share(stress)
    benchmark.extra_info.update(
        rows=n,
        steps=steps,
        ray_samples_per_s=ray_samples_per_s,
        single_process_samples_per_s=baseline,
        ratio_vs_single_process=ray_samples_per_s / baseline,
        checkpoint_share=share,
        end_to_end_seconds=wall,
    )
    assert meta["final"] and meta["samples"] == steps * settings.batch_size
    # Below a thousand steps the loop is too short for a share to mean anything.
    if not benchmark.disabled and steps >= 1_000:
        record_ratio(
            benchmark, "checkpoint_share", share, TARGET_CHECKPOINT_SHARE, higher_is_better=False
        )
        assert share < TARGET_CHECKPOINT_SHARE, line


def _checkpoint_share(meta: dict[str, float]) -> float:
    """Share of the training loop's time spent writing and reporting checkpoints."""
    return meta["checkpoint_seconds"] / (meta["compute_seconds"] + meta["checkpoint_seconds"])
