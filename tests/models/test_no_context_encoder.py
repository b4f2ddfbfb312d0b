"""`encoder.type=none`: the no-context floor, a zero context whatever the demos, trained like ETRM."""

import torch

from etrm.core.config import load_config
from etrm.core.distributed import Runtime
from etrm.data.tensors import to_torch
from etrm.train.loop import Trainer


def test_no_context_is_zero_and_the_decoder_still_trains(tiny, tmp_path):
    config = load_config(tiny(tmp_path / "run", "encoder.type=none"))
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    model = trainer.model
    assert not list(model.context_source.parameters())  # nothing to train in the source
    batch = to_torch(trainer.sampler.batch(0, config.global_batch_size))
    context = model.context_source(batch)
    assert context.shape == (config.global_batch_size, config.model.context_len, config.model.hidden_size)
    assert not context.any()
    shuffled = {**batch, "demo_inputs": batch["demo_inputs"].flip(0), "demo_outputs": batch["demo_outputs"].flip(0)}
    model.eval()
    with torch.no_grad():  # the prediction cannot depend on the demos
        torch.testing.assert_close(model.run_fixed_steps(batch)["logits"], model.run_fixed_steps(shuffled)["logits"],
                                   atol=0, rtol=0)
    model.train()
    before = {n: p.detach().clone() for n, p in model.decoder.named_parameters()}
    metrics = trainer.train_step(batch)
    assert torch.isfinite(metrics["loss"])
    assert any(not torch.equal(before[n], p) for n, p in model.decoder.named_parameters())


def test_no_context_costs_no_encoder_flops_at_evaluation(tiny, tmp_path):
    import numpy as np

    from etrm.data.tasks import Task
    from etrm.models.flops import decoder_step_flops, task_test_time_flops

    config = load_config(tiny(tmp_path / "run", "encoder.type=none"))
    steps = config.halt_max_steps
    grid = np.ones((3, 3), dtype=np.uint8)
    task = Task("t", [(grid, grid)] * 3, [(grid, None)])
    assert task_test_time_flops(config, task, 2, steps) == 2 * steps * decoder_step_flops(config, 1, train=False)
