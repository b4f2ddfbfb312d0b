"""Test-time latent optimisation: weights untouched, demo loss lowered, best-two + voting together."""

import numpy as np
import pytest
import torch

from etrm.core.checkpoint import read_checkpoint
from etrm.core.config import TTOConfig
from etrm.core.distributed import Runtime
from etrm.data.episodes import AugmentedTasks, EvalEnumeration
from etrm.data.tensors import to_torch
from etrm.eval.evaluate import evaluate, predict
from etrm.eval.tto import demo_loss, initial_context, optimise_contexts
from etrm.models.build import build_model, load_evaluation_weights

CANVAS = 6
CPU = Runtime(torch.device("cpu"))


@pytest.fixture(scope="module")
def trained(finished_eval_run, tiny_eval_config, tmp_path_factory):
    """The tiny ETRM run's EMA weights (trained 6 steps)."""
    model = build_model(tiny_eval_config(tmp_path_factory.mktemp("tto")))
    load_evaluation_weights(model, read_checkpoint(finished_eval_run / "checkpoint.pt"))
    return model.eval()


@pytest.fixture(scope="module")
def batch(mixed_tasks):
    augmented = AugmentedTasks(mixed_tasks, 2, seed=0)
    return to_torch(next(EvalEnumeration(augmented, canvas_side=CANVAS, max_demos=10).batches(6)))


def test_tto_never_changes_model_weights(trained, batch):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    optimise_contexts(trained, batch, TTOConfig(steps=5, lr=0.1))
    after = trained.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in trained.parameters())


def test_tto_lowers_the_demo_loss(trained, batch):
    config = TTOConfig(steps=15, lr=0.05, act_steps=2)
    start = demo_loss(trained, initial_context(trained, batch), batch, config.act_steps).detach()
    _, losses = optimise_contexts(trained, batch, config)
    assert torch.all(losses[:, 0] <= start + 1e-9)  # the start is among the candidates
    assert float(losses[:, 0].mean()) < float(start.mean()) - 1e-3
    assert torch.all(losses[:, 0] <= losses[:, 1])


def test_zero_steps_keeps_the_encoder_context(trained, batch):
    contexts, _ = optimise_contexts(trained, batch, TTOConfig(steps=0))
    assert torch.allclose(contexts[:, 0], initial_context(trained, batch))


def test_best_two_and_voting_work_together(trained, mixed_tasks):
    augmented = AugmentedTasks(mixed_tasks, 3, seed=0)
    config = TTOConfig(steps=3, lr=0.05)
    records = predict(trained, augmented, canvas_side=CANVAS, max_demos=10, batch_size=5, runtime=CPU, tto=config)
    primary = [r for r in records if r["tto_rank"] == 0]
    assert len(primary) == len(records) // 2 == len(EvalEnumeration(augmented, canvas_side=CANVAS, max_demos=10).items)
    def key(record):
        return record["task_index"], record["test_index"], record["augmentation_index"]

    second = {key(r): r for r in records if r["tto_rank"] == 1}
    assert set(second) == {key(r) for r in primary}
    assert all(r["demo_loss"] <= second[key(r)]["demo_loss"] + 1e-9 for r in primary)
    summary = evaluate(trained, augmented, canvas_side=CANVAS, max_demos=10, batch_size=5, runtime=CPU, tto=config)
    assert summary["num_tasks"] == len(mixed_tasks) and summary["num_predictions"] == len(primary)
    for task in summary["per_task"].values():
        assert all(test["candidates"] >= 1 for test in task["tests"])


def test_trm_fitting_starts_from_the_mean_embedding(tiny_eval_config, tmp_path, batch):
    model = build_model(tiny_eval_config(tmp_path, "model_type=trm", "augmentations_per_task=2"), num_puzzle_ids=5)
    with torch.no_grad():
        model.context_source.table.weight.copy_(torch.arange(5 * 32, dtype=torch.float32).view(5, 32))
    context = initial_context(model, batch)
    expected = np.arange(5 * 32, dtype=np.float32).reshape(5, 32)[:4].mean(0)  # blank (last) row excluded
    assert np.allclose(context[0, 0].numpy(), expected)
    before = model.context_source.table.weight.clone()
    contexts, _ = optimise_contexts(model, batch, TTOConfig(steps=3))
    assert torch.equal(before, model.context_source.table.weight)
    assert contexts.shape == (batch["inputs"].shape[0], 2, *context.shape[1:])


def test_scaled_tto_keeps_the_context_on_the_encoders_scale(trained, batch):
    # The encoder's output vectors have RMS 1/sqrt(hidden); Adam on the raw context leaves it.
    start = initial_context(trained, batch)
    target = start.norm(dim=-1)
    hidden = start.shape[-1]
    torch.testing.assert_close(target, torch.ones_like(target), atol=1e-3, rtol=0)  # RMS 1/sqrt(hidden)
    steps = TTOConfig(steps=20, lr=0.05, act_steps=1)
    scaled, _ = optimise_contexts(trained, batch, steps)
    raw, _ = optimise_contexts(trained, batch, TTOConfig(steps=20, lr=0.05, act_steps=1, parameterisation="raw"))
    for rank in (0, 1):
        torch.testing.assert_close(scaled[:, rank].norm(dim=-1), target, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(scaled[:, 0], start, atol=1e-4)  # it did move
    raw_rms = raw[:, 0].pow(2).mean(-1).sqrt()
    assert float((raw_rms - 1 / hidden**0.5).abs().max()) > 0.01  # the old parameterisation drifts


def test_scaled_trm_fitting_moves_one_row_at_the_trained_rows_norm(tiny_eval_config, tmp_path, batch):
    from etrm.models.puzzle_embedding import PuzzleEmbedding

    torch.manual_seed(0)
    config = tiny_eval_config(tmp_path, "model_type=trm", "augmentations_per_task=1")
    model = build_model(config, num_puzzle_ids=5).eval()
    source = model.context_source
    assert isinstance(source, PuzzleEmbedding)
    with torch.no_grad():
        source.table.weight.normal_()
    contexts, losses = optimise_contexts(model, batch, TTOConfig(steps=5, lr=0.1, act_steps=1))
    start, _ = optimise_contexts(model, batch, TTOConfig(steps=0))
    row_norm = source.table.weight[:-1].norm(dim=-1).mean()
    filled = source.table.weight.shape[1]
    flat = contexts[:, 0].flatten(1)
    assert not torch.allclose(flat, start[:, 0].flatten(1), atol=1e-4)  # the row moved
    assert torch.all(losses[:, 0] <= losses[:, 1])
    torch.testing.assert_close(flat[:, :filled].norm(dim=-1), row_norm.expand(flat.shape[0]), rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(flat[:, filled:]) == 0  # the padding positions stay zero, as in training
