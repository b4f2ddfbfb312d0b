"""Collapse diagnostics on synthetic contexts whose answers are known by construction."""

import torch

from etrm.core.config import load_config
from etrm.data import load_tasks
from etrm.eval.diagnostics import collapse_metrics, probe_contexts, retrieval_at_chance
from etrm.models.build import build_model


def test_separated_tasks_are_retrieved_and_grouped_by_original_task():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 1, 32, generator=generator) * 3
    contexts = centres + 0.05 * torch.randn(6, 4, 32, generator=generator)
    metrics = collapse_metrics(contexts)
    assert metrics["retrieval_accuracy"] == 1.0
    assert metrics["cross_task_variance"] > 100 * metrics["within_task_variance"]
    assert not retrieval_at_chance(metrics)
    assert metrics["effective_rank"] > 3


def test_collapsed_encoder_reads_as_collapsed():
    generator = torch.Generator().manual_seed(1)
    contexts = torch.ones(8, 3, 16) + 1e-4 * torch.randn(8, 3, 16, generator=generator)
    metrics = collapse_metrics(contexts)
    assert metrics["cross_task_variance"] < 1e-6
    assert retrieval_at_chance(metrics)


def test_noise_contexts_retrieve_at_chance_level():
    # Contexts unrelated to the task: retrieval near 1/K, flagged as chance.
    generator = torch.Generator().manual_seed(2)
    metrics = collapse_metrics(torch.randn(40, 4, 64, generator=generator))
    assert metrics["retrieval_accuracy"] < 3 * metrics["retrieval_chance"]
    assert retrieval_at_chance(metrics, margin=3.0)


def test_probe_contexts_of_a_real_encoder_have_one_row_per_task_and_augmentation():
    config = load_config(["preset=cpu-demo", "canvas_side=6", "model.hidden_size=32", "model.num_heads=2",
                          "encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1"])
    model = build_model(config)
    tasks = [t for t in load_tasks("arc1:training") if t.fits(6)][:5]
    contexts = probe_contexts(model.context_source, tasks, 3, 6, config.max_demos, torch.device("cpu"))
    assert contexts.shape[1:] == (3, config.model.context_len * config.model.hidden_size)
    assert 2 <= contexts.shape[0] <= 5
    assert model.context_source.training  # mode restored


def _tiny_model(*overrides):
    config = load_config(["preset=cpu-demo", "canvas_side=6", "model.hidden_size=32", "model.num_heads=2",
                          "encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1", "halt_max_steps=2",
                          *overrides])
    torch.manual_seed(0)
    return build_model(config), config


def test_context_influence_is_zero_without_a_context_and_not_with_one():
    from etrm.eval.diagnostics import context_influence

    tasks = [t for t in load_tasks("arc1:training") if t.fits(6)][:6]
    none, config = _tiny_model("encoder.type=none")
    result = context_influence(none, tasks, 6, config.max_demos, torch.device("cpu"))
    assert result["context_influence"] == 0.0 and result["context_loss_own"] > 0  # every task the same zero context
    for encoder in (["encoder.type=standard"], ["encoder.type=demo_cells", f"model.context_len={10 * 36}"]):
        model, config = _tiny_model(*encoder)
        result = context_influence(model.train(), tasks, 6, config.max_demos, torch.device("cpu"))
        assert abs(result["context_influence"]) > 1e-4, encoder
        assert result["context_influence"] == result["context_loss_swapped"] - result["context_loss_own"]
        assert model.training  # mode restored
