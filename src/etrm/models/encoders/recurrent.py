"""The recurrent encoder (ETRM-squared): the encoder keeps its own latent z_E across ACT steps.

Design:
- z_E (B, context_len, hidden) is one more per-sample latent in the ACT carry, beside the
  decoder's z_H and z_L. It starts from a fixed random init (a trunc-normal buffer of shape
  (context_len, hidden), std 1, not trained, like the decoder's H_init; the slots differ, so they
  can specialise) and is reset to it when the sample is new.
- Every ACT step re-encodes the demos (per-pair transformer + pooling, with gradients) and
  refines z_E from them: `encoder.h_cycles` cycles of `encoder.l_cycles` updates, each update a
  post-norm block in which the slots attend over each other, then over the real demos, then an
  MLP. All cycles but the last run without gradients (as in TRM); the state leaves the step
  detached, the context ``match_token_scale(project(z_E))`` does not: every parameter is trained
  at every step (the earlier version detached its output and never trained: facts 6.2).
- The state rides in the ACT carry as `ContextOutput.state` (the `DemoEncoder` contract,
  through `EncoderContext`); a plain call runs one step from the init. No positions are used over the demos, so the
  context is invariant to their order; padded demos and PAD cells are masked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.blocks import MultiheadAttention
from etrm.models.encoders.common import DemoEncoder, DemoVectors, match_token_scale, register_encoder
from etrm.models.layers import RMS_NORM_EPS, Linear, SwiGLU, rms_norm, trunc_normal_init_


class SlotUpdate(nn.Module):
    """One update of the slots z (B, C, hidden) from the demo vectors (B, D, hidden), post-norm:
    z = rms(z + self_attn(z)); z = rms(z + cross_attn(z, demos)); z = rms(z + mlp(z))."""

    def __init__(self, hidden: int, num_heads: int, expansion: float):
        super().__init__()
        self.self_attention = MultiheadAttention(hidden, num_heads)
        self.cross_attention = MultiheadAttention(hidden, num_heads)
        self.mlp = SwiGLU(hidden, expansion)

    def forward(self, z: Tensor, demos: Tensor, demo_mask: Tensor) -> Tensor:
        z = rms_norm(z + self.self_attention(z, z), RMS_NORM_EPS)
        z = rms_norm(z + self.cross_attention(z, demos, demo_mask), RMS_NORM_EPS)
        return rms_norm(z + self.mlp(z), RMS_NORM_EPS)


@register_encoder("recurrent")
class RecurrentEncoder(DemoEncoder):
    """ETRM-squared: demo vectors refine a carried latent z_E; context = projected z_E."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.h_cycles, self.l_cycles = config.h_cycles, config.l_cycles
        if self.h_cycles < 1 or self.l_cycles < 1:
            raise ValueError(f"encoder h_cycles and l_cycles must be at least 1, got {self.h_cycles}, {self.l_cycles}")
        self.demos = DemoVectors(config, seq_len, vocab_size)
        self.update = SlotUpdate(hidden, config.num_heads, config.expansion)
        self.project = Linear(hidden, decoder_hidden)
        self.register_buffer("E_init", trunc_normal_init_(torch.empty(context_len, hidden), std=1.0))

    def initial_state(self, batch_size: int, device: torch.device) -> Tensor:
        """The fixed init z_E, (B, context_len, hidden)."""
        return self.E_init.to(device).expand(batch_size, -1, -1).clone()

    def refine(self, z: Tensor, demos: Tensor, demo_mask: Tensor) -> Tensor:
        """h_cycles x l_cycles updates; only the last cycle builds a graph."""
        with torch.no_grad():
            for _ in range(self.h_cycles - 1):
                for _ in range(self.l_cycles):
                    z = self.update(z, demos, demo_mask)
        for _ in range(self.l_cycles):
            z = self.update(z, demos, demo_mask)
        return z

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        """One ACT step: z_E <- init where `reset` (B,) (everywhere without a state or a reset), refine from
        the demos. The context (B, context_len, decoder_hidden) keeps its gradients; the new z_E
        is detached."""
        init = self.E_init.to(demo_mask.device).expand(demo_mask.shape[0], -1, -1)
        z = init if state is None or reset is None else torch.where(reset.view(-1, 1, 1), init,
                                                                     state.to(init.dtype))
        demos = self.demos(demo_inputs, demo_outputs, demo_mask)
        z = self.refine(z, demos, demo_mask)
        return ContextOutput(match_token_scale(self.project(z)), state=z.detach())
