"""Model FLOPs counted analytically from the configuration (multiply-adds x 2).

Counted: every matrix multiply of the transformer blocks (qkv, output projection, SwiGLU),
attention (QK^T and AV), the decoder's answer head (on the canvas cells) and the standard encoder's aggregation (its
learned queries' cross-attention over the demo vectors, their MLP, the projection to the
decoder's width), over every position the modules run on: the decoder's whole canvas and its
context (with the demos as the context, their cells: `demo_cells_keys`), and
the encoder's demos cropped to their real cells and padded, within each of the pair
transformer's length groups, to the group's longest demo. Not counted: norms, RoPE, softmax,
embeddings, pooling and the halting head (elementwise work or a few outputs, small beside the
matmuls). Backward costs twice the forward of the part that builds a graph (the gradient
matmuls; attention kernels that recompute their scores in the backward do more work, not
counted): one training step of TRM runs H_cycles x (L_cycles + 1) network calls forward but
backpropagates through the last cycle's L_cycles + 1 calls only; the encoder runs forward and
backward on every step. `tests/test_bench.py` checks these counts against
`torch.utils.flop_counter.FlopCounterMode` over real training steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from etrm.core.config import RunConfig, TTTConfig
from etrm.data.encoding import PAD, VOCAB_SIZE, encode_grid
from etrm.data.tasks import Task
from etrm.models.layers import round_up_to_multiple


def block_flops_per_token(hidden: int, expansion: float, attended: float) -> float:
    """Forward FLOPs of one post-norm block for one token attending to `attended` tokens."""
    inner = round_up_to_multiple(round(expansion * hidden * 2 / 3), 256)
    matmuls = 3 * hidden * hidden + hidden * hidden + 2 * hidden * inner + inner * hidden
    return 2 * matmuls + 4 * attended * hidden


def decoder_step_flops(config: RunConfig, batch_size: int, train: bool, square: int | None = None,
                       context: float | None = None) -> float:
    """One ACT step of the decoder for a batch (forward, plus the backward that runs in training),
    on the whole canvas or, with a size-aware canvas, on the `square` x `square` cells it ran on,
    beside `context` context positions per sample (default `model.context_len`; the demos as the
    context run only their cells: `demo_cells_context`)."""
    model = config.model
    cells = (square or config.canvas_side) ** 2
    tokens = (model.context_len if context is None else context) + cells
    per_call = model.num_layers * block_flops_per_token(model.hidden_size, model.expansion, tokens) * tokens
    head = 2 * cells * model.hidden_size * VOCAB_SIZE  # the answer head reads the canvas cells alone
    forward = model.h_cycles * (model.l_cycles + 1) * per_call + head
    backward = 2 * ((model.l_cycles + 1) * per_call + head) if train else 0
    return batch_size * (forward + backward)


def region_group_squares(config: RunConfig, region_sides: Any) -> list[tuple[int, int]]:
    """How a size-aware batch with these region sides runs: (samples, square side) per group, as
    `etrm.models.decoder.sample_groups` splits it (one square with `dynamic_canvas_keys=square`)."""
    sides = [int(side) for side in region_sides]
    return [(len(members), max(sides[i] for i in members)) for members in _groups(config, sides)]


def _groups(config: RunConfig, sides: list[int], contexts: list[int] | None = None) -> list[list[int]]:
    # The decoder's groups of a batch (`etrm.models.decoder.sample_groups`) at these region sides
    # and context positions run (default model.context_len).
    from etrm.models.decoder import REGION_GROUPS, sample_groups

    max_groups = REGION_GROUPS if config.dynamic_canvas_keys == "region" else 1
    model = config.model
    contexts = [model.context_len] * len(sides) if contexts is None else contexts
    return sample_groups(sides, contexts, max_groups, model.hidden_size, model.expansion)


def decoder_batch_flops(config: RunConfig, batch: dict[str, Any], train: bool) -> float:
    """One ACT step of the decoder over `batch` (numpy or torch) as it runs: the whole canvas, or
    with a size-aware canvas each sample on its group's square (`etrm.models.decoder.sample_groups`);
    with the demos as the context, each sample beside its own demos' cells (`demo_cells_keys`:
    model FLOPs, not the padding to its group's most keys)."""
    size = len(batch["inputs"])
    if uses_demo_cells(config):
        contexts = [int(k) for k in demo_cells_keys(batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])]
    else:
        contexts = [config.model.context_len] * size
    if "region_side" not in batch:
        groups = [(range(size), None)]
    else:
        sides = [int(side) for side in _to_numpy(batch["region_side"])]
        groups = [(members, max(sides[i] for i in members)) for members in _groups(config, sides, contexts)]
    return sum(decoder_step_flops(config, 1, train, square=square, context=contexts[i])
               for members, square in groups for i in members)


def uses_demo_cells(config: RunConfig) -> bool:
    """Whether the decoder's context is the demos' cells (`encoder.type=demo_cells`)."""
    return config.model_type == "etrm" and config.encoder.type == "demo_cells"


