"""Pieces every demonstration encoder shares: the registry, demo-pair embedding, pooling,
cross-attention over demo vectors, and the output scale that matches the decoder's tokens."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from etrm.core.config import EncoderConfig
from etrm.data.encoding import PAD
from etrm.models.decoder import ContextLayout, ContextOutput, ContextSource
from etrm.models.encoders.blocks import AttentionBlock, PreNormBlock
from etrm.models.layers import (
    RMS_NORM_EPS,
    Linear,
    PostNormBlock,
    RotaryEmbedding,
    TokenEmbedding,
    rms_norm,
    trunc_normal_init_,
)

ENCODERS: dict[str, Callable[..., nn.Module]] = {}


def register_encoder(name: str) -> Callable:
    """Class decorator adding an encoder to the registry under `name`."""

    def add(cls: type) -> type:
        ENCODERS[name] = cls
        return cls

    return add


def build_encoder(config: EncoderConfig, decoder_hidden: int, context_len: int, seq_len: int,
                  vocab_size: int) -> DemoEncoder:
    """Build the encoder named by `config.type` (an `EncoderConfig`)."""
    if config.type not in ENCODERS:
        from etrm.core.errors import ConfigError

        raise ConfigError(f"encoder.type '{config.type}' is not one of {', '.join(sorted(ENCODERS))}")
    return ENCODERS[config.type](config, decoder_hidden=decoder_hidden, context_len=context_len,
                                 seq_len=seq_len, vocab_size=vocab_size)


def match_token_scale(context: Tensor) -> Tensor:
    """Normalise each context vector to the scale of a token embedding.

    The decoder multiplies its whole input by sqrt(hidden); token embeddings start with
    element std 1/sqrt(hidden). An RMS-normalised vector divided by sqrt(hidden) has that same
    scale, so context and tokens enter the recursion on equal footing (the earlier ETRM fed
    context vectors ~20x larger than its tokens).
    """
    return rms_norm(context, RMS_NORM_EPS) / math.sqrt(context.shape[-1])


class PairTransformer(nn.Module):
    """Embeds one demo's input and output grids as one token sequence and runs post-norm
    transformer layers over the real cells only.

    PAD cells are cropped away before the layers: each demo keeps its non-PAD tokens (padded to
    the longest demo of the batch, those pads masked as keys), and every kept token carries the
    RoPE angle of its canvas position. This equals masking PAD cells in the full token sequence,
    at a fraction of the cost: a 10x10 grid uses about 120 of the 900 cells of a 30x30 canvas.

    Options: `cls_token` prepends a learned CLS vector (state 0 of the output, unrotated: it
    takes RoPE angle 0); `pre_norm` uses pre-norm blocks and a final norm (the LPN style)
    instead of the decoder's post-norm blocks. `fused_pairs` (`encoder.pair_tokens=fused`): one
    token per canvas cell, the sum of its input and its output embedding, so a raw token already
    says "c became d" (else `separate`: 2L tokens, input cells then output cells, each with its own
    embedding table). `aligned_positions` (`encoder.pair_positions=aligned`, separate tokens): an
    output cell takes the angle of the input cell at its canvas place (else p + L); the two
    embedding tables tell input from output.
    """

    LENGTH_GROUPS = 4  # demos sorted by length run through the layers in this many groups

    def __init__(self, hidden: int, num_heads: int, expansion: float, num_layers: int, seq_len: int,
                 vocab_size: int, *, cls_token: bool = False, pre_norm: bool = False, fused_pairs: bool = False,
                 aligned_positions: bool = False):
        super().__init__()
        self.scale = math.sqrt(hidden)
        self.pre_norm = pre_norm
        self.fused_pairs = fused_pairs
        self.aligned_positions = aligned_positions
        self.input_embed = TokenEmbedding(vocab_size, hidden, init_std=1.0 / self.scale)
        self.output_embed = TokenEmbedding(vocab_size, hidden, init_std=1.0 / self.scale)
        self.cls = nn.Parameter(trunc_normal_init_(torch.empty(hidden), std=1.0)) if cls_token else None
        self.rotary = RotaryEmbedding(hidden // num_heads, 2 * seq_len, 10000.0)
        block = PreNormBlock if pre_norm else PostNormBlock
        self.layers = nn.ModuleList(block(hidden, num_heads, expansion, RMS_NORM_EPS) for _ in range(num_layers))

    def _tokens(self, grid_in: Tensor, grid_out: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor], Tensor]:
        # (is_real (N, S), embed(positions (N, T)) -> (N, T, hidden), the RoPE angle index of each of the S places)
        seq_len = grid_in.shape[1]
        if self.fused_pairs:
            def embed(position: Tensor) -> Tensor:
                return self.input_embed(grid_in.gather(1, position)) + self.output_embed(grid_out.gather(1, position))

            return (grid_in != PAD) | (grid_out != PAD), embed, torch.arange(seq_len, device=grid_in.device)
        tokens = torch.cat((grid_in, grid_out), dim=1)

        def embed(position: Tensor) -> Tensor:
            kept_tokens = tokens.gather(1, position)
            is_output = (position >= seq_len).unsqueeze(-1)
            return torch.where(is_output, self.output_embed(kept_tokens), self.input_embed(kept_tokens))

        angles = torch.arange(2 * seq_len, device=grid_in.device)
        return tokens != PAD, embed, angles % seq_len if self.aligned_positions else angles

    def forward(self, grid_in: Tensor, grid_out: Tensor) -> tuple[Tensor, Tensor]:
        """(N, L) input and output tokens -> states of the kept tokens (N, T, hidden) and their
        mask (N, T), T = the largest number of real tokens of one demo (+1 for the CLS state,
        which comes first)."""
        is_real, embed, angles = self._tokens(grid_in, grid_out)
        lengths = is_real.sum(1)
        kept = int(lengths.max())
        # Stable sort puts each demo's real tokens first, in sequence order; `position` is each
        # kept token's index in the full sequence.
        position = torch.argsort((~is_real).to(torch.int8), dim=1, stable=True)[:, :kept]
        mask = torch.arange(kept, device=grid_in.device) < lengths.unsqueeze(1)
        x = self.scale * embed(position)
        angle = angles[position]
        if self.cls is not None:  # the CLS state takes angle 0 (cos 1, sin 0): no rotation
            angle = torch.cat((torch.zeros_like(angle[:, :1]), angle), dim=1)
            x = torch.cat((self.cls.to(x.dtype).expand(x.shape[0], 1, -1), x), dim=1)
            mask = torch.cat((torch.ones_like(mask[:, :1]), mask), dim=1)
        cos, sin = self.rotary.at(angle)
        extra = x.shape[1] - kept  # the CLS state
        # Demos differ a lot in size (a 2x2 pair beside an 8x8 one): run the layers on groups of
        # demos of similar length, each padded only to its own longest, instead of padding every
        # demo to the batch's longest (about 65% of the tokens at canvas 8). Exact: a demo's
        # states depend only on its own tokens.
        order = torch.argsort(lengths)
        outputs = []
        for group in order.tensor_split(min(self.LENGTH_GROUPS, len(order))):
            width = int(lengths[group].max()) + extra
            h, group_mask = x[group, :width], mask[group, :width]
            for layer in self.layers:
                h = layer(h, (cos[group, :width], sin[group, :width]), group_mask)
            outputs.append(nn.functional.pad(h, (0, 0, 0, x.shape[1] - width)))
        x = torch.cat(outputs)[torch.argsort(order)]
        return (rms_norm(x, RMS_NORM_EPS) if self.pre_norm else x), mask


def pair_front_end(config: EncoderConfig) -> dict[str, bool]:
    """The front-end options of `config` as `PairTransformer` keyword arguments."""
    return {"fused_pairs": config.pair_tokens == "fused", "aligned_positions": config.pair_positions == "aligned"}


class MaskedPooling(nn.Module):
    """Pool token states (N, T, hidden) over the real tokens: mean, max, learned attention, or
    `cls`: the first state (that of a `PairTransformer(cls_token=True)`)."""

    MODES = ("mean", "max", "attention", "cls")

    def __init__(self, hidden: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"pooling '{mode}' is not one of {', '.join(self.MODES)}")
        self.mode = mode
        if mode == "attention":
            self.score = Linear(hidden, 1)  # no bias: softmax ignores a shared shift (it would get no gradient)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        if self.mode == "cls":
            return x[:, 0]
        if self.mode == "mean":
            weights = mask.to(x.dtype)
            return (x * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp_min(1)
        if self.mode == "max":
            return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        scores = self.score(x).squeeze(-1).masked_fill(~mask, float("-inf"))
        return (scores.softmax(-1).unsqueeze(-1) * x).sum(1)


def encode_real_demos(encode: Callable[[Tensor, Tensor], Tensor], demo_inputs: Tensor, demo_outputs: Tensor,
                      demo_mask: Tensor) -> Tensor:
    """Run a per-demo encoder only on real demos; padded slots get zero vectors. (B, D, hidden)."""
    real = demo_mask.nonzero(as_tuple=True)
    vectors = encode(demo_inputs[real], demo_outputs[real])
    out = vectors.new_zeros((*demo_mask.shape, vectors.shape[-1]))
    out[real] = vectors
    return out


class DemoVectors(nn.Module):
    """One vector per demo: a `PairTransformer` over the pair's real cells, pooled by
    `config.pooling` (with a CLS token when it is `cls`). (B, D, L) x 2 -> (B, D, hidden); padded
    demos are not encoded and get zero vectors."""

    def __init__(self, config: EncoderConfig, seq_len: int, vocab_size: int):
        super().__init__()
        hidden = config.hidden_size
        self.pair = PairTransformer(hidden, config.num_heads, config.expansion, config.num_layers, seq_len,
                                    vocab_size, cls_token=config.pooling == "cls", **pair_front_end(config))
        self.pool = MaskedPooling(hidden, config.pooling)

    def encode_demo(self, grid_in: Tensor, grid_out: Tensor) -> Tensor:
        states, cell_mask = self.pair(grid_in, grid_out)
        return self.pool(states, cell_mask)

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> Tensor:
        return encode_real_demos(self.encode_demo, demo_inputs, demo_outputs, demo_mask)


class SetCrossAttention(nn.Module):
    """`context_len` learned queries attend over the demo vectors (padded demos masked), then a
    post-norm MLP: the attention block with learned queries, a permutation-invariant summary of
    the demo set."""

    LEGACY_KEYS = {"attention.": "block.attention.", "mlp.": "block.mlp."}  # before the shared block

    def __init__(self, hidden: int, num_heads: int, expansion: float, context_len: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(context_len, hidden) / math.sqrt(hidden))
        self.block = AttentionBlock(hidden, num_heads, expansion)

    def forward(self, demo_vectors: Tensor, demo_mask: Tensor) -> Tensor:
        return self.block(self.queries.expand(demo_vectors.shape[0], -1, -1), demo_vectors, demo_mask)


def rename_legacy_keys(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict (model or EMA) written before a module renamed its parameters, under today's
    names: each module class that renamed some lists them in `LEGACY_KEYS` (old -> new prefix,
    relative to the module). Names already current pass through unchanged."""
    renames = [(f"{prefix}.{old}" if prefix else old, f"{prefix}.{new}" if prefix else new)
               for prefix, module in model.named_modules()
               for old, new in getattr(type(module), "LEGACY_KEYS", {}).items()]
    renamed = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key.removeprefix(old)
                break
        renamed[key] = value
    return renamed


