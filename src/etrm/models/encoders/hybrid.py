"""The hybrid encoder: LPN-style latents per demo, aggregated by cross-attention.

Design: each demo's latent comes from a CLS token and a pre-norm transformer over the pair's
real cells (`LatentPerDemo`, as in the LPN encoder; `encoder.variational=true` samples it from a
per-demo Gaussian and reports the weighted KL as `auxiliary_loss`); then `context_len` learned
queries cross-attend over the latents of the real demos (`SetCrossAttention`, as in the
standard encoder) and each context vector is projected to the decoder's width.
"""

from __future__ import annotations

from torch import Tensor

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.common import DemoEncoder, SetCrossAttention, match_token_scale, register_encoder
from etrm.models.encoders.lpn import LatentPerDemo
from etrm.models.layers import Linear


@register_encoder("hybrid")
class HybridEncoder(DemoEncoder):
    """LPN latents per demo + cross-attention set aggregation. Exactly invariant to demo order,
    padded demos and PAD cells (variational: in evaluation)."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.kl_weight = config.kl_weight
        self.latents = LatentPerDemo(config, seq_len, vocab_size)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        latents, kl = self.latents(demo_inputs, demo_outputs, demo_mask)
        context = match_token_scale(self.project(self.aggregate(latents, demo_mask)))
        return ContextOutput(context, auxiliary_loss=None if kl is None else self.kl_weight * kl)
