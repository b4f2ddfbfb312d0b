"""The training modes (`train_mode`): persistent (the reference: one ACT step over the carry per
optimiser step), per_batch (TRM's deep supervision: up to halt_max_steps optimiser steps on one
batch from fresh latents, halted samples dropped) and per_batch_encode_once (the same, the
encoder run and stepped once per batch). One `train_step` call = one batch = one `state.step`.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from etrm.core import distributed
from etrm.core.checkpoint import read_checkpoint
from etrm.core.errors import ConfigError
from etrm.data.tensors import to_torch
from etrm.models.losses import act_loss
from etrm.train import loop
from etrm.train.loop import Trainer, train
from etrm.train.metrics import read_metrics

ENCODE_ONCE = "per_batch_encode_once"
COMPARED = ("loss", "lm_loss", "q_halt_loss", "token_accuracy", "exact_match", "q_halt_accuracy",
            "mean_act_steps", "halted_samples", "grad_norm", "encoder_grad_share", "lr", "optimizer_steps")


def _trainer(tiny_config, run_dir, *extra: str) -> Trainer:
    return Trainer(tiny_config(run_dir, *extra), distributed.Runtime(torch.device("cpu")))


def _step(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Train on the batch of the trainer's current step, as `Trainer.run` does."""
    batch = to_torch(trainer.sampler.batch(trainer.state.step, trainer.config.global_batch_size))
    metrics = trainer.train_step(batch)
    trainer.state.add(metrics)
    return metrics


def _parameters(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in trainer.model.named_parameters()}


def _halt_at_once(trainer: Trainer) -> None:
    # q_halt > 0 from the start: without exploration every sample halts at its first step.
    with torch.no_grad():
        trainer.model.decoder.q_head.bias[0] = 2.0


def _adam_steps(trainer: Trainer, encoder: bool) -> set[float]:
    """The update counts of the decoder's or the encoder's parameters in the dense optimiser."""
    optimizer = trainer.optimizers[0]
    return {float(optimizer.state[param]["step"]) for name, param in trainer.model.named_parameters()
            if name.startswith("context_source.encoder") == encoder}


@pytest.mark.parametrize(("train_mode", "extra"), [
    ("per_batch", ()),
    ("per_batch", ("model_type=trm", "augmentations_per_task=2")),
    ("per_batch", ("encoder.type=recurrent",)),
    # Clipping off: encode_once clips the decoder's and the encoder's gradients apart.
    (ENCODE_ONCE, ("grad_clip_norm=1e6",)),
    (ENCODE_ONCE, ("grad_clip_norm=1e6", "encoder.type=variational")),  # its KL reaches the encoder once
])
def test_one_supervision_step_per_batch_is_the_persistent_mode(train_mode, extra, tiny_config, tmp_path):
    common = ("halt_max_steps=1", "halt_exploration_prob=0", *extra)
    runs = {}
    for mode in ("persistent", train_mode):  # one after the other: the variational noise uses the global RNG
        trainer = _trainer(tiny_config, tmp_path / mode, *common, f"train_mode={mode}")
        runs[mode] = trainer, [_step(trainer) for _ in range(3)]
    (persistent, expected), (per_batch, got) = runs["persistent"], runs[train_mode]
    for step_expected, step_got in zip(expected, got, strict=True):
        for key in ("loss", "lm_loss", "count", "exact_match", "steps", "samples"):
            torch.testing.assert_close(step_got[key].double(), step_expected[key].double(), rtol=1e-6, atol=1e-6)
        assert float(step_got["optimizer_steps"]) == (2 if train_mode == ENCODE_ONCE else 1)
    reference = _parameters(persistent)
    for name, value in _parameters(per_batch).items():
        torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-6, msg=name)
    assert per_batch.state.carry is None  # nothing crosses batches


