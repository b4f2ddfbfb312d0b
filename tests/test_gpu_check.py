"""benchmarks/gpu_check.sh on a machine without a CUDA GPU: its dry run says what it would do and
exits 0 (on a GPU machine it runs them: see the script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is here: the script would run for real")
def test_the_gpu_check_dry_run_lists_its_stages_and_exits_0(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "run", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stderr
    assert "dry run" in result.stdout
    for stage in ("install", "pytest -m cuda", "etrm bench --device cuda", "Phase 1"):
        assert stage in result.stdout, stage
    assert list((tmp_path / "out").iterdir()) == []  # nothing measured, nothing written


def test_the_gpu_check_names_its_usage():
    result = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr
