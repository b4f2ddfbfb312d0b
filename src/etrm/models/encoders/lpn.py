"""The LPN-style encoder (Latent Program Network): one latent per demo, averaged over the demos.

Design: per demo, a learned CLS token is prepended to the pair's real cells and a PRE-norm
transformer (``x + attn(rms(x))``, final norm) runs over them; the CLS state is mapped to the
demo's latent. The latents are averaged over the real demos and a linear map turns the mean into
context_len x decoder_hidden.

With `encoder.variational=true` each demo gets a Gaussian posterior (mu, logvar clamped to
[-10, 10]); training samples one latent per demo, evaluation takes the mean of the mus. The
output's `auxiliary_loss` is, per sample, the KL to N(0, I) (summed over the latent
dimensions) averaged over the sample's real demos, times `encoder.kl_weight`.

`LatentPerDemo` is shared with the hybrid encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.models.decoder import ContextOutput
from etrm.models.encoders.blocks import masked_mean
from etrm.models.encoders.common import (
    DemoEncoder,
    PairTransformer,
    encode_real_demos,
    match_token_scale,
    pair_front_end,
    register_encoder,
)
from etrm.models.encoders.variational import GaussianHead, gaussian_kl, sample_gaussian
from etrm.models.layers import Linear


class LatentPerDemo(nn.Module):
    """(B, D, L) x 2 demos -> one latent per demo (B, D, hidden) (zeros for padded demos) and, when
    variational, the per-sample KL averaged over the real demos (B,) (else None)."""

    def __init__(self, config: EncoderConfig, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.variational = config.variational
        self.pair = PairTransformer(hidden, config.num_heads, config.expansion, config.num_layers, seq_len,
                                    vocab_size, cls_token=True, pre_norm=True, **pair_front_end(config))
        self.head = GaussianHead(hidden, hidden) if self.variational else Linear(hidden, hidden, bias=True)

    def encode_demo(self, grid_in: Tensor, grid_out: Tensor) -> Tensor:
        """The CLS state mapped to the latent, or to [mu | logvar] when variational."""
        cls_state = self.pair(grid_in, grid_out)[0][:, 0]
        if self.variational:
            return torch.cat(self.head(cls_state), dim=-1)
        return self.head(cls_state)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> tuple[Tensor, Tensor | None]:
        encoded = encode_real_demos(self.encode_demo, demo_inputs, demo_outputs, demo_mask)
        if not self.variational:
            return encoded, None
        mu, logvar = encoded.chunk(2, dim=-1)
        kl = masked_mean(gaussian_kl(mu, logvar), demo_mask)
        return sample_gaussian(mu, logvar, self.training), kl


@register_encoder("lpn")
class LPNEncoder(DemoEncoder):
    """LPN-style latents per demo, masked mean over demos, linear map to the context. Exactly
    invariant to demo order, padded demos and PAD cells (variational: in evaluation)."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        self.context_len, self.decoder_hidden = context_len, decoder_hidden
        self.kl_weight = config.kl_weight
        self.latents = LatentPerDemo(config, seq_len, vocab_size)
        self.project = Linear(config.hidden_size, context_len * decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        latents, kl = self.latents(demo_inputs, demo_outputs, demo_mask)
        z = masked_mean(latents, demo_mask)
        context = match_token_scale(self.project(z).view(-1, self.context_len, self.decoder_hidden))
        return ContextOutput(context, auxiliary_loss=None if kl is None else self.kl_weight * kl)
