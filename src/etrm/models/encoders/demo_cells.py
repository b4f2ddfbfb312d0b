"""The demos as the context: no layers and no pooling, nothing compressed.

Each demo cell is one token, the sum of an embedding of its input token and one of its output
token at the same canvas place, so the raw token already says "c became d" before anything has
been learnt. All demos' cells, demo after demo, are the decoder's context (`model.context_len` =
`max_demos * canvas_side**2`); cells that are PAD in both grids and padded demos are masked as
keys, so they change nothing; the layout also says where each cell lies on the canvas and in
its demo's input grid (`model.place_embedding`, `model.place_grid_edges`).
`encoder.cell_positions` sets a cell's rotary position in the decoder: `sequence` (context
position i, the decoder's usual prefix) or `aligned` (the position of the query cell at the same
canvas place, so a demo cell and the query cell it lines up with share a code).

What this decoder does when nothing is compressed: the third bound of the ladder, beside the
oracle (the rule given) and the floor (`none`). Its cost grows with the demos' cells: the
decoder runs only the context's keys (the real cells, packed), so a batch of small demos costs
less than `context_len` positions.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from etrm.core.config import EncoderConfig
from etrm.core.errors import ConfigError
from etrm.data.encoding import PAD
from etrm.models.decoder import ContextLayout, ContextOutput, grid_edges
from etrm.models.encoders.common import DemoEncoder, register_encoder
from etrm.models.layers import TokenEmbedding


@register_encoder("demo_cells")
class DemoCellsEncoder(DemoEncoder):
    """Fused (input, output) cell tokens of every demo as the context (B, context_len, decoder hidden)."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int,
                 vocab_size: int):
        super().__init__()
        if context_len % seq_len:
            raise ConfigError(f"encoder.type=demo_cells needs model.context_len a multiple of the canvas's "
                              f"{seq_len} cells (max_demos * canvas_side**2), got {context_len}")
        self.seq_len, self.context_len = seq_len, context_len
        # The decoder scales its input by sqrt(hidden): token-scale embeddings, as its own.
        init_std = 1.0 / math.sqrt(decoder_hidden)
        self.input_embed = TokenEmbedding(vocab_size, decoder_hidden, init_std=init_std)
        self.output_embed = TokenEmbedding(vocab_size, decoder_hidden, init_std=init_std)
        self.aligned = config.cell_positions == "aligned"
        self.place_drop_prob = config.place_drop_prob

    def _check_demo_count(self, demo_mask: Tensor) -> None:
        if demo_mask.shape[1] * self.seq_len > self.context_len:
            raise ValueError(f"demo_cells: {demo_mask.shape[1]} demos of {self.seq_len} cells do not fit "
                             f"model.context_len={self.context_len}")

    def _pad(self, x: Tensor) -> Tensor:
        # (B, D * L, ...) -> (B, context_len, ...), zeros (False) after the last demo.
        missing = self.context_len - x.shape[1]
        return torch.cat((x, x.new_zeros((x.shape[0], missing, *x.shape[2:]))), dim=1) if missing else x

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        self._check_demo_count(demo_mask)
        cells = self.input_embed(demo_inputs) + self.output_embed(demo_outputs)  # (B, D, L, hidden)
        cells = cells * self._real_cells(demo_inputs, demo_outputs, demo_mask).unsqueeze(-1).to(cells.dtype)
        return ContextOutput(self._pad(cells.flatten(1, 2)))

    @staticmethod
    def _real_cells(demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> Tensor:
        return ((demo_inputs != PAD) | (demo_outputs != PAD)) & demo_mask.unsqueeze(-1)

    def layout(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> ContextLayout:
        self._check_demo_count(demo_mask)
        key_mask = self._pad(self._real_cells(demo_inputs, demo_outputs, demo_mask).flatten(1, 2))
        cells = torch.arange(self.context_len, device=demo_mask.device) % self.seq_len
        edges = self._pad(grid_edges(demo_inputs, math.isqrt(self.seq_len)).flatten(1, 2))
        unplaced = None
        if self.training and self.place_drop_prob > 0:  # drawn once per step, so every group sees the same
            unplaced = torch.rand(len(demo_mask), device=demo_mask.device) < self.place_drop_prob
        return ContextLayout(key_mask=key_mask, positions=self.context_len + cells if self.aligned else None,
                             places=cells, edges=edges, unplaced=unplaced)
