"""Context slots over the demos' cells: no per-demo bottleneck, a context of fixed size.

Each demo runs through the per-demo transformer with fused pair tokens (one token per canvas
cell, its input and output embedding summed; `encoder.num_layers` layers, 0 for the raw
tokens), and `model.context_len` learned slots cross-attend over every real cell state of every
demo at once (padded demos and PAD cells masked), then a post-norm MLP and the projection to the
decoder's width. Where the standard encoder pools each demo to one vector before the set
aggregation, here the slots read the cells themselves, so the context stays `context_len`
vectors at any grid size (ten 30x30 demos are up to 9,000 cells) while nothing is pooled first.
Invariant to the order of the demos and to padding.
"""

from __future__ import annotations

from torch import Tensor

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.common import (
    DemoEncoder,
    PairTransformer,
    SetCrossAttention,
    match_token_scale,
    register_encoder,
)
from etrm.models.layers import Linear


@register_encoder("cell_slots")
class CellSlotsEncoder(DemoEncoder):
    """Fused cell tokens per demo -> context_len slots attending over all real cells -> context."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.cells = PairTransformer(hidden, config.num_heads, config.expansion, config.num_layers, seq_len,
                                     vocab_size, fused_pairs=True)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        batch_size, num_demos = demo_mask.shape
        real = demo_mask.nonzero(as_tuple=True)
        states, cell_mask = self.cells(demo_inputs[real], demo_outputs[real])  # (real demos, T, hidden)
        cells = states.new_zeros((batch_size, num_demos, *states.shape[1:]))
        keys = cell_mask.new_zeros((batch_size, num_demos, cell_mask.shape[1]))
        cells[real], keys[real] = states, cell_mask
        slots = self.aggregate(cells.flatten(1, 2), keys.flatten(1, 2))
        return ContextOutput(match_token_scale(self.project(slots)))
