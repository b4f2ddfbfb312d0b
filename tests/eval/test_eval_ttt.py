"""Test-time training: weights untouched, demo loss lowered, tasks independent, batching exact."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from etrm.core.checkpoint import read_checkpoint
from etrm.core.config import ConfigError, TTTConfig, config_from_yaml, load_config, to_yaml
from etrm.core.distributed import Runtime
from etrm.data.episodes import AugmentedTasks
from etrm.eval.evaluate import evaluate, predict
from etrm.eval.ttt import LORA_TARGETS, TaskAdapter, adapt, episode_batch, episode_losses, task_losses
from etrm.models.build import build_model, load_evaluation_weights
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER

CANVAS = 6
CPU = Runtime(torch.device("cpu"))
KINDS = ("context", "lora", "decoder", "all")


@pytest.fixture(scope="module")
def trained(finished_eval_run, tiny_eval_config, tmp_path_factory):
    """The tiny ETRM run's EMA weights (trained 6 steps)."""
    model = build_model(tiny_eval_config(tmp_path_factory.mktemp("ttt")))
    load_evaluation_weights(model, read_checkpoint(finished_eval_run / "checkpoint.pt"))
    return model.eval()


@pytest.fixture(scope="module")
def augmented(mixed_tasks):
    return AugmentedTasks(mixed_tasks, 2, seed=0)


def _episodes(augmented, tasks, config, step=0):
    return episode_batch(augmented, tasks, step, config, canvas_side=CANVAS, max_demos=10, device=torch.device("cpu"))


def _adapt(model, augmented, tasks, config, region_margin=None):
    return adapt(model, augmented, tasks, config, canvas_side=CANVAS, max_demos=10, region_margin=region_margin)


def _predict(model, augmented, config, batch_size=4, region_margin=None):
    records = predict(model, augmented, canvas_side=CANVAS, max_demos=10, batch_size=batch_size, runtime=CPU,
                      ttt=config, region_margin=region_margin)
    return {(augmented.tasks[r["task_index"]].id, r["test_index"], r["augmentation_index"]): r for r in records}


@pytest.mark.parametrize("params", KINDS)
def test_evaluation_with_ttt_never_changes_the_model(trained, augmented, params):
    before = {k: v.clone() for k, v in trained.state_dict().items()}
    summary = evaluate(trained, augmented, canvas_side=CANVAS, max_demos=10, batch_size=4, runtime=CPU,
                       ttt=TTTConfig(steps=2, lr=0.05, params=params))
    assert all(torch.equal(before[k], v) for k, v in trained.state_dict().items())
    assert all(p.grad is None for p in trained.parameters())
    assert summary["num_tasks"] == 3 and summary["test_time_seconds_per_task"] > 0


@pytest.mark.parametrize("params", KINDS)
def test_ttt_lowers_the_demo_loss(trained, augmented, params):
    config = TTTConfig(steps=12, lr=0.03 if params in ("decoder", "all") else 0.1, params=params)
    tasks = [0] if params in ("decoder", "all") else [0, 1, 2]
    fixed = _episodes(augmented, tasks, config, step=99)  # episodes the steps never drew
    with torch.no_grad():  # adapt enables gradients for its own steps
        start = task_losses(TaskAdapter(trained, config, [augmented.tasks[t].id for t in tasks]), fixed)
        adapter = _adapt(trained, augmented, tasks, config)
        end = task_losses(adapter, fixed)
    assert torch.all(end < start - 1e-3), (start, end)


def test_evaluation_reports_how_well_the_demos_were_fitted(trained, augmented):
    config = TTTConfig(steps=30, lr=0.03, params="decoder", augment=False)
    summary = evaluate(trained, augmented, canvas_side=CANVAS, max_demos=10, batch_size=4, runtime=CPU, ttt=config)
    tasks = summary["per_task"]
    assert all(t["ttt_demo_loss_last"] < t["ttt_demo_loss_first"] for t in tasks.values())
    # The first step's figures are the unadapted model's on that step's episodes.
    for index, task in enumerate(augmented.tasks):
        with torch.no_grad():
            loss = task_losses(TaskAdapter(trained, config, [task.id]), _episodes(augmented, [index], config))
        assert tasks[task.id]["ttt_demo_loss_first"] == pytest.approx(float(loss), rel=1e-5)
    for key in ("ttt_demo_loss_first", "ttt_demo_exact_first", "ttt_demo_loss_last", "ttt_demo_exact_last"):
        assert summary[key] == pytest.approx(np.mean([t[key] for t in tasks.values()]))
    fitted = [t for t in tasks.values() if t["ttt_demo_exact_last"] == 1.0]
    assert summary["ttt_demos_fitted_tasks"] == len(fitted)
    assert summary["ttt_pass@2_of_fitted"] == (np.mean([t["pass@2"] for t in fitted]) if fitted else None)
    untrained = evaluate(trained, augmented, canvas_side=CANVAS, max_demos=10, batch_size=4, runtime=CPU)
    assert "ttt_demo_exact_last" not in untrained