@pytest.mark.parametrize(("train_mode", "extra"), [
    ("per_batch", ()), ("per_batch", ("encoder.type=recurrent",)), (ENCODE_ONCE, ()),
])
def test_every_parameter_gets_a_gradient_and_moves_at_every_batch(train_mode, extra, tiny_config, tmp_path):
    # halt_max_steps=3, no exploration, q_halt starts at -5: three supervision steps per batch.
    trainer = _trainer(tiny_config, tmp_path, f"train_mode={train_mode}", "halt_exploration_prob=0", *extra)
    gradients: Counter[str] = Counter()  # per parameter: backward passes that gave it a non-zero gradient

    def count(name: str):
        def hook(grad: torch.Tensor) -> None:
            gradients[name] += bool(grad.abs().sum() > 0)
        return hook

    for name, param in trainer.model.named_parameters():
        param.register_hook(count(name))
    encoder_backwards = 1 if train_mode == ENCODE_ONCE else 3
    for step in range(3):
        before = _parameters(trainer)
        gradients.clear()
        _step(trainer)
        for name, value in _parameters(trainer).items():
            assert not torch.equal(value, before[name]), f"batch {step + 1}: {name} did not move"
            encoder = name.startswith("context_source.encoder")
            assert gradients[name] == (encoder_backwards if encoder else 3), (step, name)


@pytest.mark.parametrize("train_mode", ["per_batch", ENCODE_ONCE])
@pytest.mark.parametrize("halt_at_once", [False, True])
def test_a_batch_runs_until_every_sample_has_halted(train_mode, halt_at_once, tiny_config, tmp_path):
    trainer = _trainer(tiny_config, tmp_path, f"train_mode={train_mode}", "halt_exploration_prob=0")
    if halt_at_once:
        _halt_at_once(trainer)
    size, supervision_steps = trainer.config.global_batch_size, 1 if halt_at_once else 3
    for batch in range(1, 3):
        metrics = _step(trainer)
        encoder_steps = 1 if train_mode == ENCODE_ONCE else supervision_steps
        assert float(metrics["optimizer_steps"]) == supervision_steps + (train_mode == ENCODE_ONCE)
        assert _adam_steps(trainer, encoder=False) == {float(batch * supervision_steps)}
        assert _adam_steps(trainer, encoder=True) == {float(batch * encoder_steps)}
        # every sample is counted once, at the step it halted
        assert int(metrics["count"]) == int(metrics["samples"]) == size
        assert int(metrics["steps"]) == size * supervision_steps


def test_the_batch_stops_when_the_last_sample_halts(tiny_config, tmp_path):
    # q_halt > 0, but exploration keeps some samples running: the batch runs as long as they do.
    trainer = _trainer(tiny_config, tmp_path, "train_mode=per_batch", "halt_exploration_prob=0.5",
                       "halt_max_steps=6")
    _halt_at_once(trainer)
    runs = []
    for _ in range(4):
        metrics = _step(trainer)
        assert int(metrics["count"]) == trainer.config.global_batch_size
        runs.append(int(metrics["optimizer_steps"]))
    assert max(runs) <= 6 and len(set(runs)) > 1  # the exploration draws decided


