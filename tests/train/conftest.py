"""Shared pieces of the training tests: tiny run configs and one finished tiny run.

Every run here is tiny (6x6 canvas, hidden 32, a handful of tasks) so the suite runs on two
CPU cores in a few minutes. Torch runs single-threaded: on a shared two-core machine OpenMP
spin-waiting makes two threads ~100x slower than one for matrices this small.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from etrm.train.config import RunConfig, load_config

TINY_OVERRIDES = (
    "preset=cpu-demo", "canvas_side=6", "max_train_groups=4", "max_eval_groups=3", "global_batch_size=8",
    "max_steps=6", "log_every=1", "checkpoint_every=3", "model.hidden_size=32", "model.num_heads=2",
    "encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1", "halt_max_steps=3",
    "tracker=none", "progress=false", "eval.num_augmentations=2", "eval.batch_size=16", "device=cpu",
)


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_overrides(run_dir: str | Path, *extra: str) -> list[str]:
    return [*TINY_OVERRIDES, f"run_dir={run_dir}", *extra]


@pytest.fixture(scope="session")
def tiny() -> Callable[..., list[str]]:
    """tiny(run_dir, "key=value", ...) -> the override list of a tiny run."""
    return tiny_overrides


@pytest.fixture(scope="session")
def tiny_config() -> Callable[..., RunConfig]:
    """tiny_config(run_dir, "key=value", ...) -> a loaded tiny RunConfig."""
    return lambda run_dir, *extra: load_config(tiny_overrides(run_dir, *extra))


def run_etrm(*args: str, timeout: float = 300, launcher: tuple[str, ...] = ("-m", "etrm"),
             cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


@pytest.fixture(scope="session")
def etrm_cli() -> Callable[..., subprocess.CompletedProcess]:
    """etrm_cli("train", ...) runs `python -m etrm ...` single-threaded and captures its output."""
    return run_etrm


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A tiny ETRM run trained to its end (6 steps, checkpoints at 3 and 6, final evaluation)."""
    from etrm.train.loop import train

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(tiny_overrides(run_dir)))
    return run_dir
