"""The learning-rate schedule's edges, gradient clipping in the real train step (facts section 3;
section 6, bug 4) and the EMA weights."""

from __future__ import annotations

import math

import pytest
import torch

from etrm.core import distributed
from etrm.data.tensors import to_torch
from etrm.train.loop import Trainer
from etrm.train.optim import EMA, lr_at


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_starts_above_zero_and_reaches_the_base_rate_at_its_end(schedule):
    base, warmup, total = 3e-3, 10, 100
    rates = [lr_at(step, base, warmup, total, schedule) for step in range(warmup)]
    assert rates[0] > 0
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False))  # strictly increasing
    assert rates[-1] == pytest.approx(base)
    assert lr_at(warmup, base, warmup, total, schedule) == pytest.approx(base)


def test_constant_after_warmup():
    base = 1e-4
    assert {lr_at(step, base, 5, 50) for step in range(5, 50)} == {base}
    assert lr_at(10_000, base, 5, 50) == base  # past the end too


def test_no_warmup_starts_at_the_base_rate():
    assert lr_at(0, 2e-3, 0, 10) == 2e-3
    assert lr_at(0, 2e-3, 0, 10, "cosine") == pytest.approx(2e-3)


@pytest.mark.parametrize("min_ratio", [0.0, 0.1])
def test_cosine_decays_monotonically_to_the_minimum_at_the_last_step(min_ratio):
    base, warmup, total = 1e-3, 4, 40
    rates = [lr_at(step, base, warmup, total, "cosine", min_ratio) for step in range(warmup, total)]
    assert rates[0] == pytest.approx(base)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert rates[-1] == pytest.approx(base * min_ratio, abs=1e-15)
    assert min(rates) >= base * min_ratio - 1e-15


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_warmup_longer_than_training(schedule):
    base, warmup, total = 1e-3, 100, 10
    rates = [lr_at(step, base, warmup, total, schedule) for step in range(total)]
    assert all(0 < r < base for r in rates)
    assert all(a < b for a, b in zip(rates, rates[1:], strict=False))
    assert all(math.isfinite(r) for r in rates)


def _trainer(tiny_config, tmp_path, *extra):
    return Trainer(tiny_config(tmp_path / "run", *extra), distributed.Runtime(torch.device("cpu")))


def test_train_step_uses_the_schedule(tiny_config, tmp_path):
    trainer = _trainer(tiny_config, tmp_path, "lr=0.01", "lr_warmup_steps=4", "lr_schedule=cosine",
                       "encoder_lr_scale=0.5")
    config = trainer.config
    for step in range(3):
        trainer.train_step(to_torch(trainer.sampler.batch(step, config.global_batch_size)))
        expected = lr_at(step, config.lr, config.lr_warmup_steps, config.max_steps, "cosine")
        groups = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
        assert groups["decoder"] == pytest.approx(expected)
        assert groups["encoder"] == pytest.approx(0.5 * expected)
        trainer.state.step += 1


def test_optimizer_sees_globally_clipped_gradients(tiny_config, tmp_path, monkeypatch):
    # Bug 4: without clipping ETRM collapsed. The optimiser must see the clipped global gradient
    # of every dense parameter (decoder and encoder together), while the log keeps the raw norm.
    clip = 0.01
    trainer = _trainer(tiny_config, tmp_path, f"grad_clip_norm={clip}")
    dense = trainer.optimizers[0]
    seen = []
    original_step = dense.step

    def spying_step(*args, **kwargs):
        grads = [p.grad for group in dense.param_groups for p in group["params"] if p.grad is not None]
        seen.append((len(grads), torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item()))
        return original_step(*args, **kwargs)

    monkeypatch.setattr(dense, "step", spying_step)
    batch = to_torch(trainer.sampler.batch(0, trainer.config.global_batch_size))
    metrics = trainer.train_step(batch)
    num_dense = sum(1 for p in trainer.model.parameters() if p.requires_grad)
    assert seen and seen[0][0] == num_dense  # every dense parameter had a gradient
    assert seen[0][1] <= clip * (1 + 1e-4)
    assert metrics["grad_norm"].item() > clip  # the raw norm was above the bar: clipping acted


def test_ema_moves_towards_the_weights_at_its_rate():
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, 0.9)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for key, value in ema.state_dict().items():
        torch.testing.assert_close(value, start[key] + 0.1)
    weights = ema.weights_for(model)
    assert weights.keys() == model.state_dict().keys()


def test_adam_atan2_update_is_the_reference_formula_over_several_steps():
    # The reference: m, v Adam moments; p <- p * (1 - lr * wd) - lr * atan2(m_hat, sqrt(v_hat)),
    # with no extra factor (adam-atan2-pytorch's default a=1.27 would scale each step).
    from types import SimpleNamespace

    from etrm.train.optim import build_optimizers

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    config = SimpleNamespace(optimizer="adam_atan2", lr=1e-2, beta1=0.9, beta2=0.95, weight_decay=0.1,
                             encoder_lr_scale=1.0, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1)
    (optimizer,) = build_optimizers(model, config)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    m = {n: torch.zeros_like(p) for n, p in expected.items()}
    v = {n: torch.zeros_like(p) for n, p in expected.items()}
    for step in range(1, 6):
        grads = {n: torch.randn_like(p) * (0.1 * step) for n, p in expected.items()}
        for name, param in model.named_parameters():
            param.grad = grads[name].clone()
        optimizer.step()
        for name in expected:
            m[name] = config.beta1 * m[name] + (1 - config.beta1) * grads[name]
            v[name] = config.beta2 * v[name] + (1 - config.beta2) * grads[name] ** 2
            m_hat, v_hat = m[name] / (1 - config.beta1**step), v[name] / (1 - config.beta2**step)
            expected[name] = (expected[name] * (1 - config.lr * config.weight_decay)
                              - config.lr * torch.atan2(m_hat, v_hat.sqrt()))
        for name, param in model.named_parameters():
            torch.testing.assert_close(param.detach(), expected[name], atol=1e-7, rtol=1e-6,
                                       msg=f"step {step}, {name}")


def test_ema_leaves_the_puzzle_table_out_and_evaluation_reads_it_as_trained(tiny_config, tmp_path):
    # The TRM reference averages the dense parameters only; the sign-SGD table is evaluated as trained.
    from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER

    trainer = Trainer(tiny_config(tmp_path / "trm", "model_type=trm", "augmentations_per_task=2"),
                      distributed.Runtime(torch.device("cpu")))
    assert PUZZLE_TABLE_PARAMETER not in trainer.ema.state_dict()
    assert set(trainer.ema.state_dict()) == {n for n, _ in trainer.model.named_parameters()} - {PUZZLE_TABLE_PARAMETER}
    for step in range(3):
        batch = trainer.sampler.batch(step, trainer.config.global_batch_size)
        trainer.train_step(to_torch(batch, trainer.runtime.device))
        trainer.state.step += 1
    table = trainer.model.context_source.table.weight
    assert table.abs().sum() > 0  # sign-SGD moved the touched rows
    weights = trainer.ema.weights_for(trainer.model)
    assert torch.equal(weights[PUZZLE_TABLE_PARAMETER], table.detach())
    decoder_weight = "decoder.lm_head.weight"
    assert not torch.equal(weights[decoder_weight], trainer.model.state_dict()[decoder_weight])  # dense: averaged
