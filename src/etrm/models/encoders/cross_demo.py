"""The cross-demo encoder: demo vectors compare notes before they are summarised.

Design: one vector per demo (per-pair transformer + pooling, as in the standard encoder); then
`encoder.num_layers` post-norm set-attention layers in which every demo vector attends over the
vectors of the sample's real demos (padded demos masked as keys, no positional encoding between
demos, so the layers are permutation-equivariant); then `context_len` learned queries
cross-attend over the updated vectors (`SetCrossAttention`) and each context vector is projected
to the decoder's width. The result is invariant to the order of the demos.
"""

from __future__ import annotations

from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.blocks import AttentionBlock
from etrm.models.encoders.common import (
    DemoEncoder,
    DemoVectors,
    SetCrossAttention,
    match_token_scale,
    register_encoder,
)
from etrm.models.layers import Linear


@register_encoder("cross_demo")
class CrossDemoEncoder(DemoEncoder):
    """Per-demo vectors, masked self-attention across demos, cross-attention aggregation."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.demos = DemoVectors(config, seq_len, vocab_size)
        self.exchange = nn.ModuleList(
            AttentionBlock(hidden, config.num_heads, config.expansion) for _ in range(config.num_layers)
        )
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        x = self.demos(demo_inputs, demo_outputs, demo_mask)
        for layer in self.exchange:
            x = layer(x, x, demo_mask)
        return ContextOutput(match_token_scale(self.project(self.aggregate(x, demo_mask))))