def demo_cells_keys(demo_inputs: Any, demo_outputs: Any, demo_mask: Any) -> np.ndarray:
    """(B,) the context positions the decoder runs for each sample of a batch (numpy or torch;
    demos (B, D, L)) with `encoder.type=demo_cells`: its real demos' cells where the input or
    the output is not PAD (its keys), and position 0 where that is none (halting reads it)."""
    demo_inputs, demo_outputs, demo_mask = (_to_numpy(a) for a in (demo_inputs, demo_outputs, demo_mask))
    keys = ((demo_inputs != PAD) | (demo_outputs != PAD)) & demo_mask.astype(bool)[..., None]
    keys = keys.reshape(len(keys), -1)
    return keys.sum(1) + ~keys[:, 0]


def demo_cells_context(demos: list[tuple[np.ndarray, np.ndarray]], canvas_side: int) -> float:
    """The context positions a decoder step runs for `demos` as the context, at the canvas's
    corner as evaluation encodes them (`demo_cells_keys`)."""
    if not demos:
        return 1.0  # position 0 alone
    inputs = np.stack([encode_grid(grid_in, canvas_side) for grid_in, _ in demos])[None]
    outputs = np.stack([encode_grid(grid_out, canvas_side) for _, grid_out in demos])[None]
    return float(demo_cells_keys(inputs, outputs, np.ones((1, len(demos)), dtype=bool))[0])


def kept_demo_tokens(demo_inputs: Any, demo_outputs: Any, demo_mask: Any) -> tuple[float, float]:
    """(real demos, their non-PAD tokens) of a batch, numpy or torch: what the cropping encoder
    runs on, the `num_demos` and `num_demos * cells_per_demo` of `encoder_flops`."""
    kept = (demo_inputs != PAD).sum(-1) + (demo_outputs != PAD).sum(-1)
    return float(demo_mask.sum()), float((kept * demo_mask).sum())


def _to_numpy(array: Any) -> np.ndarray:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def _pair_transformer_flops(encoder: Any, lengths: Any, padded: bool) -> float:
    """Forward FLOPs of the pair transformer over demos of `lengths` kept tokens (+1 for a CLS
    state). `padded`: as `PairTransformer` runs them, sorted by length in `LENGTH_GROUPS` groups
    each padded to its own longest demo; otherwise each demo at its own length (the useful work)."""
    from etrm.models.encoders.common import PairTransformer

    lengths = np.sort(np.asarray(lengths, dtype=np.int64)) + (encoder.pooling == "cls")
    if lengths.size == 0:
        return 0.0
    hidden, expansion = encoder.hidden_size, encoder.expansion
    total = 0.0
    groups = np.array_split(lengths, min(PairTransformer.LENGTH_GROUPS, lengths.size)) if padded else lengths
    for group in groups:
        width = float(np.max(group))
        total += np.size(group) * width * block_flops_per_token(hidden, expansion, width)
    return encoder.num_layers * total


def _aggregation_flops(config: RunConfig, num_samples: int, demo_slots: int) -> float:
    """Forward FLOPs of the standard encoder after the pair transformer, for `num_samples`
    samples of `demo_slots` demo vectors each (padded slots included: they are projected and
    masked): context_len learned queries cross-attend over the demo vectors (q, kv and output
    projections, QK^T and AV), a SwiGLU over the queries, the projection to the decoder's width."""
    encoder, queries = config.encoder, config.model.context_len
    hidden = encoder.hidden_size
    # A block of `queries` tokens attending to `demo_slots` keys, whose k and v come from the demos.
    query_side = block_flops_per_token(hidden, encoder.expansion, demo_slots) - 2 * 2 * hidden * hidden
    per_sample = queries * query_side + demo_slots * 2 * 2 * hidden * hidden
    per_sample += queries * 2 * hidden * config.model.hidden_size
    return num_samples * per_sample


def encoder_flops(config: RunConfig, num_demos: int, cells_per_demo: float, train: bool) -> float:
    """One sample's demo encoder: the pair transformer over `num_demos` demos of `cells_per_demo`
    kept tokens each (cropping makes them the real cells, not the canvas), and the aggregation.

    An estimate for demos of equal size; `encoder_batch_flops` counts a batch exactly as it runs.
    """
    encoder = config.encoder
    cells = cells_per_demo + (encoder.pooling == "cls")
    pair = num_demos * cells * encoder.num_layers * block_flops_per_token(encoder.hidden_size, encoder.expansion,
                                                                          cells)
    forward = pair + _aggregation_flops(config, 1, num_demos)
    return forward * (3 if train else 1)


