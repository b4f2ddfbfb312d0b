"""Analytic FLOP counts agree with the modules they count."""

import numpy as np
import pytest

from etrm.core.config import TTTConfig, load_config
from etrm.data.tasks import Task
from etrm.models.flops import (
    block_flops_per_token,
    decoder_step_flops,
    encoder_flops,
    kept_grid_tokens,
    task_test_time_flops,
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


# Hidden 64 (decoder and encoder), expansion 4: the SwiGLU's inner width is 171 rounded up to 256,
# so one block costs 2 x (3 x 64^2 + 64^2 + 2 x 64 x 256 + 256 x 64) = 131072 FLOPs per token plus
# 4 x 64 = 256 per attended token. One decoder layer, H1 x L1, context 2; one encoder layer, mean
# pooling; canvas 6; at most 2 demos as the context.
HAND_SIZED = ["preset=overfit-cpu", "canvas_side=6", "max_demos=2", "model.num_layers=1", "model.context_len=2",
              "encoder.num_layers=1"]


def _grid(height: int, width: int) -> np.ndarray:
    return np.zeros((height, width), dtype=np.uint8)


def _hand_task() -> Task:
    # Kept tokens on the 6x6 canvas (cells + EOS row below + EOS column right, where there is room):
    # demo 1: 2x2 -> 2x2: (4 + 2 + 2) x 2 = 16; demo 2: 3x1 -> 6x2: (3 + 1 + 3) + (12 + 0 + 6) = 25;
    # demo 3: 1x1 -> 1x1: 3 + 3 = 6, beyond max_demos (no context of a prediction).
    return Task("hand", [(_grid(2, 2), _grid(2, 2)), (_grid(3, 1), _grid(6, 2)), (_grid(1, 1), _grid(1, 1))],
                [(_grid(2, 2), None)])


def test_kept_grid_tokens_are_the_cells_and_the_eos_border_the_canvas_leaves_room_for():
    assert kept_grid_tokens(_grid(2, 2), 6) == 8
    assert kept_grid_tokens(_grid(6, 2), 6) == 18  # no room below
    assert kept_grid_tokens(_grid(6, 6), 6) == 36  # no border at all


def test_task_test_time_flops_counted_by_hand():
    config = load_config(HAND_SIZED)
    # Encoder, once per prediction: pair transformer 16 x (131072 + 256 x 16) + 25 x (131072 + 256 x 25)
    # = 2,162,688 + 3,436,800; aggregation (2 queries over 2 demo vectors, projected to 64):
    # 2 x (131072 + 256 x 2 - 4 x 64^2) + 2 x 4 x 64^2 + 2 x 2 x 64 x 64 = 279,552. Total 5,879,040.
    encoder = 5_879_040
    # Decoder step on 2 + 36 tokens: (131072 + 256 x 38) x 38 per call, 2 calls (H1 x (L1 + 1)), and
    # the answer head on the 36 canvas cells, 2 x 36 x 64 x 12: 10,700,800 + 55,296.
    step = 10_756_096
    task = _hand_task()
    assert task_test_time_flops(config, task, predictions=3, steps_run=2) == 3 * (2 * step + encoder) == 82_173_696
    assert task_test_time_flops(config, task, 3, 2, encoder_every_step=True) == 3 * 2 * (step + encoder)
    assert task_test_time_flops(config, task, 3, 1.5) == 3 * (1.5 * step + encoder)  # mean steps run (early stop)
    for no_encoder in ("model_type=trm", "encoder.type=none"):
        assert task_test_time_flops(load_config([*HAND_SIZED, no_encoder]), task, 3, 2) == 3 * 2 * step
    # Test-time training adapts on every demo (3, not the context's 2) at their mean kept tokens, 47 / 3.
    ttt = TTTConfig(steps=2, params="decoder")
    assert task_test_time_flops(config, task, 3, 2, ttt=TTTConfig(steps=0)) == 82_173_696
    assert task_test_time_flops(config, task, 3, 2, ttt=ttt) - 82_173_696 == \
        pytest.approx(ttt_flops_per_task(config, 3, 47 / 3, ttt))


def test_demos_as_the_context_count_their_cells_not_the_context_length():
    # encoder.type=demo_cells runs no encoder layer; the decoder runs the context demos' cells
    # (input or output not PAD) beside the 36 canvas cells. Demo 1: 2x2 -> 2x2, 8 positions each,
    # the same ones; demo 2: 3x1 -> 6x2, the input's 7 within the output's 18: 8 + 18 = 26 (the
    # context length is max_demos x 36 = 72). A step on 26 + 36 = 62 tokens: (131072 + 256 x 62)
    # x 62 per call, 2 calls, and the answer head 2 x 36 x 64 x 12: 18,276,352.
    from etrm.models.flops import demo_cells_context

    config = load_config([*HAND_SIZED, "encoder.type=demo_cells", "model.context_len=null"])
    task = _hand_task()
    assert config.model.context_len == 72
    assert demo_cells_context(task.demos[:2], 6) == 26
    assert demo_cells_context(task.demos[2:], 6) == 3
    step = 18_276_352
    assert decoder_step_flops(config, 1, train=False, context=26) == step
    assert task_test_time_flops(config, task, predictions=3, steps_run=2) == 3 * 2 * step
    # TTT's episodes: one demo left out of 3, so 2 demos of (8 + 18 + 3) / 3 cells as the context.
    ttt = TTTConfig(steps=1, params="decoder")
    context = 2 * 29 / 3
    forward = decoder_step_flops(config, 1, train=False, context=context)
    backward = decoder_step_flops(config, 1, train=True, context=context) - forward
    adaptation = task_test_time_flops(config, task, 3, 2, ttt=ttt) - 3 * 2 * step
    assert adaptation == pytest.approx(3 * (ttt.objective_act_steps(config.halt_max_steps) * forward + backward))


def test_ttt_flops_encoder_and_backward_per_episode():
    config = load_config(["preset=overfit-cpu"])
    step = decoder_step_flops(config, 1, train=False)
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
    # An episode's context is the other demos, at most max_demos of them.
    capped = load_config(["preset=overfit-cpu", "halt_max_steps=4", "ttt.act_steps=2", "ttt.steps=1", "max_demos=2"])
    assert ttt_flops_per_task(capped, 5, 40.0) == 5 * (encoder_flops(capped, 2, 40.0, train=False) + 2 * step +
                                                       backward / 2)


def test_kept_demo_tokens_counts_real_cells_of_real_demos_in_numpy_and_torch():
    import numpy as np
    import torch

    from etrm.models.flops import kept_demo_tokens

    inputs = np.array([[[2, 3, 0, 0], [5, 0, 0, 0]], [[4, 4, 4, 0], [9, 9, 9, 9]]])
    outputs = np.array([[[2, 0, 0, 0], [0, 0, 0, 0]], [[1, 0, 0, 0], [9, 9, 9, 9]]])
    mask = np.array([[True, False], [True, True]])  # the second demo of sample 0 is padding
    assert kept_demo_tokens(inputs, outputs, mask) == (3.0, 3 + 4 + 8)
    assert kept_demo_tokens(*(torch.from_numpy(a) for a in (inputs, outputs, mask))) == (3.0, 15.0)
