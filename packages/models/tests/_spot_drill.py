"""A spot-interruption drill on its own Ray cluster (run as a script by test_anomaly_spot.py).

1. Start a local Ray and train; once the first checkpoint is on disk, tell Ray the node is
   being preempted (a drain with reason PREEMPTION and a deadline: what Ray does on a cloud's
   spot-termination notice).
2. Training must write a checkpoint at once and stop cleanly (``TrainingStopped``).
3. The node is gone: start a fresh Ray, rerun with the same run name; it must resume from that
   checkpoint and finish.

Prints one JSON line with what happened. A drained node takes no new work, which is why this
runs in its own process and cluster rather than on the test session's.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

os.environ.update(
    {
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        "RAY_AUTH_MODE": "disabled",
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.2",
    }
)

import numpy as np
import polars as pl
import ray

from mlinfra_models.anomaly import (
    ANOMALY_FEATURES,
    AnomalySettings,
    TrainingStopped,
    latest_checkpoint,
    train_anomaly,
)


def drain_on_first_checkpoint(run_dir: Path, drained: dict[str, float]) -> None:
    from ray.core.generated import autoscaler_pb2

    while latest_checkpoint(run_dir) is None:
        time.sleep(0.05)
    context = ray.get_runtime_context()
    gcs = ray._raylet.GcsClient(address=context.gcs_address)
    accepted, reason = gcs.drain_node(
        context.get_node_id(),
        autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot termination notice (drill)",
        int(time.time() * 1000) + 120_000,
    )
    drained.update(accepted=float(accepted), at=time.time())
    if not accepted:
        print(f"drain rejected: {reason}", file=sys.stderr)


def main(storage: str) -> None:
    rng = np.random.default_rng(3)
    frame = pl.DataFrame(rng.normal(size=(8_000, len(ANOMALY_FEATURES))), schema=ANOMALY_FEATURES)
    settings = replace(
        AnomalySettings(),
        hidden_sizes=[6, 3],
        epochs=1,
        batch_size=32,
        checkpoint_every_steps=20,
        notice_poll_steps=5,
        num_workers=2,
        storage_path=storage,
        run_name="spot",
    )
    out: dict[str, object] = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    drained: dict[str, float] = {}
    watcher = threading.Thread(
        target=drain_on_first_checkpoint, args=(settings.run_dir, drained), daemon=True
    )
    watcher.start()
    try:
        train_anomaly(frame, settings)
        out["stopped"] = False
    except TrainingStopped as stopped:
        out.update(stopped=True, stopped_step=stopped.step, total_steps=stopped.total_steps)
    out["drain_accepted"] = bool(drained.get("accepted"))
    ray.shutdown()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a new machine
    model = train_anomaly(frame, settings)
    out.update(
        final_step=model.meta["global_step"],
        resumed_from=model.meta["resumed_from"],
        total_steps=model.meta["total_steps"],
    )
    ray.shutdown()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
