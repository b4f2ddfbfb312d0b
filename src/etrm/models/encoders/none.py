"""No context: the floor of the few-shot question.

`encoder.type=none` gives the decoder an all-zero context, the same for every task, so it sees
the query alone: what it solves that way is what no encoder is needed for. Trained and evaluated
exactly like any encoder (an ETRM run with nothing to read the demos). It has no parameters;
test-time training of its context needs `ttt.context_parameterisation=raw` (a zero vector has
no direction for the scale-keeping default to turn).
"""

from __future__ import annotations

import torch
from torch import Tensor

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.common import DemoEncoder, register_encoder


@register_encoder("none")
class NoContextEncoder(DemoEncoder):
    """A zero context (B, context_len, decoder_hidden), whatever the demos."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int,
                 vocab_size: int):
        super().__init__()
        self.context_len, self.decoder_hidden = context_len, decoder_hidden

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        shape = (demo_mask.shape[0], self.context_len, self.decoder_hidden)
        return ContextOutput(torch.zeros(shape, device=demo_mask.device))
