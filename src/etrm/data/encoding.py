"""Grids as token sequences, exactly as the TRM reference encodes them.

Tokens: PAD=0, EOS=1, colour c -> c+2 (vocabulary 12). A grid sits in a square canvas
(30x30 by default, flattened row-major) at some offset; EOS fills the row just below the grid
and the column just right of it, within the grid's extent, so the model predicts the output's
shape by predicting where EOS goes. Labels ignore PAD (-100) and keep EOS as a target
(`etrm.data.tensors.to_torch` makes them).
"""

from __future__ import annotations

import numpy as np

PAD = 0
EOS = 1
COLOUR_OFFSET = 2
VOCAB_SIZE = 12
IGNORE_LABEL = -100
DEFAULT_CANVAS_SIDE = 30


def place_grid(canvas: np.ndarray, tokens: np.ndarray, row: int = 0, col: int = 0) -> None:
    """Write an already token-valued grid into a 2-D canvas at (row, col), with its EOS border."""
    height, width = tokens.shape
    side_rows, side_cols = canvas.shape
    canvas[row:row + height, col:col + width] = tokens
    if row + height < side_rows:
        canvas[row + height, col:col + width] = EOS
    if col + width < side_cols:
        canvas[row:row + height, col + width] = EOS


def encode_grid(grid: np.ndarray, canvas_side: int = DEFAULT_CANVAS_SIDE, row: int = 0, col: int = 0) -> np.ndarray:
    """Encode a colour grid as a flat token sequence of length canvas_side**2."""
    height, width = grid.shape
    if row + height > canvas_side or col + width > canvas_side:
        raise ValueError(f"grid {height}x{width} at ({row}, {col}) does not fit a {canvas_side}x{canvas_side} canvas")
    canvas = np.zeros((canvas_side, canvas_side), dtype=np.uint8)
    place_grid(canvas, grid.astype(np.uint8) + COLOUR_OFFSET, row, col)
    return canvas.reshape(-1)


def decode_grid(tokens: np.ndarray, canvas_side: int = DEFAULT_CANVAS_SIDE) -> np.ndarray:
    """Decode a predicted token sequence: the largest top-left rectangle holding only colours.

    Never fails on malformed predictions: a sequence with no colour at the top-left corner
    decodes to an empty (0x0) grid.
    """
    canvas = np.asarray(tokens).reshape(canvas_side, canvas_side)
    is_colour = (canvas >= COLOUR_OFFSET) & (canvas < COLOUR_OFFSET + 10)
    best_area, best_shape = 0, (0, 0)
    usable_cols = canvas_side
    for num_rows in range(1, canvas_side + 1):
        # A row's run of colours from the left bounds the width of every taller rectangle.
        row = is_colour[num_rows - 1, :usable_cols]
        usable_cols = usable_cols if row.all() else int(np.argmin(row))
        if usable_cols == 0:
            break
        if num_rows * usable_cols > best_area:
            best_area, best_shape = num_rows * usable_cols, (num_rows, usable_cols)
    rows, cols = best_shape
    return (canvas[:rows, :cols].astype(np.int64) - COLOUR_OFFSET).astype(np.uint8)
