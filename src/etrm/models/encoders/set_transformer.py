"""The set-transformer encoder: the demos as a set, summarised by induced attention and PMA.

Design (Lee et al., 2019): one vector per demo (per-pair transformer + pooling); then
`encoder.num_layers` ISAB blocks, each ``H = MAB(I, X)`` (`encoder.num_inducing` learned inducing
points attend over the real demos) followed by ``X = MAB(X, H)`` (every demo reads the inducing
summary back), so the cost is linear in the number of demos; then PMA: ``MAB(S, X)`` with
`context_len` learned seeds S attending over the real demos, projected to the decoder's width.
ISAB is permutation-equivariant and PMA invariant, so the context is exactly invariant to the
order of the demos (up to floating-point summation order); padded demos are masked as keys.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.blocks import AttentionBlock
from etrm.models.encoders.common import DemoEncoder, DemoVectors, match_token_scale, register_encoder
from etrm.models.layers import Linear


def learned_set(size: int, hidden: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(size, hidden) / math.sqrt(hidden))


class ISAB(nn.Module):
    """Induced set attention block: X (B, D, hidden) -> (B, D, hidden) through m inducing points."""

    def __init__(self, hidden: int, num_heads: int, expansion: float, num_inducing: int):
        super().__init__()
        self.inducing = learned_set(num_inducing, hidden)
        self.gather = AttentionBlock(hidden, num_heads, expansion)  # inducing points <- demos
        self.scatter = AttentionBlock(hidden, num_heads, expansion)  # demos <- inducing points

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        summary = self.gather(self.inducing.to(x.dtype).expand(x.shape[0], -1, -1), x, mask)
        return self.scatter(x, summary)


@register_encoder("set_transformer")
class SetTransformerEncoder(DemoEncoder):
    """Per-demo vectors, ISAB blocks over the demo set, PMA with context_len seeds."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.demos = DemoVectors(config, seq_len, vocab_size)
        self.blocks = nn.ModuleList(
            ISAB(hidden, config.num_heads, config.expansion, config.num_inducing) for _ in range(config.num_layers)
        )
        self.seeds = learned_set(context_len, hidden)
        self.pool = AttentionBlock(hidden, config.num_heads, config.expansion)  # PMA
        self.project = Linear(hidden, decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        x = self.demos(demo_inputs, demo_outputs, demo_mask)
        for block in self.blocks:
            x = block(x, demo_mask)
        context = self.pool(self.seeds.to(x.dtype).expand(x.shape[0], -1, -1), x, demo_mask)
        return ContextOutput(match_token_scale(self.project(context)))
