"""A run whose loss or gradient becomes NaN stops with TrainingDiverged naming the step, and never
writes a checkpoint holding the broken weights."""

from __future__ import annotations

import math

import pytest
import torch

from etrm.cli import main
from etrm.core.checkpoint import read_checkpoint
from etrm.train.loop import Trainer, TrainingDiverged, train


def _all_finite(state: dict) -> bool:
    tensors = list(state["model"].values()) + list(state["ema"].values())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _poison_weights_before(monkeypatch, bad_step: int) -> None:
    """Fill a decoder weight with NaN just before optimiser step `bad_step` (1-based)."""
    original = Trainer.train_step

    def step(self, batch):
        if self.state.step == bad_step - 1:
            with torch.no_grad():
                self.model.decoder.lm_head.weight.fill_(math.nan)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", step)


def _poison_gradient_at(monkeypatch, bad_step: int) -> None:
    """At optimiser step `bad_step` (1-based) the forward pass and loss stay finite, but one
    encoder gradient becomes infinite (an overflow in the backward pass)."""
    original = Trainer.train_step

    def step(self, batch):
        if self.state.step != bad_step - 1:
            return original(self, batch)
        param = next(self.model.context_source.encoder.parameters())
        handle = param.register_hook(lambda grad: torch.full_like(grad, math.inf))
        try:
            return original(self, batch)
        finally:
            handle.remove()

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize("log_every", [1, 10])
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch, log_every):
    _poison_weights_before(monkeypatch, bad_step=3)
    config = tiny_config(tmp_path / "run", "checkpoint_every=2", f"log_every={log_every}", "max_steps=6")
    with pytest.raises(TrainingDiverged) as caught:
        train(config)
    message = str(caught.value)
    assert "step 3" in message and len(message.splitlines()) == 1
    state = read_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2
    assert _all_finite(state)


@pytest.mark.parametrize("bad_step", [2, 6])  # a checkpoint step, and the last step
def test_non_finite_gradient_with_finite_loss_is_caught_before_saving(tiny_config, tmp_path, monkeypatch, bad_step):
    _poison_gradient_at(monkeypatch, bad_step)
    config = tiny_config(tmp_path / "run", "checkpoint_every=2", "log_every=10", "max_steps=6")
    with pytest.raises(TrainingDiverged) as caught:
        train(config)
    message = str(caught.value)
    assert f"step {bad_step}" in message
    path = tmp_path / "run" / "checkpoint.pt"
    last_good = (bad_step - 1) // 2 * 2  # checkpoint_every=2: the last checkpoint step before the bad one
    if last_good == 0:  # the bad step is the first checkpoint step: nothing may be written
        assert not path.exists() and "no checkpoint was written" in message
    else:
        state = read_checkpoint(path)
        assert state["step"] == last_good and f"(step {last_good}) is kept" in message
        assert _all_finite(state)


def test_cli_reports_divergence_as_one_line(tiny, tmp_path, monkeypatch, capsys):
    _poison_weights_before(monkeypatch, bad_step=2)
    status = main(["train", *tiny(tmp_path / "run", "checkpoint_every=100", "log_every=1")])
    captured = capsys.readouterr()
    assert status == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etrm: error:"), captured.err
    assert "step 2" in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
