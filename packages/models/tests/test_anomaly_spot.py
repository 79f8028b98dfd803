"""A real spot notice: Ray drains the node under training (see _spot_drill.py); the workers
checkpoint at once and stop cleanly, and a rerun on a fresh cluster resumes and finishes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray

DRILL = Path(__file__).with_name("_spot_drill.py")


def test_preemption_notice_checkpoints_at_once_and_a_new_cluster_resumes(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(DRILL), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["drain_accepted"]
    assert result["stopped"], "the preemption notice stopped training before its last step"
    stopped, total = result["stopped_step"], result["total_steps"]
    assert 20 <= stopped < total
    assert result["resumed_from"] == [stopped], "the rerun resumed from the notice's checkpoint"
    assert result["final_step"] == total