def encoder_batch_flops(config: RunConfig, demo_inputs: Any, demo_outputs: Any, demo_mask: Any, train: bool,
                        padded: bool = False) -> float:
    """The standard demo encoder (`encoder.type=standard`) over one batch's demos (B, D, L), numpy
    or torch: the real demos only, each cropped to its non-PAD tokens, then the aggregation for
    every sample over its D demo slots. Training adds the backward (x3). Model FLOPs (the
    default) count each demo at its own length; `padded=True` counts what runs, the padding of
    the pair transformer's length groups included (what `FlopCounterMode` sees)."""
    demo_inputs, demo_outputs, demo_mask = (_to_numpy(a) for a in (demo_inputs, demo_outputs, demo_mask))
    real = demo_mask.astype(bool)
    kept = (demo_inputs != PAD).sum(-1) + (demo_outputs != PAD).sum(-1)
    forward = _pair_transformer_flops(config.encoder, kept[real], padded)
    forward += _aggregation_flops(config, real.shape[0], real.shape[1])
    return forward * (3 if train else 1)


def kept_grid_tokens(grid: np.ndarray, canvas_side: int) -> int:
    """The non-PAD tokens of a grid as evaluation encodes it (at the canvas's corner): its cells
    and the EOS border below and to the right of it, where the canvas leaves room for one."""
    return int(np.count_nonzero(encode_grid(grid, canvas_side) != PAD))


def task_test_time_flops(config: RunConfig, task: Task, predictions: float, steps_run: float,
                         ttt: TTTConfig | None = None, encoder_every_step: bool = False) -> float:
    """Test-time FLOPs of one task: its `predictions` (test input, augmentation) predictions and,
    with `ttt` (steps > 0), its adaptation before them (`ttt_flops_per_task`).

    Each prediction runs the encoder once (every step with `encoder_every_step`, as the reference
    protocol did) over the context evaluation gives it: the task's first `max_demos` demos, each
    cropped to its kept tokens (`kept_grid_tokens` of input and output; the augmentations move
    none), each at its own length; then `steps_run` decoder steps on the whole canvas (the mean
    steps run: fewer than halt_max_steps with early stopping).
    """
    side = config.canvas_side
    demos = [kept_grid_tokens(i, side) + kept_grid_tokens(o, side) for i, o in task.demos]
    context = demos[:config.max_demos]
    encoder = 0.0
    if reads_demos(config):
        encoder = _pair_transformer_flops(config.encoder, context, padded=False)
        encoder += _aggregation_flops(config, 1, len(context))
    decoder_context = demo_cells_context(task.demos[:config.max_demos], side) if uses_demo_cells(config) else None
    step_forward = decoder_step_flops(config, 1, train=False, context=decoder_context)
    per_prediction = steps_run * step_forward + encoder * (steps_run if encoder_every_step else 1)
    adaptation = 0.0
    if ttt is not None and demos:
        cells_per_demo = None
        if uses_demo_cells(config):
            cells_per_demo = sum(demo_cells_context([demo], side) for demo in task.demos) / len(task.demos)
        adaptation = ttt_flops_per_task(config, len(demos), sum(demos) / len(demos), ttt, cells_per_demo)
    return predictions * per_prediction + adaptation


def reads_demos(config: RunConfig) -> bool:
    """Whether `config`'s context source runs encoder layers over the demos (counted FLOPs)."""
    # The zero context costs nothing; the demos as the context are embeddings (not counted), their
    # cost is the decoder's longer sequence (`demo_cells_context` in `decoder_step_flops`).
    return config.model_type == "etrm" and config.encoder.type not in ("none", "demo_cells")


def ttt_flops_per_task(config: RunConfig, num_demos: float, cells_per_demo: float,
                       ttt: TTTConfig | None = None, demo_cells_per_demo: float | None = None) -> float:
    """Test-time training's adaptation of one task (`ttt`, default `config.ttt`), before its predictions.

    Each of `ttt.steps` steps runs one episode per demo: the encoder over the episode's
    context demos (num_demos - 1 with leave-one-out, at most max_demos), `objective_act_steps`
    decoder steps forward, and the backward of the last one: twice its forward where weights
    adapt (`decoder`, `all`: weight and input gradients), once where only the context or LoRA
    adapters do (input gradients; the adapters' own rank-r products are not counted). With `all`
    the encoder backpropagates too. With the demos as the context, `demo_cells_per_demo` (mean
    `demo_cells_context` of one demo) sets the decoder's context positions (default
    `model.context_len`).
    """
    ttt = config.ttt if ttt is None else ttt
    if ttt.steps == 0:
        return 0.0
    context_demos = min(config.max_demos, max(1, round(num_demos) - (ttt.objective == "leave_one_out")))
    encoder = encoder_flops(config, context_demos, cells_per_demo, train=False) if reads_demos(config) else 0
    context = None if demo_cells_per_demo is None else context_demos * demo_cells_per_demo
    step_forward = decoder_step_flops(config, 1, train=False, context=context)
    last_step = decoder_step_flops(config, 1, train=True, context=context) - step_forward  # 2 x its graph's forward
    weights_adapt = ttt.params in ("decoder", "all")
    backward = last_step if weights_adapt else last_step / 2
    encoder_backward = 2 * encoder if ttt.params == "all" else 0
    forward = encoder + ttt.objective_act_steps(config.halt_max_steps) * step_forward
    return num_demos * ttt.steps * (forward + backward + encoder_backward)
