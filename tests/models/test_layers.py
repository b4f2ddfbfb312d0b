"""Building blocks: init statistics, norm, attention masking, MLP size."""

import math

import torch

from etrm.models.layers import Attention, RotaryEmbedding, SwiGLU, rms_norm, trunc_normal_init_


def test_trunc_normal_has_requested_std_and_bounds():
    torch.manual_seed(0)
    samples = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(samples.std().item() - 0.5) < 0.005
    assert abs(samples.mean().item()) < 0.005
    # The sampling scale is above std (truncation shrinks the spread), the cut at +-2 scales.
    bound = samples.abs().max().item()
    assert 2 * 0.5 < bound <= 2 * 0.5 / 0.87


def test_trunc_normal_zero_std_gives_zeros():
    assert trunc_normal_init_(torch.ones(3, 3), std=0.0).eq(0).all()


def test_rms_norm_has_unit_rms_and_keeps_dtype():
    x = torch.randn(4, 16, dtype=torch.bfloat16) * 7
    y = rms_norm(x, eps=1e-5)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().square().mean(-1), torch.ones(4), atol=2e-2, rtol=0)


def test_swiglu_inner_size_of_the_arc_decoder():
    mlp = SwiGLU(512, expansion=4.0)
    assert mlp.gate_up.weight.shape == (2 * 1536, 512)
    assert mlp.down.weight.shape == (512, 1536)


def test_key_mask_equals_attention_over_the_unpadded_sequence():
    torch.manual_seed(0)
    attention = Attention(hidden_size=16, num_heads=2)
    rotary = RotaryEmbedding(head_dim=8, max_positions=10, theta=10000.0)
    real = torch.randn(1, 6, 16)
    padded = torch.cat((real, torch.randn(1, 4, 16)), dim=1)  # 4 padding positions with junk
    key_mask = torch.tensor([[True] * 6 + [False] * 4])
    expected = attention(real, rotary(6))
    got = attention(padded, rotary(10), key_mask)[:, :6]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_rotary_tables_follow_rotate_half_convention():
    rotary = RotaryEmbedding(head_dim=4, max_positions=3, theta=100.0)
    cos, sin = rotary(3)
    inv_freq = [1.0, 1.0 / 10.0]  # 1 / 100^(0/4), 1 / 100^(2/4)
    for pos in range(3):
        angles = [pos * f for f in inv_freq] * 2
        torch.testing.assert_close(cos[pos], torch.tensor([math.cos(a) for a in angles]))
        torch.testing.assert_close(sin[pos], torch.tensor([math.sin(a) for a in angles]))
