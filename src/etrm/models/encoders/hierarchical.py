"""The hierarchical encoder: cells -> grids -> demos -> context.

Design, three levels:
1. cells -> one vector per grid: a demo's input grid and output grid are encoded separately by
   one shared transformer over that grid's real cells (`PairTransformer` given the grid on its
   own side and PAD on the other, so input and output grids keep their own token embeddings and
   canvas positions but never attend to each other), pooled by `encoder.pooling`;
2. grids -> one vector per demo: a post-norm MLP over [in, out, out - in] (the change the demo
   shows);
3. demos -> context: `context_len` learned queries cross-attend over the real demos' vectors
   (`SetCrossAttention`), each projected to the decoder's width.
Exactly invariant to the order of the demos, padded demos and PAD cells.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.data.encoding import PAD
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.common import (
    DemoEncoder,
    MaskedPooling,
    PairTransformer,
    SetCrossAttention,
    encode_real_demos,
    match_token_scale,
    register_encoder,
)
from etrm.models.layers import RMS_NORM_EPS, Linear, SwiGLU, rms_norm


class GridPairCombiner(nn.Module):
    """(in, out) grid vectors (N, hidden) each -> a demo vector: rms(W [in, out, out - in]), then a
    post-norm SwiGLU residual."""

    def __init__(self, hidden: int, expansion: float):
        super().__init__()
        self.merge = Linear(3 * hidden, hidden)
        self.mlp = SwiGLU(hidden, expansion)

    def forward(self, grid_in: Tensor, grid_out: Tensor) -> Tensor:
        x = rms_norm(self.merge(torch.cat((grid_in, grid_out, grid_out - grid_in), dim=-1)), RMS_NORM_EPS)
        return rms_norm(x + self.mlp(x), RMS_NORM_EPS)


@register_encoder("hierarchical")
class HierarchicalEncoder(DemoEncoder):
    """Grid vectors from a shared grid transformer, paired into demo vectors, cross-attended."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.grid = PairTransformer(hidden, config.num_heads, config.expansion, config.num_layers, seq_len,
                                    vocab_size, cls_token=config.pooling == "cls")
        self.pool = MaskedPooling(hidden, config.pooling)
        self.combine = GridPairCombiner(hidden, config.expansion)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.project = Linear(hidden, decoder_hidden)

    def encode_demo(self, grid_in: Tensor, grid_out: Tensor) -> Tensor:
        """(N, L) input and output grids -> (N, hidden) demo vectors; both grids in one batch."""
        blank = torch.full_like(grid_in, PAD)  # cropped away
        states, mask = self.grid(torch.cat((grid_in, blank)), torch.cat((blank, grid_out)))
        vector_in, vector_out = self.pool(states, mask).chunk(2)
        return self.combine(vector_in, vector_out)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        demo_vectors = encode_real_demos(self.encode_demo, demo_inputs, demo_outputs, demo_mask)
        return ContextOutput(match_token_scale(self.project(self.aggregate(demo_vectors, demo_mask))))
