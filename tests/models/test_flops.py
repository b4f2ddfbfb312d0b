"""Analytic FLOP counts agree with the modules they count."""

from etrm.core.config import load_config
from etrm.models.flops import (
    block_flops_per_token,
    decoder_step_flops,
    encoder_flops,
    eval_flops_per_sample,
    ttt_flops_per_task,
)
from etrm.models.layers import PostNormBlock


def test_block_matmul_flops_are_twice_its_parameters():
    for hidden, expansion in ((128, 4.0), (512, 4.0), (64, 2.0)):
        block = PostNormBlock(hidden, 4, expansion, 1e-5)
        parameters = sum(p.numel() for p in block.parameters())
        assert block_flops_per_token(hidden, expansion, attended=0) == 2 * parameters
        assert block_flops_per_token(hidden, expansion, attended=10) - 2 * parameters == 4 * 10 * hidden


def test_training_step_counts_the_backward_of_the_last_cycle_only():
    config = load_config(["preset=overfit-cpu", "model.h_cycles=3", "model.l_cycles=2"])
    one_cycle = load_config(["preset=overfit-cpu", "model.h_cycles=1", "model.l_cycles=2"])
    forward = decoder_step_flops(config, 1, train=False)
    train = decoder_step_flops(config, 1, train=True)
    # Backward = twice the forward of the one cycle (and the heads) that build a graph.
    assert train - forward == 2 * decoder_step_flops(one_cycle, 1, train=False)
    assert forward > decoder_step_flops(one_cycle, 1, train=False)
    assert decoder_step_flops(config, 8, train=True) == 8 * train


def test_encoder_training_costs_three_forwards():
    config = load_config(["preset=overfit-cpu"])
    assert encoder_flops(config, 10, 50.0, train=True) == 3 * encoder_flops(config, 10, 50.0, train=False)


def test_evaluation_flops_encoder_once_versus_every_step_and_ttt_cost():
    config = load_config(["preset=overfit-cpu"])
    step, encoder = decoder_step_flops(config, 1, train=False), encoder_flops(config, 3, 40.0, train=False)
    assert eval_flops_per_sample(config, 3, 40.0, 16) == 16 * step + encoder
    assert eval_flops_per_sample(config, 3, 40.0, 16, encoder_every_step=True) == 16 * (step + encoder)
    trm = load_config(["preset=overfit-cpu", "model_type=trm"])
    assert eval_flops_per_sample(trm, 3, 40.0, 16, encoder_every_step=True) == 16 * step
    # TTT: each step adds, per episode, the encoder over the other demos, act_steps decoder steps
    # (never more than halt_max_steps) and the last one's backward (input gradients only for LoRA;
    # weight gradients too for decoder).
    backward = decoder_step_flops(config, 1, train=True) - step
    loo_encoder = encoder_flops(config, 2, 40.0, train=False)
    def ttt(*overrides):
        return ttt_flops_per_task(load_config(["preset=overfit-cpu", "halt_max_steps=4", "ttt.act_steps=2",
                                               *overrides]), 3, 40.0)
    assert ttt("ttt.steps=0") == 0
    assert ttt("ttt.steps=2") - ttt("ttt.steps=1") == 3 * (loo_encoder + 2 * step + backward / 2)
    assert ttt("ttt.steps=2", "ttt.params=decoder") - ttt("ttt.steps=1", "ttt.params=decoder") == \
        3 * (loo_encoder + 2 * step + backward)
    assert ttt("ttt.steps=2", "halt_max_steps=1") - ttt("ttt.steps=1", "halt_max_steps=1") == \
        3 * (loo_encoder + step + backward / 2)


def test_kept_demo_tokens_counts_real_cells_of_real_demos_in_numpy_and_torch():
    import numpy as np
    import torch

    from etrm.models.flops import kept_demo_tokens

    inputs = np.array([[[2, 3, 0, 0], [5, 0, 0, 0]], [[4, 4, 4, 0], [9, 9, 9, 9]]])
    outputs = np.array([[[2, 0, 0, 0], [0, 0, 0, 0]], [[1, 0, 0, 0], [9, 9, 9, 9]]])
    mask = np.array([[True, False], [True, True]])  # the second demo of sample 0 is padding
    assert kept_demo_tokens(inputs, outputs, mask) == (3.0, 3 + 4 + 8)
    assert kept_demo_tokens(*(torch.from_numpy(a) for a in (inputs, outputs, mask))) == (3.0, 15.0)
