"""The standard encoder: a transformer over each demo pair, pooled to one vector per demo, then
learned queries cross-attend over the demo vectors (the earlier ETRM's baseline encoder).

`encoder.pooling` picks how a demo's token states become its vector: mean | max | attention
(learned scores) | cls (a learned CLS token prepended to the pair; its final state)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from etrm.models.encoders.common import (
    MaskedPooling,
    PairTransformer,
    SetCrossAttention,
    encode_real_demos,
    match_token_scale,
    register_encoder,
)
from etrm.models.layers import Linear


@register_encoder("standard")
class StandardEncoder(nn.Module):
    """Per-demo transformer + masked pooling + cross-attention set aggregation.

    Exactly invariant to the order of the demos and to padded demos or padded grid cells.
    """

    def __init__(self, config: Any, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.pair = PairTransformer(hidden, config.num_heads, config.expansion, config.num_layers, seq_len,
                                    vocab_size, cls_token=config.pooling == "cls")
        self.pool = MaskedPooling(hidden, config.pooling)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode_demo(self, grid_in: Tensor, grid_out: Tensor) -> Tensor:
        """(N, L) input and output tokens of N demos -> (N, hidden) demo vectors."""
        states, cell_mask = self.pair(grid_in, grid_out)
        return self.pool(states, cell_mask)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> Tensor:
        demo_vectors = encode_real_demos(self.encode_demo, demo_inputs, demo_outputs, demo_mask)
        return match_token_scale(self.project(self.aggregate(demo_vectors, demo_mask)))
