"""Attention blocks the encoders build from, beside the decoder's post-norm block.

- `MultiheadAttention`: queries from one set, keys and values from another, padded keys masked,
  no positional encoding (demo vectors, inducing points and context slots form sets).
- `AttentionBlock`: the post-norm block over it, ``x = rms(x + attn(x, y)); x = rms(x + mlp(x))``
  (the Set Transformer's MAB; with y = x it is masked self-attention over a set).
- `PreNormBlock`: the LPN-style token block, ``x = x + attn(rms(x)); x = x + mlp(rms(x))``, with RoPE.
- `masked_mean`: the mean over the real entries of dimension 1.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from etrm.models.layers import RMS_NORM_EPS, Attention, CosSin, Linear, SwiGLU, rms_norm


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, N, ...) over the entries where mask (B, N) is True; zeros when there are none."""
    weights = mask.to(x.dtype).view(*mask.shape, *([1] * (x.ndim - 2)))
    return (x * weights).sum(1) / weights.sum(1).clamp_min(1)


class MultiheadAttention(nn.Module):
    """Multi-head attention of queries x (B, Nx, hidden) over keys/values y (B, Ny, hidden)."""

    def __init__(self, hidden: int, num_heads: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q_proj = Linear(hidden, hidden)
        self.kv_proj = Linear(hidden, 2 * hidden)
        self.o_proj = Linear(hidden, hidden)

    def forward(self, x: Tensor, y: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """key_mask (B, Ny): True for real keys. A row without any real key attends to all of y
        (zeros, for padded demos) instead of producing NaN."""
        batch, num_queries, hidden = x.shape
        num_keys, head_dim = y.shape[1], hidden // self.num_heads
        q = self.q_proj(x).view(batch, num_queries, self.num_heads, head_dim).transpose(1, 2)
        k, v = self.kv_proj(y).view(batch, num_keys, 2, self.num_heads, head_dim).unbind(2)
        mask = None
        if key_mask is not None:
            mask = (key_mask | ~key_mask.any(1, keepdim=True)).view(batch, 1, 1, num_keys)
        attended = F.scaled_dot_product_attention(q, k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, num_queries, hidden))


class AttentionBlock(nn.Module):
    """Post-norm attention of x over y, then a SwiGLU MLP (the Set Transformer's MAB)."""

    def __init__(self, hidden: int, num_heads: int, expansion: float):
        super().__init__()
        self.attention = MultiheadAttention(hidden, num_heads)
        self.mlp = SwiGLU(hidden, expansion)

    def forward(self, x: Tensor, y: Tensor, key_mask: Tensor | None = None) -> Tensor:
        x = rms_norm(x + self.attention(x, y, key_mask), RMS_NORM_EPS)
        return rms_norm(x + self.mlp(x), RMS_NORM_EPS)


class PreNormBlock(nn.Module):
    """Transformer block with the norm before each branch: x = x + attn(rms(x)); x = x + mlp(rms(x)).
    A stack of them needs a final norm (`PairTransformer(pre_norm=True)` applies it)."""

    def __init__(self, hidden: int, num_heads: int, expansion: float, rms_norm_eps: float = RMS_NORM_EPS):
        super().__init__()
        self.attention = Attention(hidden, num_heads)
        self.mlp = SwiGLU(hidden, expansion)
        self.rms_norm_eps = rms_norm_eps

    def forward(self, x: Tensor, cos_sin: CosSin, key_mask: Tensor | None = None) -> Tensor:
        x = x + self.attention(rms_norm(x, self.rms_norm_eps), cos_sin, key_mask)
        return x + self.mlp(rms_norm(x, self.rms_norm_eps))
