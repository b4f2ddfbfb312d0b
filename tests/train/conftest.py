"""Shared pieces of the training tests: tiny run configs and one finished tiny run.

Every run here is tiny (6x6 canvas, hidden 32, a handful of tasks) so the suite runs on two
CPU cores in a few minutes (the tiny overrides and single-threaded torch: tests/conftest.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from etrm.core.config import RunConfig, load_config


@pytest.fixture(scope="session")
def tiny_config(tiny) -> Callable[..., RunConfig]:
    """tiny_config(run_dir, "key=value", ...) -> a loaded tiny RunConfig."""
    return lambda run_dir, *extra: load_config(tiny(run_dir, *extra))


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
def finished_run(tmp_path_factory, tiny) -> Path:
    """A tiny ETRM run trained to its end (6 steps, checkpoints at 3 and 6, final evaluation)."""
    from etrm.train.loop import train

    run_dir = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(tiny(run_dir)))
    return run_dir


class Killed(Exception):
    """Raised inside a training step to kill a run mid-way."""


@pytest.fixture
def killed_then_resumed(tiny_config, monkeypatch) -> Callable[..., None]:
    """killed_then_resumed(run_dir, *extra): train, killed during step 6 (the last checkpoint at
    step 4 with checkpoint_every=2), then resume the same run to its end."""
    from etrm.core.checkpoint import read_checkpoint
    from etrm.train.loop import Trainer, train

    def run(run_dir: Path, *extra: str) -> None:
        original = Trainer.train_step

        def dying(self, batch):
            if self.state.step == 5:
                raise Killed
            return original(self, batch)

        monkeypatch.setattr(Trainer, "train_step", dying)
        with pytest.raises(Killed):
            train(tiny_config(run_dir, *extra))
        monkeypatch.setattr(Trainer, "train_step", original)
        assert read_checkpoint(run_dir / "checkpoint.pt")["step"] == 4
        train(tiny_config(run_dir, *extra, "resume=true"))

    return run
