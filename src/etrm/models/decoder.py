"""The recursive decoder of TRM and its adaptive-computation (ACT) wrapper.

Design choices:

- One small network ``f(h, injection) = layers(h + injection)`` (post-norm blocks, non-causal
  attention, RoPE over every position) refines two latents of shape (B, context_len + seq_len,
  hidden): ``z_H``, the answer state (the paper's y), and ``z_L``, the reasoning state (z).
- One ACT step runs ``h_cycles`` cycles; each updates z_L ``l_cycles`` times from (z_H + input)
  and then z_H once from z_L. All cycles but the last run without gradients; the latents leave
  the step detached, so backpropagation never crosses steps (deep supervision).
- The input is ``sqrt(hidden) * concat(context, token embeddings)``. The context (B,
  context_len, hidden) comes from a `ContextSource`, the one part in which TRM (a learned
  embedding per puzzle) and ETRM (an encoder over the demonstration pairs) differ. It is
  recomputed from the current batch at every step, so the context source is trained on every
  sample at every step.
- Logits come from z_H without the context positions; halting logits from z_H at position 0.
- A context with a key mask (`ContextLayout`, the demos as the context): a step runs only the
  context positions that are keys, each sample's packed to the front with their own rotary
  angles (and position 0, where halting reads), as many as the batch's most keys; a non-key is
  read by nothing, so the results are those of the step over every position, and the
  context's cost follows the demos' cells, not `context_len`. The samples run in up to
  `REGION_GROUPS` groups of similar length (keys and canvas cells), each at its own most keys,
  so one sample of many demos does not set the whole batch's width.
- Size-aware canvas (a batch with `region_side`, `etrm.data.canvas`): the step runs on the
  context positions and the top-left square that holds every sample's region, each cell with its
  full-canvas rotary angle, keys outside a sample's own region masked; the latents keep their
  full-canvas layout (the rest of it untouched), and the logits come back on the full canvas,
  zero outside each sample's region (so argmax reads PAD there). With those masked keys a
  sample's results do not depend on the square, so the batch's samples run in up to
  `REGION_GROUPS` groups of similar region, each on its own square (`length_groups` picks them:
  contiguous in length order, the split that minimises the estimated cost), their results put
  back in the batch's order: exact, and what keeps the speed-up when the persistent carry mixes
  samples of many sizes (the square of the whole carry is its largest region). With the square's
  PAD cells as keys (`region_keys_only=False`) a batch runs on one square.
- Halting bookkeeping lives in `ACTModel`, apart from the recursion: a slot whose sample halted
  takes the next batch's sample and restarts from the fixed initial latents; a running slot
  keeps its own sample (inputs, labels, demos). Training halts when q_halt > 0 (with random
  exploration of a minimum step count); evaluation always runs ``halt_max_steps`` steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from etrm.core.config import ModelConfig, RunConfig
from etrm.data.encoding import COLOUR_OFFSET, VOCAB_SIZE
from etrm.models.layers import (
    RMS_NORM_EPS,
    CosSin,
    Linear,
    PostNormBlock,
    RotaryEmbedding,
    TokenEmbedding,
    round_up_to_multiple,
    trunc_normal_init_,
)

# Size-aware canvas or a keyed context: a batch's samples run in at most this many groups of
# similar length, each on its own square and context width (exact: `RecursiveDecoder._forward_in_groups`).
REGION_GROUPS = 4
# A further group must save at least this share of the batch's cost on its one square (it costs
# a pass over the layers of its own: kernel launches, smaller matmuls).
REGION_GROUP_MIN_SAVING = 0.01


def sample_groups(sides: Sequence[int], contexts: Sequence[int], max_groups: int, hidden_size: int,
                  expansion: float) -> list[list[int]]:
    """How a batch runs in groups: the indices of each group's samples, given each sample's
    square side and context positions run; its length is their sum (`length_groups`)."""
    lengths = [context + side * side for context, side in zip(contexts, sides, strict=True)]
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ends = length_groups([lengths[i] for i in order], max_groups, hidden_size, expansion)
    return [order[start:end] for start, end in zip([0, *ends[:-1]], ends, strict=True)]


def length_groups(lengths: Sequence[int], max_groups: int, hidden_size: int, expansion: float) -> list[int]:
    """How a batch whose sorted sequence lengths (the positions a sample runs: its context and its
    square's cells) are `lengths` splits into at most `max_groups` groups, each run at its
    longest: the end index (into `lengths`) of each group.

    Groups are contiguous in sorted order (optimal for a cost that grows with the length) and
    never split equal lengths; the split minimises the estimated step cost, a sample run at P
    positions costing P (linear + 4 P hidden) (the block's matmuls per token and its attention),
    and a further group must save `REGION_GROUP_MIN_SAVING` of the cost at one length. Pure
    Python on the host (the search is over the distinct lengths: at most a batch's samples).
    """
    if len(lengths) == 0:
        return []
    inner = round_up_to_multiple(round(expansion * hidden_size * 2 / 3), 256)
    linear = 2 * (4 * hidden_size * hidden_size + 3 * hidden_size * inner)

    def cost(positions: int) -> float:
        return positions * (linear + 4 * positions * hidden_size)

    values, ends = [], []  # the distinct lengths, and where each one's run ends in `lengths`
    for index, length in enumerate(lengths):
        if values and length == values[-1]:
            ends[-1] = index + 1
        else:
            values.append(length)
            ends.append(index + 1)
    whole = len(lengths) * cost(values[-1])
    penalty = REGION_GROUP_MIN_SAVING * whole
    # best[j]: (cost, group ends) of the first j distinct values' samples in the groups so far.
    best: list[tuple[float, list[int]]] = [(0.0, [])] + [(math.inf, [])] * len(values)
    answer = (whole, [len(lengths)])
    for groups in range(1, min(max_groups, len(values)) + 1):
        new: list[tuple[float, list[int]]] = [(math.inf, [])] * (len(values) + 1)
        for j in range(groups, len(values) + 1):
            for i in range(groups - 1, j):
                if best[i][0] == math.inf:
                    continue
                count = ends[j - 1] - (ends[i - 1] if i else 0)
                total = best[i][0] + count * cost(values[j - 1]) + (penalty if i else 0.0)
                if total < new[j][0]:
                    new[j] = (total, [*best[i][1], ends[j - 1]])
        best = new
        if best[-1][0] < answer[0]:
            answer = best[-1]
    return answer[1]


@dataclass
class DecoderConfig(ModelConfig):
    """The run config's decoder sizes (`ModelConfig`, which holds their defaults) plus what the
    decoder takes from elsewhere: the canvas, the vocabulary and the halting settings."""

    seq_len: int = 900  # token positions (the flattened canvas)
    vocab_size: int = VOCAB_SIZE
    rms_norm_eps: float = RMS_NORM_EPS
    halt_max_steps: int = RunConfig.halt_max_steps
    halt_exploration_prob: float = RunConfig.halt_exploration_prob
    region_keys_only: bool = True  # size-aware canvas: mask the keys beyond a sample's region
    region_groups: int = REGION_GROUPS  # at most this many groups per step (size-aware canvas, keyed context)


def grid_edges(tokens: Tensor, side: int) -> Tensor:
    """(..., side * side) canvas tokens -> (..., side * side, 2) long: for each cell, the rows from
    it to its grid's last row and the columns from it to its grid's last column (the grid: the
    rectangle of colour cells), `side` for a cell outside that rectangle (and for every cell of a
    canvas without colours)."""
    colour = (tokens >= COLOUR_OFFSET).unflatten(-1, (side, side))
    ticks = torch.arange(side, device=tokens.device)

    def distances(present: Tensor) -> Tensor:  # (..., side) -> (..., side): to the last present tick
        last = torch.where(present, ticks, -1).amax(-1, keepdim=True)
        first = torch.where(present, ticks, side).amin(-1, keepdim=True)
        return torch.where((ticks >= first) & (ticks <= last), last - ticks, side)

    rows, cols = distances(colour.any(-1)), distances(colour.any(-2))
    rows, cols = torch.broadcast_tensors(rows[..., :, None], cols[..., None, :])
    inside = (rows < side) & (cols < side)
    edges = torch.stack((torch.where(inside, rows, side), torch.where(inside, cols, side)), dim=-1)
    return edges.flatten(-3, -2)


class Latents(NamedTuple):
    """The recursion state, each (B, context_len + seq_len, hidden)."""

    z_H: Tensor  # answer state (the paper's y)
    z_L: Tensor  # reasoning state (the paper's z)


class ContextOutput(NamedTuple):
    """What a context source gives one ACT step."""

    context: Tensor  # (B, context_len, hidden)
    state: Tensor | None = None  # a recurrent source's next per-sample state (ETRM-squared's z_E), detached
    auxiliary_loss: Tensor | None = None  # (B,) extra per-sample loss, already weighted (kl_weight * KL)


class ContextLayout(NamedTuple):
    """How a context source's positions enter the decoder's attention, for sources whose context
    is not a fixed block of vectors (the demos as the context); None everywhere else."""

    key_mask: Tensor | None = None  # (B, context_len) True for context positions that may be attended to
    positions: Tensor | None = None  # (context_len,) the rotary position of each context position
    places: Tensor | None = None  # (context_len,) the canvas cell each context position lies on (model.place_embedding)
    edges: Tensor | None = None  # (B, context_len, 2) each position's `grid_edges` (model.place_grid_edges)
    unplaced: Tensor | None = None  # (B,) True: the sample's place features are left out (encoder.place_drop_prob)

    def runs(self) -> Tensor:
        """(B, context_len) the context positions a step runs: the keys, and position 0 (where
        halting reads) always; requires a key mask."""
        runs = self.key_mask.clone()
        runs[:, 0] = True
        return runs

    def rows(self, index: Tensor) -> ContextLayout:
        """The layout of the samples `index` (B',) of its batch: the per-sample fields indexed."""
        return self._replace(key_mask=None if self.key_mask is None else self.key_mask[index],
                             edges=None if self.edges is None else self.edges[index],
                             unplaced=None if self.unplaced is None else self.unplaced[index])


class ContextSource(nn.Module):
    """The one part in which TRM and ETRM differ: where the decoder's context comes from.

    Contract: `step(batch, state, reset)` gives one ACT step's `ContextOutput` for a batch (dict
    of tensors); `reset` (B,) marks the samples that are new in their slot. A stateless source
    ignores `state` and `reset`; a recurrent one keeps a per-sample state in the ACT carry,
    starting from `initial_state`. Calling the module gives a new sample's context.
    """

    def initial_state(self, batch_size: int, device: torch.device) -> Tensor | None:
        """A recurrent source's per-sample state; None for stateless sources."""
        return None

    def step(self, batch: dict[str, Tensor], state: Tensor | None, reset: Tensor) -> ContextOutput:
        raise NotImplementedError

    def layout(self, batch: dict[str, Tensor]) -> ContextLayout | None:
        """The context's key mask and rotary positions for `batch`; None: every context position is
        a key and position i takes rotary angle i (a fixed block of vectors, as in TRM)."""
        return None

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        first = next(iter(batch.values()))
        fresh = torch.ones(first.shape[0], dtype=torch.bool, device=first.device)
        return self.step(batch, self.initial_state(first.shape[0], first.device), fresh).context


class RecursiveDecoder(nn.Module):
    """The TRM network: token embedding, the shared layers, and the answer / halting heads."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.embed_scale = math.sqrt(hidden)
        self.embed_tokens = TokenEmbedding(config.vocab_size, hidden, init_std=1.0 / self.embed_scale)
        self.canvas_side = math.isqrt(config.seq_len)
        if config.place_embedding:  # rows 0..side-1, then columns
            self.embed_place = TokenEmbedding(2 * self.canvas_side, hidden, init_std=1.0 / self.embed_scale)
        if config.place_grid_edges:  # rows to the grid's last row 0..side (side: outside), then columns
            self.embed_edges = TokenEmbedding(2 * (self.canvas_side + 1), hidden, init_std=1.0 / self.embed_scale)
        self.rotary = RotaryEmbedding(
            hidden // config.num_heads, config.context_len + config.seq_len, config.rope_theta
        )
        self.layers = nn.ModuleList(
            PostNormBlock(hidden, config.num_heads, config.expansion, config.rms_norm_eps)
            for _ in range(config.num_layers)
        )
        self.lm_head = Linear(hidden, config.vocab_size)
        self.q_head = Linear(hidden, 2, bias=True, init_std=0.0)  # outputs [halt, continue]
        with torch.no_grad():
            self.q_head.bias.fill_(-5.0)  # start by (almost) never halting
        self.register_buffer("H_init", trunc_normal_init_(torch.empty(hidden), std=1.0))
        self.register_buffer("L_init", trunc_normal_init_(torch.empty(hidden), std=1.0))

    def embed_input(self, tokens: Tensor, context: Tensor, cells: Tensor, layout: ContextLayout | None = None,
                    context_index: Tensor | None = None) -> Tensor:
        """sqrt(hidden) * concat(context (B, C, hidden), embed(tokens[:, cells])) -> (B, C + S', hidden)
        for the canvas `tokens` (B, S) and the `cells` (S',) run. With `model.place_embedding`,
        each cell's place embedding is added, and each context position's where the `layout`
        gives it (`context_index` (B, C): which of the layout's positions the context holds, as
        `_context_run` packs them; None: all, in order); with `model.place_grid_edges`, the
        embedding of the distances to its grid's far edges too; neither for the samples the
        layout marks `unplaced`."""
        embedded = self.embed_tokens(tokens[:, cells])
        context = context.to(embedded.dtype)
        unplaced = None if layout is None else layout.unplaced

        def placed(features: Tensor) -> Tensor:  # zero for the samples whose place features are left out
            features = features.to(embedded.dtype)
            return features if unplaced is None else features * (~unplaced)[:, None, None].to(embedded.dtype)

        if self.config.place_embedding:
            embedded = embedded + placed(self.place(cells))
            places = None if layout is None else layout.places
            if places is not None:
                context = context + placed(self.place(places if context_index is None else places[context_index]))
        if self.config.place_grid_edges:
            embedded = embedded + placed(self.grid_edges_embedding(grid_edges(tokens, self.canvas_side)[:, cells]))
            edges = None if layout is None else layout.edges
            if edges is not None:
                if context_index is not None:
                    edges = edges.gather(1, context_index[..., None].expand(-1, -1, 2))
                context = context + placed(self.grid_edges_embedding(edges))
        return self.embed_scale * torch.cat((context, embedded), dim=1)

    def grid_edges_embedding(self, edges: Tensor) -> Tensor:
        """The embedding (..., hidden) of `grid_edges` (..., 2): its rows' plus its columns'."""
        return self.embed_edges(edges[..., 0]) + self.embed_edges(self.canvas_side + 1 + edges[..., 1])

    def place(self, cells: Tensor) -> Tensor:
        """The place embedding (..., hidden) of canvas cells (...): its row's plus its column's."""
        side = self.canvas_side
        return self.embed_place(cells // side) + self.embed_place(side + cells % side)

    def net(self, h: Tensor, injection: Tensor, cos_sin: CosSin, key_mask: Tensor | None = None) -> Tensor:
        """The one network f(h, injection) = layers(h + injection), shared by both latents."""
        h = h + injection
        for layer in self.layers:
            h = layer(h, cos_sin, key_mask)
        return h

    def forward(
        self, latents: Latents, tokens: Tensor, context: Tensor, region_side: Tensor | None = None,
        layout: ContextLayout | None = None,
    ) -> tuple[Latents, Tensor, Tensor, Tensor]:
        """One ACT step of latent recursion; `region_side` (B,): a size-aware canvas (see the module);
        `layout`: the context's key mask and rotary positions (`ContextSource.layout`).

        Returns (detached new latents, logits (B, S, vocab), q_halt (B,), q_continue (B,)).
        """
        if region_side is not None or layout is not None:  # a square per group, only the context's keys
            return self._forward_in_groups(latents, tokens, context, region_side, layout)
        cells = torch.arange(self.config.seq_len, device=tokens.device)
        x = self.embed_input(tokens, context, cells)
        z_H, z_L, logits, q = self.recursion(latents.z_H, latents.z_L, x,
                                             self.rotary(self.config.context_len + self.config.seq_len))
        return Latents(z_H.detach(), z_L.detach()), logits, q[..., 0], q[..., 1]

    def recursion(self, z_H: Tensor, z_L: Tensor, x: Tensor, cos_sin: CosSin, key_mask: Tensor | None = None,
                  num_cells: int | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """TRM's recursion for one ACT step: h_cycles cycles of (l_cycles updates of z_L, one of
        z_H), the last alone with gradients. Returns (z_H, z_L, logits of the last `num_cells`
        positions (default: the canvas), q (B, 2))."""
        def cycle(z_H: Tensor, z_L: Tensor) -> tuple[Tensor, Tensor]:
            for _ in range(self.config.l_cycles):
                z_L = self.net(z_L, z_H + x, cos_sin, key_mask)
            return self.net(z_H, z_L, cos_sin, key_mask), z_L

        with torch.no_grad():
            for _ in range(self.config.h_cycles - 1):
                z_H, z_L = cycle(z_H, z_L)
        z_H, z_L = cycle(z_H, z_L)  # the only cycle with gradients
        num_cells = self.config.seq_len if num_cells is None else num_cells
        return z_H, z_L, self.lm_head(z_H[:, -num_cells:]), self.q_head(z_H[:, 0]).float()

    def _forward_in_groups(self, latents: Latents, tokens: Tensor, context: Tensor, region_side: Tensor | None,
                           layout: ContextLayout | None) -> tuple[Latents, Tensor, Tensor, Tensor]:
        # The samples in up to `region_groups` groups of similar length (the context positions
        # that run and the square's cells: `length_groups`), each group on the square of its
        # largest region (the whole canvas without `region_side`) and its own context width,
        # results put back in the batch's order. Exact where every sample's padding is masked:
        # the keys beyond its region (region_keys_only) and the context positions that are no
        # key; else the batch runs as one group.
        canvas = math.isqrt(self.config.seq_len)
        keyed = layout is not None and layout.key_mask is not None
        regions_masked = region_side is None or self.config.region_keys_only
        if self.config.region_groups <= 1 or not regions_masked or (region_side is None and not keyed):
            return self._forward_on_group(latents, tokens, context, region_side, layout)
        # One host sync per step: the groups set the shapes.
        sides = [canvas] * len(tokens) if region_side is None else region_side.tolist()
        run = layout.runs().sum(1).tolist() if keyed else [self.config.context_len] * len(tokens)
        groups = sample_groups(sides, run, self.config.region_groups, self.config.hidden_size, self.config.expansion)
        if len(groups) == 1:
            return self._forward_on_group(latents, tokens, context, region_side, layout, max(sides))
        z_H, z_L = latents.z_H.clone(), latents.z_L.clone()
        logits = q = None
        for members in groups:
            rows = torch.tensor(members, device=tokens.device)
            group_layout = None if layout is None else layout.rows(rows)
            group = self._forward_on_group(latents, tokens[rows], context[rows],
                                           None if region_side is None else region_side[rows], group_layout,
                                           max(sides[i] for i in members), rows=rows, into=Latents(z_H, z_L))
            _, group_logits, group_halt, group_continue = group
            group_q = torch.stack((group_halt, group_continue), dim=-1)
            if logits is None:
                logits = group_logits.new_zeros(len(tokens), *group_logits.shape[1:])
                q = group_q.new_zeros(len(tokens), 2)
            logits = logits.index_put((rows,), group_logits)
            q = q.index_put((rows,), group_q)
        return Latents(z_H, z_L), logits, q[..., 0], q[..., 1]

    def _forward_on_group(self, latents: Latents, tokens: Tensor, context: Tensor, region_side: Tensor | None,
                          layout: ContextLayout | None, side: int | None = None, rows: Tensor | None = None,
                          into: Latents | None = None) -> tuple[Latents, Tensor, Tensor, Tensor]:
        # One step of the samples `rows` (all when None): on the whole canvas without a
        # `region_side`, else on the top-left square of `side` (default: the largest region).
        if region_side is None:
            cells = torch.arange(self.config.seq_len, device=tokens.device)
            return self._forward_on_cells(latents, tokens, context, layout, cells, None, rows, into)
        if side is None:
            side = int(region_side.max())  # one host sync per step: the square's size sets the shapes
        return self._forward_on_square(latents, tokens, context, region_side, layout, side, rows, into)

    def _forward_on_square(self, latents: Latents, tokens: Tensor, context: Tensor, region_side: Tensor,
                           layout: ContextLayout | None, side: int, rows: Tensor | None = None,
                           into: Latents | None = None) -> tuple[Latents, Tensor, Tensor, Tensor]:
        # One step of the samples `rows` of `latents` (all of them when None) on the top-left
        # square of `side`, the keys beyond each sample's region masked where region_keys_only.
        canvas = math.isqrt(self.config.seq_len)
        ticks = torch.arange(side, device=tokens.device)
        cells = (ticks[:, None] * canvas + ticks[None, :]).reshape(-1)
        inside = ((ticks[:, None] < region_side[:, None, None]) & (ticks[None, :] < region_side[:, None, None]))
        inside = inside.reshape(len(region_side), -1)
        return self._forward_on_cells(latents, tokens, context, layout, cells, inside, rows, into)

    def _forward_on_cells(self, latents: Latents, tokens: Tensor, context: Tensor, layout: ContextLayout | None,
                          cells: Tensor, inside: Tensor | None, rows: Tensor | None = None,
                          into: Latents | None = None) -> tuple[Latents, Tensor, Tensor, Tensor]:
        # One step of the samples `rows` of `latents` (all of them when None) on the canvas
        # `cells` (S',) and the context positions that run (`_context_run`); `tokens`, `context`,
        # `layout` and `inside` (B, S': a cell within the sample's region, None: all) are theirs.
        # Logits come back on the full canvas, zero outside `inside`; the new latents are written
        # into `into` in place (the caller's copies) when given, else into copies of `latents`.
        batch = len(tokens)
        context_index, context_keys, context_positions = self._context_run(layout, batch, tokens.device)
        canvas_positions = self.config.context_len + cells
        cell_keys = inside if self.config.region_keys_only else None
        if context_index is None:  # every context position runs, each at its own place
            positions = torch.cat((torch.arange(self.config.context_len, device=tokens.device), canvas_positions))
        else:
            context = context.gather(1, context_index[..., None].expand(-1, -1, context.shape[-1]))
            positions = torch.cat((context_index, canvas_positions.expand(batch, -1)), dim=1)
        cos_sin = self.rotary.at(torch.cat((context_positions, canvas_positions.expand(*context_positions.shape[:-1],
                                                                                        -1)), dim=-1))
        key_mask = None
        if context_keys is not None or cell_keys is not None:
            if context_keys is None:
                context_keys = torch.ones(batch, self.config.context_len, dtype=torch.bool, device=tokens.device)
            if cell_keys is None:
                cell_keys = torch.ones(batch, len(cells), dtype=torch.bool, device=tokens.device)
            key_mask = torch.cat((context_keys, cell_keys), dim=1)
        x = self.embed_input(tokens, context, cells, layout, context_index)
        rows = torch.arange(batch, device=tokens.device) if rows is None else rows
        index = (rows[:, None], positions if positions.ndim == 2 else positions[None, :])
        z_H, z_L, cropped, q = self.recursion(latents.z_H[index], latents.z_L[index], x, cos_sin, key_mask,
                                                len(cells))
        if inside is not None:
            cropped = cropped.masked_fill(~inside[..., None], 0.0)
        logits = cropped if len(cells) == self.config.seq_len else (
            cropped.new_zeros(batch, self.config.seq_len, cropped.shape[-1]).index_copy(1, cells, cropped))
        into = Latents(latents.z_H.clone(), latents.z_L.clone()) if into is None else into
        for target, value in zip(into, (z_H, z_L), strict=True):
            target.index_put_(index, value.detach().to(target.dtype))
        return into, logits, q[..., 0], q[..., 1]

    def _context_run(self, layout: ContextLayout | None, batch: int, device: torch.device
                     ) -> tuple[Tensor | None, Tensor | None, Tensor]:
        # Which context positions a step runs: with a key mask, each sample's keys packed to the
        # front in order, then as many positions as the batch's most keys (position 0, where
        # halting reads, always runs first): a position that is no key is read by nothing, so
        # leaving it out changes nothing, and the context's cost follows the demos' cells.
        # Returns (index (B, n) of the positions run, or None for all; their key mask (B, n) or
        # None; their rotary positions (B, n) or (context_len,)).
        positions = None if layout is None else layout.positions
        if positions is None:
            positions = torch.arange(self.config.context_len, device=device)
        if layout is None or layout.key_mask is None:
            return None, None, positions
        runs = layout.runs()
        count = int(runs.sum(1).max())  # one host sync per step: the context's length sets the shapes
        index = torch.sort((~runs).to(torch.uint8), dim=1, stable=True).indices[:, :count]
        return index, layout.key_mask.gather(1, index), positions[index]

    def initial_latents(self, batch_size: int, device: torch.device | None = None) -> Latents:
        """Zero latents; every slot of a fresh carry is halted, so they are reset before use."""
        shape = (batch_size, self.config.context_len + self.config.seq_len, self.config.hidden_size)
        return Latents(torch.zeros(shape, device=device), torch.zeros(shape, device=device))

    def reset_latents(self, latents: Latents, reset: Tensor) -> Latents:
        """Put the fixed initial vectors in the slots where `reset` (B,) is True."""
        reset = reset.view(-1, 1, 1)
        return Latents(
            torch.where(reset, self.H_init, latents.z_H), torch.where(reset, self.L_init, latents.z_L)
        )


@dataclass
class ACTCarry:
    """What persists between ACT steps: per slot, its latents, step count, halted flag and sample."""

    latents: Latents
    steps: Tensor  # (B,) int32
    halted: Tensor  # (B,) bool
    current_data: dict[str, Tensor]
    context_state: Tensor | None = None  # a recurrent context source's state (ETRM-squared)
    forced: Tensor | None = None  # (B,) bool: exploration kept this sample running past q_halt > 0

    OPTIONAL: ClassVar[tuple[str, ...]] = ("context_state", "forced")

    def state_dict(self) -> dict[str, Any]:
        """The carry as plain CPU tensors (for a checkpoint)."""
        state = {"z_H": self.latents.z_H.cpu(), "z_L": self.latents.z_L.cpu(), "steps": self.steps.cpu(),
                 "halted": self.halted.cpu(), "data": {k: v.cpu() for k, v in self.current_data.items()}}
        state.update({key: getattr(self, key).cpu() for key in self.OPTIONAL if getattr(self, key) is not None})
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> ACTCarry:
        optional = {key: state[key].to(device) if key in state else None for key in cls.OPTIONAL}
        return cls(Latents(state["z_H"].to(device), state["z_L"].to(device)), state["steps"].to(device),
                   state["halted"].to(device), {k: v.to(device) for k, v in state["data"].items()}, **optional)

    @staticmethod
    def join_state_dicts(states: list[dict[str, Any]]) -> dict[str, Any]:
        """One carry state from the ranks' (slots in rank order); their demo counts (dim 1 of
        the demo tensors) may differ and are padded to the widest."""
        joined = {key: torch.cat([s[key] for s in states]) for key in states[0] if key != "data"}
        widths = {k: max(s["data"][k].shape[1] for s in states) for k, v in states[0]["data"].items() if v.ndim > 1}
        joined["data"] = {k: torch.cat([pad_dim1(s["data"][k], widths[k]) if k in widths else s["data"][k]
                                        for s in states]) for k in states[0]["data"]}
        return joined

    @staticmethod
    def slice_state_dict(state: dict[str, Any], rank: int, world_size: int) -> dict[str, Any]:
        """Rank `rank`'s slots of a joined carry state."""
        local = state["steps"].shape[0] // world_size
        part = slice(rank * local, (rank + 1) * local)
        sliced = {key: value[part] for key, value in state.items() if key != "data"}
        sliced["data"] = {k: v[part] for k, v in state["data"].items()}
        return sliced


def pad_dim1(tensor: Tensor, width: int) -> Tensor:
    """Zero-pad (False for bool) `tensor` along dim 1 to `width`."""
    if tensor.shape[1] == width:
        return tensor
    out = tensor.new_zeros((tensor.shape[0], width, *tensor.shape[2:]))
    out[:, : tensor.shape[1]] = tensor
    return out


def pad_dim1_to_match(a: Tensor, b: Tensor, key: str) -> tuple[Tensor, Tensor]:
    """Zero-pad (False for bool) the narrower of `a`, `b` along dim 1, e.g. (B, D, L) demo tensors
    whose number of demos D varies between batches. Any other shape difference is an error."""
    if a.shape == b.shape:
        return a, b
    if a.ndim < 2 or a.ndim != b.ndim or a.shape[:1] + a.shape[2:] != b.shape[:1] + b.shape[2:]:
        raise ValueError(
            f"batch key {key!r}: shapes {tuple(a.shape)} and {tuple(b.shape)} differ beyond dim 1"
        )
    width = max(a.shape[1], b.shape[1])
    return pad_dim1(a, width), pad_dim1(b, width)


def merge_new_samples(
    current: dict[str, Tensor], batch: dict[str, Tensor], take_new: Tensor
) -> dict[str, Tensor]:
    """Per slot, the new batch's sample where `take_new` (B,) is True, else the carried one."""
    if current.keys() != batch.keys():
        raise ValueError(f"batch keys {sorted(batch)} differ from the carried keys {sorted(current)}")
    merged = {}
    for key, new in batch.items():
        old, new = pad_dim1_to_match(current[key], new, key)
        merged[key] = torch.where(take_new.view(-1, *([1] * (new.ndim - 1))), new, old)
    return merged


class ACTModel(nn.Module):
    """A context source + the recursive decoder + halting bookkeeping. One forward = one ACT step."""

    def __init__(self, context_source: ContextSource, decoder: RecursiveDecoder):
        super().__init__()
        self.context_source = context_source
        self.decoder = decoder

    @property
    def config(self) -> DecoderConfig:
        return self.decoder.config

    def initial_carry(self, batch: dict[str, Tensor]) -> ACTCarry:
        """A carry whose slots are all halted, so the first forward loads `batch` into every slot."""
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            latents=self.decoder.initial_latents(batch_size, device),
            steps=torch.zeros(batch_size, dtype=torch.int32, device=device),
            halted=torch.ones(batch_size, dtype=torch.bool, device=device),
            current_data={key: torch.zeros_like(value) for key, value in batch.items()},
            context_state=self.context_source.initial_state(batch_size, device),
            forced=torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    def forward(self, carry: ACTCarry, batch: dict[str, Tensor]) -> tuple[ACTCarry, dict[str, Tensor]]:
        """Refill halted slots from `batch`, run one recursion step, decide which slots halt.

        Returns the new carry and outputs {logits, q_halt_logits, q_continue_logits}. Losses must
        use `new_carry.current_data["labels"]` (the labels of the samples actually run).
        """
        latents = self.decoder.reset_latents(carry.latents, carry.halted)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = merge_new_samples(carry.current_data, batch, take_new=carry.halted)

        source = self.context_source.step(data, carry.context_state, carry.halted)
        latents, logits, q_halt, q_continue = self.decoder(latents, data["inputs"], source.context,
                                                           data.get("region_side"), self.context_source.layout(data))

        steps = steps + 1
        halted = self.halting(steps, q_halt)
        # Bookkeeping for analysis: a sample that wanted to halt but was kept running by exploration.
        forced = torch.zeros_like(halted) if carry.forced is None else carry.forced & ~carry.halted
        if self.training:
            forced = forced | ((q_halt > 0) & ~halted).detach()
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        if source.auxiliary_loss is not None:
            outputs["auxiliary_loss"] = source.auxiliary_loss
        return ACTCarry(latents, steps, halted, data, source.state, forced), outputs

    @torch.no_grad()
    def run_fixed_steps(self, batch: dict[str, Tensor], num_steps: int | None = None,
                        early_stop_confidence: float = 0.0) -> dict[str, Tensor]:
        """Evaluation: run every sample for `num_steps` (default halt_max_steps) steps from fresh
        latents. The context is computed once per sample, not at every step.

        Returns the last step's logits, q_halt_logits and q_continue_logits, `halt_step` (the
        first step at which q_halt > 0, the step the model would have stopped at, else the steps
        run) and `steps_run`. With `early_stop_confidence` > 0 the batch stops as soon as every
        sample's sigmoid(q_halt) reaches it (one host sync per step; off by default so results
        stay comparable with the reference protocol).
        """
        num_steps = num_steps or self.config.halt_max_steps
        batch_size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        fresh = torch.ones(batch_size, dtype=torch.bool, device=device)
        context, state, _ = self.context_source.step(batch, self.context_source.initial_state(batch_size, device),
                                                     fresh)
        layout = self.context_source.layout(batch)
        if state is None:
            return self.decode(batch["inputs"], context, num_steps, early_stop_confidence, batch.get("region_side"),
                               layout)
        # A recurrent source refines its context at every step.
        latents = self.decoder.reset_latents(self.decoder.initial_latents(batch_size, device), fresh)
        halt_step = torch.full((batch_size,), num_steps, dtype=torch.int32, device=device)
        for step in range(1, num_steps + 1):
            if step > 1:
                context, state, _ = self.context_source.step(batch, state, ~fresh)
            latents, logits, q_halt, q_continue = self.decoder(latents, batch["inputs"], context,
                                                               batch.get("region_side"), layout)
            halt_step = torch.where((q_halt > 0) & (halt_step == num_steps), step, halt_step)
            if _all_confident(q_halt, early_stop_confidence):
                break
        return _step_outputs(logits, q_halt, q_continue, halt_step, step)

    def decode(self, inputs: Tensor, context: Tensor, num_steps: int, early_stop_confidence: float = 0.0,
               region_side: Tensor | None = None, layout: ContextLayout | None = None) -> dict[str, Tensor]:
        """Run `num_steps` ACT steps from fresh latents with a fixed context (B, context_len, hidden)
        (`region_side`: a size-aware canvas; `layout`: the context's, `ContextSource.layout`).

        Only the last step builds a graph (when gradients are enabled), so test-time optimisation
        of the context costs one step's backward. Returns the last step's outputs, `halt_step`
        and `steps_run` (fewer than `num_steps` when early stopping, as in `run_fixed_steps`).
        """
        batch_size, device = inputs.shape[0], inputs.device
        fresh = torch.ones(batch_size, dtype=torch.bool, device=device)
        latents = self.decoder.reset_latents(self.decoder.initial_latents(batch_size, device), fresh)
        halt_step = torch.full((batch_size,), num_steps, dtype=torch.int32, device=device)
        for step in range(1, num_steps + 1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and step == num_steps):
                latents, logits, q_halt, q_continue = self.decoder(latents, inputs, context, region_side, layout)
            halt_step = torch.where((q_halt > 0) & (halt_step == num_steps), step, halt_step)
            if _all_confident(q_halt, early_stop_confidence):
                break
        return _step_outputs(logits, q_halt, q_continue, halt_step, step)

    @torch.no_grad()
    def halting(self, steps: Tensor, q_halt: Tensor) -> Tensor:
        """Which slots halt after having run `steps` steps. Evaluation: only at halt_max_steps.
        Training: also when q_halt > 0, but with probability halt_exploration_prob a slot first
        draws a minimum step count uniformly from [2, halt_max_steps]."""
        max_steps = self.config.halt_max_steps
        halted = steps >= max_steps
        if self.training and max_steps > 1:
            halted = halted | (q_halt > 0)
            explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
            min_halt_steps = explore * torch.randint_like(steps, low=2, high=max_steps + 1)
            halted = halted & (steps >= min_halt_steps)
        return halted


def _all_confident(q_halt: Tensor, confidence: float) -> bool:
    # Early stopping at evaluation: every sample's halting probability has reached `confidence`.
    return confidence > 0 and bool((torch.sigmoid(q_halt.float()) >= confidence).all())


def _step_outputs(logits: Tensor, q_halt: Tensor, q_continue: Tensor, halt_step: Tensor,
                  steps_run: int) -> dict[str, Tensor]:
    halt_step = halt_step.clamp_max(steps_run)
    steps = torch.full_like(halt_step, steps_run)
    return {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue, "halt_step": halt_step,
            "steps_run": steps}
