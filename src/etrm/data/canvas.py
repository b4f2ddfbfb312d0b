"""Size-aware canvas: how much of the canvas a sample needs (`dynamic_canvas=true`).

The reference runs every sample on the full canvas (30x30 for ARC) although most ARC grids are
far smaller. With a size-aware canvas each sample has a *region*, the top-left square of the
canvas its grids (and its answer) live in, and the decoder runs a batch on the smallest square
that holds every region of the batch. Every cell keeps the rotary angle of its place on the full
canvas and keys outside a sample's own region are masked, so a sample computes the same whatever
its batch-mates (and, when its region is the whole canvas, what the fixed canvas computes).

The test output's size is unknown when the region is chosen, so the rule reads only what a
prediction may read, the context demos and the query input, identically in training and
evaluation (never the query's output):

    side = max(every context grid's height and width, the query input's,
               ceil(the largest demo output/input ratio per axis x the query input's size))
           + 1 (the EOS row and column) + margin,

capped at the canvas. A task whose demo outputs grow beyond their inputs by ratios that differ
between demos (an output size set by something else, such as a colour count) gets the whole
canvas. With margin 1 the rule cuts off no test output of ARC-AGI-1, training or evaluation
(`benchmarks/size_aware_canvas.py regions` counts it on every source).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from etrm.data.tasks import GridPair

DEFAULT_REGION_MARGIN = 1


def region_side(context: Sequence[GridPair], query_input: np.ndarray, canvas_side: int,
                margin: int = DEFAULT_REGION_MARGIN) -> int:
    """The side of the top-left square a sample's grids and answer are given (see the module)."""
    shapes = [(grid_in.shape, grid_out.shape) for grid_in, grid_out in context]
    grows = any(out[k] > inp[k] for inp, out in shapes for k in (0, 1))
    if grows and len({(out[0] / inp[0], out[1] / inp[1]) for inp, out in shapes}) > 1:
        return canvas_side
    bound = max([*query_input.shape, *(max(*inp, *out) for inp, out in shapes)])
    for axis in (0, 1):
        if shapes:
            ratio = max(out[axis] / inp[axis] for inp, out in shapes)
            bound = max(bound, math.ceil(ratio * query_input.shape[axis] - 1e-9))
    return min(canvas_side, bound + 1 + margin)


def output_cut_off(output: np.ndarray, side: int, canvas_side: int) -> bool:
    """Whether a region of `side` loses part of `output` or of the EOS border the full canvas
    would give it."""
    return min(canvas_side, max(output.shape) + 1) > side
