"""Shared pieces of the evaluation tests: tiny configs, tasks that fit a 6x6 canvas, and one
finished tiny run (the tiny overrides and single-threaded torch: tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.core.config import load_config
from etrm.data import load_tasks

CANVAS = 6


@pytest.fixture(scope="session")
def tiny_eval_config(tiny):
    """tiny_eval_config(run_dir, "key=value", ...) -> a loaded tiny RunConfig."""
    return lambda run_dir, *extra: load_config(tiny(run_dir, *extra))


@pytest.fixture(scope="session")
def finished_eval_run(tmp_path_factory, tiny_eval_config) -> Path:
    """A tiny ETRM run trained to its end, with its final evaluation on 3 held-out tasks."""
    from etrm.train.loop import train

    run_dir = tmp_path_factory.mktemp("eval-run") / "run"
    train(tiny_eval_config(run_dir))
    return run_dir


@pytest.fixture(scope="session")
def mixed_tasks():
    """Three tasks with 3, 1 and 2 test inputs (6x6 canvas): the one ARC-AGI-1 training task of
    that size with three (27a28665; ConceptARC's shape, without the shared data folder), and
    two ARC-AGI-1 evaluation tasks."""
    triple = next(t for t in load_tasks("arc1:training") if t.fits(CANVAS) and len(t.tests) == 3)
    arc = [t for t in load_tasks("arc1:evaluation") if t.fits(CANVAS)]
    single = next(t for t in arc if len(t.tests) == 1)
    double = next(t for t in arc if len(t.tests) == 2)
    assert [len(t.tests) for t in (triple, single, double)] == [3, 1, 2]
    return [triple, single, double]


@pytest.fixture(scope="session")
def etrm_cli():
    def run(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        return subprocess.run([sys.executable, "-m", "etrm", *args], capture_output=True, text=True,
                              timeout=timeout, env=env, cwd=cwd)

    return run
