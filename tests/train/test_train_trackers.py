"""Metrics trackers: TensorBoard event files and an offline Weights & Biases run (no network)."""

import json

import pytest

from etrm.core.config import load_config
from etrm.train.loop import train


def test_tensorboard_holds_the_logged_scalars_at_their_steps(tmp_path, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train(load_config(tiny(run_dir, "tracker=tensorboard", "max_steps=2", "final_eval=false")))
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # Read back by TensorBoard's own reader: one train/loss point per logged step (log_every=1),
    # holding the loss the run wrote to metrics.jsonl.
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/token_accuracy", "train/lr"} <= set(events.Tags()["scalars"])
    points = events.Scalars("train/loss")
    assert [point.step for point in points] == [1, 2]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert [point.value for point in points] == pytest.approx(losses, rel=1e-6)


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
