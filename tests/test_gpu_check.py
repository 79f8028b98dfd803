"""benchmarks/gpu_check.py: on a machine without a GPU it says so clearly and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_names_the_missing_device() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: run `bash benchmarks/gpu_check.sh` itself")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--seconds", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no CUDA device is visible to torch" in proc.stderr
