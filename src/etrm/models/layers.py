"""Building blocks of the recursive decoder (and of the demo encoders built on the same parts).

Conventions follow the TRM reference so that its checkpoints load and compute the same numbers:

- linear layers have no bias by default and a truncated-normal weight init whose *resulting*
  standard deviation is 1/sqrt(fan_in); they cast their weight to the input's dtype;
- RMSNorm has no learned weight and is computed in float32;
- blocks are post-norm: ``x = rms(x + attn(x)); x = rms(x + mlp(x))``;
- attention is non-causal, with RoPE in the rotate-half convention over every position;
- the MLP is SwiGLU with its inner size rounded up to a multiple of 256.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CosSin = tuple[Tensor, Tensor]
RMS_NORM_EPS = 1e-5  # TRM's, for the decoder and every encoder


def trunc_normal_init_(tensor: Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> Tensor:
    """Fill `tensor` in place with a normal truncated to [lower, upper] standard units, rescaled so
    that the *truncated* distribution has standard deviation `std` (JAX's convention).

    A plain N(0, std^2) cut at +-2 sigma has a smaller spread than `std`; the sampling scale is
    therefore std / sqrt(variance of the unit normal truncated to [lower, upper]).
    """
    if std == 0:
        return tensor.detach().zero_()

    def pdf(x: float) -> float:
        return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def cdf(x: float) -> float:
        return 0.5 * (1 + math.erf(x / math.sqrt(2)))

    mass = cdf(upper) - cdf(lower)
    unit_mean = (pdf(lower) - pdf(upper)) / mass
    unit_variance = 1 + (lower * pdf(lower) - upper * pdf(upper)) / mass - unit_mean**2
    scale = std / math.sqrt(unit_variance)
    with torch.no_grad():
        # Inverse-CDF sampling: u ~ U(cdf(lower), cdf(upper)), x = sqrt(2) * erfinv(2u - 1).
        tensor.uniform_(cdf(lower), cdf(upper))
        tensor.mul_(2).sub_(1).erfinv_().mul_(math.sqrt(2) * scale)
        tensor.clamp_(lower * scale, upper * scale)
    return tensor


def rms_norm(x: Tensor, eps: float) -> Tensor:
    """RMSNorm without a learned weight, computed in float32 and returned in `x`'s dtype."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.square().mean(-1, keepdim=True) + eps)
    return x32.to(x.dtype)


def round_up_to_multiple(value: int, multiple: int) -> int:
    return -(value // -multiple) * multiple


class Linear(nn.Module):
    """A linear layer (bias off by default) with truncated-normal weights, std 1/sqrt(in_features)
    unless `init_std` says otherwise; the weight is cast to the input's dtype."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool = False, init_std: float | None = None
    ):
        super().__init__()
        std = 1.0 / math.sqrt(in_features) if init_std is None else init_std
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=std))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class TokenEmbedding(nn.Module):
    """A lookup table with truncated-normal init of standard deviation `init_std`."""

    def __init__(self, num_embeddings: int, dim: int, init_std: float):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, dim), std=init_std))

    def forward(self, ids: Tensor) -> Tensor:
        return F.embedding(ids.long(), self.weight)


class RotaryEmbedding(nn.Module):
    """Cos/sin tables for RoPE over positions 0..max_positions-1 (rotate-half convention: the
    frequency table is repeated twice over the head dimension)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        angles = torch.cat((freqs, freqs), dim=-1)  # (max_positions, head_dim)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, seq_len: int) -> CosSin:
        return self.cos[:seq_len], self.sin[:seq_len]

    def at(self, positions: Tensor) -> CosSin:
        """The tables at the given positions (a size-aware canvas keeps each cell's full-canvas angle)."""
        return self.cos[positions], self.sin[positions]


def rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary(x: Tensor, cos_sin: CosSin) -> Tensor:
    """Rotate `x` (B, S, heads, head_dim) by position; tables are (S, head_dim) or per sample (B, S, head_dim)."""
    cos, sin = (t.unsqueeze(-2).to(x.dtype) for t in cos_sin)
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Non-causal multi-head self-attention with a fused qkv projection (rows [q | k | v]) and RoPE."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = Linear(hidden_size, 3 * hidden_size)
        self.out = Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor, cos_sin: CosSin, key_mask: Tensor | None = None) -> Tensor:
        """x: (B, S, hidden). key_mask: optional bool (B, S), True for keys that may be attended to
        (False marks padding)."""
        batch, seq, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.unbind(dim=2)  # each (B, S, heads, head_dim)
        query, key = apply_rotary(query, cos_sin), apply_rotary(key, cos_sin)
        query, key, value = (t.transpose(1, 2) for t in (query, key, value))  # (B, heads, S, head_dim)
        if key_mask is None:
            attended = F.scaled_dot_product_attention(query, key, value, is_causal=False)
        else:
            attn_mask = key_mask.view(batch, 1, 1, seq)
            attended = F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, is_causal=False)
        return self.out(attended.transpose(1, 2).reshape(batch, seq, hidden))


class SwiGLU(nn.Module):
    """down(silu(gate) * up), inner size round_up(round(expansion * hidden * 2/3), 256)."""

    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inner = round_up_to_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up = Linear(hidden_size, 2 * inner)  # rows [gate | up]
        self.down = Linear(inner, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class PostNormBlock(nn.Module):
    """Transformer block with the norm after each residual: x = rms(x + attn(x)); x = rms(x + mlp(x))."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, rms_norm_eps: float):
        super().__init__()
        self.attention = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)
        self.rms_norm_eps = rms_norm_eps

    def forward(self, x: Tensor, cos_sin: CosSin, key_mask: Tensor | None = None) -> Tensor:
        x = rms_norm(x + self.attention(x, cos_sin, key_mask), self.rms_norm_eps)
        return rms_norm(x + self.mlp(x), self.rms_norm_eps)
