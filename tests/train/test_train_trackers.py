"""Metrics trackers: TensorBoard event files and an offline Weights & Biases run (no network)."""

import pytest

from etrm.train.config import load_config
from etrm.train.loop import train


def test_tensorboard_writes_event_files(tmp_path, tiny):
    train(load_config(tiny(tmp_path / "run", "tracker=tensorboard", "max_steps=2", "final_eval=false")))
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_runs_offline_without_network(tmp_path, tiny, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install '.[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    summary = train(load_config(tiny(run_dir, "tracker=wandb", "max_steps=2", "final_eval=false")))
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1
    assert list(offline_runs[0].glob("*.wandb"))  # the logged history, ready for `wandb sync`
    assert summary["tracker_link"]
