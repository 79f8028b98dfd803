"""GPU check of the anomaly detector: the same Ray Train code path with ``use_gpu=True``.

A 1-epoch warm-up measures throughput; the timed run is sized to last about ``--seconds``. It
prints the device, samples/s of the training loop, the time of one checkpoint and the share of
loop time spent checkpointing. Exit code 2 (and a message) when no CUDA device is visible.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="target training time")
    parser.add_argument("--workers", type=int, default=0, help="GPU workers (0: every GPU)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="account-day rows")
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA device is visible to torch "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); expected a machine "
            "with an NVIDIA GPU and its driver",
            file=sys.stderr,
        )
        return 2
    import numpy as np
    import polars as pl
    import ray

    from mlinfra_models.anomaly import ANOMALY_FEATURES, AnomalySettings, train_anomaly

    gpus = torch.cuda.device_count()
    workers = args.workers or gpus
    name = torch.cuda.get_device_name(0)
    rng = np.random.default_rng(0)
    frame = pl.DataFrame(
        rng.gamma(3.0, 40.0, size=(args.rows, len(ANOMALY_FEATURES))), schema=ANOMALY_FEATURES
    )
    ray.init(num_gpus=gpus, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as storage:
        base = AnomalySettings(
            hidden_sizes=[64, 16],
            batch_size=args.batch_size,
            num_workers=workers,
            use_gpu=True,
            storage_path=storage,
            epochs=1,
            run_name="warmup",
        )
        warm = train_anomaly(frame, base).meta
        rate = warm["samples"] / warm["compute_seconds"]
        epochs = max(1, round(args.seconds * rate / args.rows))
        started = time.perf_counter()
        meta = train_anomaly(frame, replace(base, epochs=epochs, run_name="timed")).meta
        wall = time.perf_counter() - started
    ray.shutdown()
    steps = int(meta["total_steps"])
    steps_per_epoch = steps // epochs
    checkpoints = int(meta["checkpoints"])
    share = meta["checkpoint_seconds"] / (meta["compute_seconds"] + meta["checkpoint_seconds"])
    per_checkpoint_ms = meta["checkpoint_seconds"] / checkpoints * 1000
    lines = {
        "device": f"{workers} x {name} (CUDA {torch.version.cuda})",
        "data": f"{args.rows:,} rows x {len(ANOMALY_FEATURES)} features, batch {args.batch_size}",
        "training": f"{epochs} epochs, {steps} steps ({steps_per_epoch}/epoch), wall {wall:.1f} s",
        "throughput": f"{meta['samples'] / meta['compute_seconds']:,.0f} samples/s",
        "checkpoints": f"{checkpoints} x {per_checkpoint_ms:.1f} ms = {share:.2%} of loop time "
        f"(every {base.checkpoint_every_seconds:g} s and at epoch ends)",
    }
    for label, text in lines.items():
        print(f"{label:<12} {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