@pytest.mark.parametrize("params", KINDS)
def test_an_unadapted_adapter_predicts_as_the_trained_model(trained, augmented, params):
    config = TTTConfig(steps=1, params=params)
    batch = _episodes(augmented, [0], config)
    fresh = TaskAdapter(trained, config, [augmented.tasks[0].id])
    with torch.no_grad():
        context = trained.context_source(batch)
        expected = trained.decode(batch["inputs"], context, 3)["logits"]
        got = fresh.forward(batch, 3)["logits"]
    assert torch.allclose(expected, got, atol=1e-5)


@pytest.mark.parametrize("act_steps", (2, 5))
def test_the_objective_never_runs_past_the_steps_training_supervised(trained, augmented, act_steps):
    # The tiny model halts at 3 ACT steps: 5 would fit outputs it never learnt to give and that
    # prediction never reads, so the objective stops at 3.
    config = TTTConfig(steps=1, params="lora", act_steps=act_steps)
    batch = _episodes(augmented, [0], config)
    expected_steps = min(act_steps, trained.config.halt_max_steps)
    with torch.no_grad():
        outputs = trained.decode(batch["inputs"], trained.context_source(batch), expected_steps)
        expected = episode_losses(outputs, batch["labels"]).mean()
        got = task_losses(TaskAdapter(trained, config, [augmented.tasks[0].id]), batch)
    assert trained.config.halt_max_steps == 3
    assert torch.allclose(got, expected.view(1), atol=1e-6)


def test_lora_has_rank_r_adapters_on_every_projection(trained):
    config = TTTConfig(params="lora", lora_rank=3)
    adapter = TaskAdapter(trained, config, [f"task{i}" for i in range(5)])
    expected = 0
    for name, module in trained.decoder.named_modules():
        if name.rsplit(".", 1)[-1] in LORA_TARGETS:
            out_features, in_features = module.weight.shape
            expected += 3 * (in_features + out_features)
    layers = trained.config.num_layers
    assert len(adapter.lora) == 4 * layers
    assert adapter.num_parameters() == expected
    assert 0 < expected < 0.2 * sum(p.numel() for p in trained.decoder.parameters())


@pytest.mark.parametrize("region_margin", [None, 0])  # a size-aware canvas: alone, a task runs on its region
@pytest.mark.parametrize("params", ("context", "lora"))
def test_a_batched_adaptation_equals_adapting_each_task_alone(trained, augmented, params, region_margin):
    # In float64, so that rounding (which Adam's normalised steps magnify where a gradient is
    # zero, such as the radial direction of a norm-kept context) cannot hide a real difference.
    model = copy.deepcopy(trained).double()
    config = TTTConfig(steps=4, lr=0.05, params=params)
    adapted = _adapt(model, augmented, [0, 1, 2], config, region_margin)
    for slot in range(3):
        alone = _adapt(model, augmented, [slot], config, region_margin)
        for batched, single in zip(adapted.per_task_tensors, alone.per_task_tensors, strict=True):
            assert torch.allclose(batched[slot], single[0], rtol=1e-9, atol=1e-12)
    one_by_one = _predict(model, augmented, replace(config, tasks_per_batch=1), region_margin=region_margin)
    batched = _predict(model, augmented, replace(config, tasks_per_batch=3), region_margin=region_margin)
    for key, record in one_by_one.items():
        assert np.array_equal(record["grid"], batched[key]["grid"])
        assert record["q_halt"] == pytest.approx(batched[key]["q_halt"], abs=1e-9)


@pytest.mark.parametrize("params", ("lora", "decoder"))
def test_nothing_learnt_on_one_task_reaches_another(trained, mixed_tasks, params):
    config = TTTConfig(steps=3, lr=0.1, params=params, tasks_per_batch=1)
    both = _predict(trained, AugmentedTasks(mixed_tasks, 2, seed=0), config)
    alone = _predict(trained, AugmentedTasks(mixed_tasks[1:], 2, seed=0), config)
    task_b = mixed_tasks[1].id
    shared = {k for k in both if k[0] == task_b}
    assert shared and shared <= alone.keys()
    for key in shared:
        assert np.array_equal(both[key]["grid"], alone[key]["grid"])
        assert both[key]["q_halt"] == pytest.approx(alone[key]["q_halt"], abs=1e-5)


def test_episodes_come_from_the_demos_only_and_follow_the_objective(augmented):
    demos = [len(augmented.tasks[t].demos) for t in (0, 2)]
    loo = _episodes(augmented, [0, 2], TTTConfig(steps=1))
    assert loo["task_slot"].tolist() == [0] * demos[0] + [1] * demos[1]  # every demo once per step
    assert loo["query_index"].tolist() == [-(d + 1) for d in range(demos[0])] + [-(d + 1) for d in range(demos[1])]
    assert loo["demo_mask"].sum(1).tolist() == [demos[0] - 1] * demos[0] + [demos[1] - 1] * demos[1]
    every = _episodes(augmented, [0, 2], TTTConfig(steps=1, objective="all_demos"))
    assert every["demo_mask"].sum(1).tolist() == [demos[0]] * demos[0] + [demos[1]] * demos[1]
    # Deterministic, and a task's episodes do not depend on the tasks beside it.
    alone = _episodes(augmented, [2], TTTConfig(steps=1))
    assert torch.equal(alone["inputs"], loo["inputs"][demos[0]:])
    assert torch.equal(alone["labels"], loo["labels"][demos[0]:])
    assert not torch.equal(_episodes(augmented, [2], TTTConfig(steps=1), step=1)["inputs"], alone["inputs"])


