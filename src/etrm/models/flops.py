"""Model FLOPs counted analytically from the configuration (multiply-adds x 2).

Counted: every matrix multiply of the transformer blocks (qkv, output projection, SwiGLU),
attention (QK^T and AV), and the output heads. Not counted: norms, RoPE, softmax, embeddings
(elementwise work, small beside the matmuls). Backward costs twice the forward of the part
that builds a graph: one training step of TRM runs H_cycles x (L_cycles + 1) network calls
forward but backpropagates through the last cycle's L_cycles + 1 calls only; the encoder runs
forward and backward on every step.
"""

from __future__ import annotations

from typing import Any

from etrm.data.encoding import PAD
from etrm.models.layers import round_up_to_multiple


def block_flops_per_token(hidden: int, expansion: float, attended: float) -> float:
    """Forward FLOPs of one post-norm block for one token attending to `attended` tokens."""
    inner = round_up_to_multiple(round(expansion * hidden * 2 / 3), 256)
    matmuls = 3 * hidden * hidden + hidden * hidden + 2 * hidden * inner + inner * hidden
    return 2 * matmuls + 4 * attended * hidden


def decoder_step_flops(config: Any, batch_size: int, train: bool) -> float:
    """One ACT step of the decoder for a batch (forward, plus the backward that runs in training)."""
    model = config.model
    tokens = model.context_len + config.canvas_side**2
    per_call = model.num_layers * block_flops_per_token(model.hidden_size, model.expansion, tokens) * tokens
    forward = model.h_cycles * (model.l_cycles + 1) * per_call + 2 * tokens * model.hidden_size * 12
    backward = 2 * ((model.l_cycles + 1) * per_call + 2 * tokens * model.hidden_size * 12) if train else 0
    return batch_size * (forward + backward)


def kept_demo_tokens(demo_inputs: Any, demo_outputs: Any, demo_mask: Any) -> tuple[float, float]:
    """(real demos, their non-PAD tokens) of a batch, numpy or torch: what the cropping encoder
    runs on, the `num_demos` and `num_demos * cells_per_demo` of `encoder_flops`."""
    kept = (demo_inputs != PAD).sum(-1) + (demo_outputs != PAD).sum(-1)
    return float(demo_mask.sum()), float((kept * demo_mask).sum())


def encoder_flops(config: Any, num_demos: int, cells_per_demo: float, train: bool) -> float:
    """The demo encoder's pair transformer over `num_demos` demos of `cells_per_demo` kept tokens.

    Only the per-demo transformer is counted (the aggregation over a handful of demo vectors is
    negligible beside it); cropping makes `cells_per_demo` the real cells, not the canvas.
    """
    encoder = config.encoder
    per_token = encoder.num_layers * block_flops_per_token(encoder.hidden_size, encoder.expansion, cells_per_demo)
    forward = num_demos * cells_per_demo * per_token
    return forward * (3 if train else 1)


def eval_flops_per_sample(config: Any, num_demos: float, cells_per_demo: float, num_steps: float,
                          tto_steps: int = 0, tto_act_steps: int = 0, encoder_every_step: bool = False) -> float:
    """Test-time FLOPs of one (test input, augmentation).

    ETRM runs the encoder once (every step with `encoder_every_step`, as the reference protocol
    did), then `num_steps` decoder steps. With test-time optimisation (`tto_steps` > 0): each
    of the steps + 1 demo-loss evaluations runs `tto_act_steps` decoder steps on every demo, the
    steps backpropagate through the last one, and the two best contexts are decoded at the end.
    """
    step_forward = decoder_step_flops(config, 1, train=False)
    encoder = encoder_flops(config, round(num_demos), cells_per_demo, train=False) if config.model_type == "etrm" else 0
    if tto_steps == 0:
        return num_steps * step_forward + encoder * (num_steps if encoder_every_step else 1)
    backward = decoder_step_flops(config, 1, train=True) - step_forward
    per_loss = num_demos * tto_act_steps * step_forward
    return encoder + (tto_steps + 1) * per_loss + tto_steps * num_demos * backward + 2 * num_steps * step_forward