class DemoEncoder(nn.Module):
    """The contract of every demonstration encoder.

    `encode(demo_inputs, demo_outputs (B, D, L), demo_mask (B, D), state, reset)` returns a
    `ContextOutput`: the context (B, context_len, decoder hidden) at the token embeddings' scale
    (`match_token_scale`), padded demos and PAD cells ignored; a variational encoder adds its
    weighted per-sample KL as `auxiliary_loss`; a recurrent one (ETRM-squared) overrides
    `initial_state`, restarts the samples marked in `reset` (B,) from it and returns its next
    state. Stateless encoders ignore `state` and `reset`. Calling the module gives a new sample's
    context alone.
    """

    def initial_state(self, batch_size: int, device: torch.device) -> Tensor | None:
        return None

    def layout(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> ContextLayout | None:
        """The context's key mask and rotary positions (`ContextSource.layout`); None for a fixed
        block of context vectors."""
        return None

    def encode(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor, state: Tensor | None = None,
               reset: Tensor | None = None) -> ContextOutput:
        raise NotImplementedError

    def forward(self, demo_inputs: Tensor, demo_outputs: Tensor, demo_mask: Tensor) -> Tensor:
        batch_size, device = demo_mask.shape[0], demo_mask.device
        fresh = torch.ones(batch_size, dtype=torch.bool, device=device)
        return self.encode(demo_inputs, demo_outputs, demo_mask, self.initial_state(batch_size, device), fresh).context


class EncoderContext(ContextSource):
    """ETRM's context source: encode the batch's demos afresh at every call (every ACT step), so
    every sample's loss reaches the encoder at every step; a recurrent encoder's state rides in
    the ACT carry."""

    def __init__(self, encoder: DemoEncoder):
        super().__init__()
        self.encoder = encoder

    def initial_state(self, batch_size: int, device: torch.device) -> Tensor | None:
        return self.encoder.initial_state(batch_size, device)

    def step(self, batch: dict[str, Tensor], state: Tensor | None, reset: Tensor) -> ContextOutput:
        return self.encoder.encode(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"], state, reset)

    def layout(self, batch: dict[str, Tensor]) -> ContextLayout | None:
        return self.encoder.layout(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
