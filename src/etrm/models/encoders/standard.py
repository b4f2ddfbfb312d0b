"""The standard encoder: a transformer over each demo pair, pooled to one vector per demo, then
learned queries cross-attend over the demo vectors (the earlier ETRM's baseline encoder).

`encoder.pooling` picks how a demo's token states become its vector: mean | max | attention
(learned scores) | cls (a learned CLS token prepended to the pair; its final state)."""

from __future__ import annotations

from torch import Tensor

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.common import (
    DemoEncoder,
    DemoVectors,
    SetCrossAttention,
    match_token_scale,
    register_encoder,
)
from etrm.models.layers import Linear


@register_encoder("standard")
class StandardEncoder(DemoEncoder):
    """Per-demo transformer + masked pooling + cross-attention set aggregation.

    Exactly invariant to the order of the demos and to padded demos or padded grid cells.
    """

    LEGACY_KEYS = {"pair.": "demos.pair.", "pool.": "demos.pool."}  # before it used DemoVectors

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.demos = DemoVectors(config, seq_len, vocab_size)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        demo_vectors = self.demos(demo_inputs, demo_outputs, demo_mask)
        return ContextOutput(match_token_scale(self.project(self.aggregate(demo_vectors, demo_mask))))
