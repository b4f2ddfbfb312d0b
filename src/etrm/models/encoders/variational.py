"""The variational encoder: the standard encoder followed by a Gaussian bottleneck.

Design: demo vectors (per-pair transformer + pooling) -> learned queries cross-attend over them
-> the mean over the context positions gives one vector per sample -> mu, logvar (logvar clamped
to [-10, 10]) -> z = mu + sigma * eps in training, z = mu in evaluation -> a linear map of z to
context_len x decoder_hidden. Its output's `auxiliary_loss` is the per-sample KL to
N(0, I) (summed over the latent dimensions) times `encoder.kl_weight`, shape (B,); the ACT loss
adds its sum, and the trainer divides the whole loss by the global batch once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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

LOGVAR_RANGE = (-10.0, 10.0)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dimension (exactly 0 at mu=0, logvar=0)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def sample_gaussian(mu: Tensor, logvar: Tensor, training: bool) -> Tensor:
    """The reparameterised sample mu + exp(logvar / 2) * eps in training; mu in evaluation."""
    if not training:
        return mu
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


class GaussianHead(nn.Module):
    """A vector -> (mu, clamped logvar) of a diagonal Gaussian of the same width."""

    def __init__(self, hidden: int, latent: int):
        super().__init__()
        self.mu = Linear(hidden, latent, bias=True)
        self.logvar = Linear(hidden, latent, bias=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.mu(x), self.logvar(x).clamp(*LOGVAR_RANGE)


@register_encoder("variational")
class VariationalEncoder(DemoEncoder):
    """Standard encoder + Gaussian bottleneck; invariant to demo order, padded demos and PAD cells
    (exactly in evaluation; in training up to the noise draw)."""

    def __init__(self, config: EncoderConfig, *, decoder_hidden: int, context_len: int, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.context_len, self.decoder_hidden = context_len, decoder_hidden
        self.kl_weight = config.kl_weight
        self.demos = DemoVectors(config, seq_len, vocab_size)
        self.aggregate = SetCrossAttention(hidden, config.num_heads, config.expansion, context_len)
        self.posterior = GaussianHead(hidden, hidden)
        self.project = Linear(hidden, context_len * decoder_hidden)

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        demo_vectors = self.demos(demo_inputs, demo_outputs, demo_mask)
        summary = self.aggregate(demo_vectors, demo_mask).mean(1)
        mu, logvar = self.posterior(summary)
        z = sample_gaussian(mu, logvar, self.training)
        context = self.project(z).view(-1, self.context_len, self.decoder_hidden)
        return ContextOutput(match_token_scale(context), auxiliary_loss=self.kl_weight * gaussian_kl(mu, logvar))