def test_trm_ttt_adapts_a_fresh_row_and_the_decoder(tiny_eval_config, tmp_path, augmented):
    model = build_model(tiny_eval_config(tmp_path, "model_type=trm", "augmentations_per_task=2"), num_puzzle_ids=5)
    with torch.no_grad():  # trained rows (a zero table has no direction for the norm-kept row to move)
        model.context_source.table.weight.normal_(0, 0.1)
    config = TTTConfig(steps=10, lr=0.03, params="decoder")
    fixed = _episodes(augmented, [0], config, step=99)
    with torch.no_grad():
        start = task_losses(TaskAdapter(model, config, [augmented.tasks[0].id]), fixed)
        adapter = _adapt(model, augmented, [0], config)
        end = task_losses(adapter, fixed)
    assert float(end) < float(start) - 1e-3
    assert sorted(adapter.weights) == sorted(n for n, _ in model.decoder.named_parameters(prefix="decoder"))
    assert not torch.equal(adapter.context, TaskAdapter(model, config, ["x"]).context)  # the row moved


def test_trm_ttt_starts_from_the_mean_trained_row(tiny_eval_config, tmp_path):
    model = build_model(tiny_eval_config(tmp_path, "model_type=trm", "augmentations_per_task=2"), num_puzzle_ids=5)
    with torch.no_grad():
        model.context_source.table.weight.copy_(torch.arange(5 * 32, dtype=torch.float32).view(5, 32))
    for params in KINDS:  # the fresh row adapts with every choice
        adapter = TaskAdapter(model, TTTConfig(params=params), ["a"] if params in ("decoder", "all") else ["a", "b"])
        expected = np.arange(5 * 32, dtype=np.float32).reshape(5, 32)[:4].mean(0)  # blank (last) row excluded
        assert np.allclose(adapter.context[-1].detach().numpy(), expected)
        assert PUZZLE_TABLE_PARAMETER not in adapter.weights  # the table itself never adapts


def test_the_old_tto_keys_name_their_replacement_and_old_runs_still_load(tmp_path, tiny):
    with pytest.raises(ConfigError, match="ttt.params=context"):
        load_config(["tto.steps=5"])
    with pytest.raises(ConfigError, match="context_parameterisation=raw"):
        load_config(["encoder.type=none", "ttt.steps=5", "ttt.params=context"])
    with pytest.raises(ConfigError, match="recurrent"):
        load_config(["encoder.type=recurrent", "ttt.steps=5"])
    saved = tmp_path / "config.yaml"
    saved.write_text(to_yaml(load_config(tiny(tmp_path))) + "tto:\n  steps: 30\n  lr: 0.05\n")
    assert config_from_yaml(saved, ["ttt.steps=2"]).ttt.steps == 2


def test_etrm_eval_with_ttt_from_the_command_line(finished_eval_run, etrm_cli, tmp_path):
    result = etrm_cli("eval", str(finished_eval_run), "eval.num_augmentations=2", "ttt.steps=2", "ttt.params=lora",
                      "ttt.lora_rank=2", f"eval.out_dir={tmp_path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "eval.json").read_text())
    assert summary["num_tasks"] == 3 and summary["test_time_seconds_per_task"] > 0


@pytest.fixture(scope="module")
def contradicting_task():
    """A task the trained model cannot know: every output is its input's shape filled with colour 7,
    whatever the input, in every demo and the test."""
    from etrm.data.tasks import Task

    rng = np.random.default_rng(7)
    grids = [rng.integers(0, 10, size=(3, 3), dtype=np.uint8) for _ in range(4)]
    pairs = [(grid, np.full_like(grid, 7)) for grid in grids]
    return AugmentedTasks([Task("all-sevens", pairs[:3], [pairs[3]])], 1, seed=0)


@pytest.mark.parametrize("params", KINDS)
def test_ttt_changes_the_prediction_towards_the_demos(trained, contradicting_task, params):
    # Without adaptation the model does not predict the test output; a `predict` that ignored the
    # adapted tensors would give the unadapted prediction again.
    (before,) = _predict(trained, contradicting_task, TTTConfig(steps=0)).values()
    config = TTTConfig(steps=40, lr=0.05 if params in ("decoder", "all") else 0.3, params=params, augment=False)
    (after,) = _predict(trained, contradicting_task, config).values()
    assert not before["exact"]
    assert after["token_accuracy"] > before["token_accuracy"] + 0.2, (params, before, after)
    assert not np.array_equal(after["grid"], before["grid"])