def test_halted_samples_are_no_longer_supervised(tiny_config, tmp_path, monkeypatch):
    trainer = _trainer(tiny_config, tmp_path, "train_mode=per_batch", "halt_exploration_prob=0.5", "halt_max_steps=6")
    _halt_at_once(trainer)
    calls = []

    def spying_act_loss(outputs, labels, halted, *args, active, **kwargs):
        logits = outputs["logits"]
        loss, metrics = act_loss(outputs, labels, halted, *args, active=active, **kwargs)
        (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
        calls.append((halted.clone(), active.clone(), grad.abs().sum((1, 2)) > 0))
        return loss, metrics

    monkeypatch.setattr(loop, "act_loss", spying_act_loss)
    _step(trainer)
    assert 1 < len(calls) <= 6 and bool(calls[0][1].all())
    for (halted, active, _), (_, next_active, _) in zip(calls, calls[1:], strict=False):
        assert torch.equal(next_active, active & ~halted)
    assert any(not bool(active.all()) for _, active, _ in calls)  # some samples stopped before others
    for _, active, has_gradient in calls:
        assert torch.equal(has_gradient, active)  # only the samples still running reach the weights


def test_inactive_samples_weigh_nothing_in_the_loss():
    torch.manual_seed(0)
    logits, q_halt = torch.randn(4, 5, 12), torch.randn(4)
    labels = torch.randint(0, 12, (4, 5))
    outputs = {"logits": logits, "q_halt_logits": q_halt, "auxiliary_loss": torch.rand(4)}
    halted, active = torch.tensor([True, True, False, True]), torch.tensor([True, False, True, False])
    total, metrics = act_loss(outputs, labels, halted, 0.5, active=active)
    subset, subset_metrics = act_loss({k: v[active] for k, v in outputs.items()}, labels[active], halted[active], 0.5)
    torch.testing.assert_close(total, subset)
    assert metrics.keys() == subset_metrics.keys()
    for key, value in subset_metrics.items():
        torch.testing.assert_close(metrics[key], value, msg=key)
    everyone, _ = act_loss(outputs, labels, halted, 0.5, active=torch.ones(4, dtype=torch.bool))
    assert torch.equal(everyone, act_loss(outputs, labels, halted, 0.5)[0])  # the default: all active


@pytest.mark.parametrize(("train_mode", "calls"), [("per_batch", 3), (ENCODE_ONCE, 1)])
def test_the_encoder_runs_once_per_supervision_step_or_once_per_batch(train_mode, calls, tiny_config, tmp_path):
    trainer = _trainer(tiny_config, tmp_path, f"train_mode={train_mode}", "halt_exploration_prob=0")
    forwards = []
    trainer.model.context_source.encoder.project.register_forward_hook(lambda *_: forwards.append(1))
    for batch in range(1, 3):
        _step(trainer)
        assert len(forwards) == batch * calls


def test_encode_once_without_encoder_parameters_trains_the_decoder(tiny_config, tmp_path):
    trainer = _trainer(tiny_config, tmp_path, f"train_mode={ENCODE_ONCE}", "encoder.type=none",
                       "halt_exploration_prob=0")
    before = _parameters(trainer)
    metrics = _step(trainer)
    assert float(metrics["optimizer_steps"]) == 3  # the decoder's steps, no encoder step
    assert all(not torch.equal(value, before[name]) for name, value in _parameters(trainer).items())


@pytest.mark.parametrize("train_mode", ["per_batch", ENCODE_ONCE])
def test_a_per_batch_run_resumes_exactly(train_mode, tiny_config, tmp_path, monkeypatch, killed_then_resumed):
    # As tests/train/test_train_resume.py: killed during step 6, resumed from the checkpoint of
    # step 4 in the middle of the log window 4..6. q_halt > 0 from the start, so the exploration
    # draws (the torch RNG) decide how many supervision steps each batch runs.
    original_init = Trainer.__init__

    def eager_to_halt(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        _halt_at_once(self)

    monkeypatch.setattr(Trainer, "__init__", eager_to_halt)
    extra = (f"train_mode={train_mode}", "max_steps=8", "log_every=3", "checkpoint_every=2",
             "halt_exploration_prob=0.5", "halt_max_steps=4", "final_eval=false")
    train(tiny_config(tmp_path / "whole", *extra))
    whole = read_metrics(tmp_path / "whole", "train")
    assert len({record["optimizer_steps"] for record in whole}) > 1  # the RNG mattered

    killed_then_resumed(tmp_path / "killed", *extra)

    resumed = read_metrics(tmp_path / "killed", "train")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == [3, 6, 8]
    for a, b in zip(whole, resumed, strict=True):
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-6), (a["step"], key)
    state_a, state_b = (read_checkpoint(tmp_path / run / "checkpoint.pt") for run in ("whole", "killed"))
    assert state_a["step"] == state_b["step"] == 8 and state_a["carry"] is None
    for part in ("model", "ema"):
        for key, value in state_a[part].items():
            torch.testing.assert_close(state_b[part][key], value, rtol=1e-6, atol=1e-6)


def test_an_unknown_train_mode_is_refused(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="train_mode"):
        tiny_config(tmp_path, "train_mode=per_sample")


@pytest.mark.parametrize("extra", [("model_type=trm", "augmentations_per_task=2"), ("encoder.type=recurrent",)])
def test_encode_once_refuses_what_it_cannot_encode_once(extra, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="per_batch_encode_once") as caught:
        _trainer(tiny_config, tmp_path, f"train_mode={ENCODE_ONCE}", *extra)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.slow
def test_a_compiled_per_batch_step_matches_eager(tiny_config, tmp_path):
    # The per-batch modes call the decoder directly, so compile=true compiles the decoder alone.
    losses = []
    for compiled in (False, True):
        trainer = _trainer(tiny_config, tmp_path / str(compiled), "train_mode=per_batch", "halt_exploration_prob=0",
                           f"compile={str(compiled).lower()}")
        losses.append(_step(trainer)["loss"])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-4)
