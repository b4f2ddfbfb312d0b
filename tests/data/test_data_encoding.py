"""Grids as token sequences: EOS placement, exact round trips and a decoder that never fails."""

from __future__ import annotations

import numpy as np
import pytest

from etrm.data.encoding import EOS, IGNORE_LABEL, PAD, decode_grid, encode_grid

SIDE = 30


def _expected_canvas(grid: np.ndarray, row: int, col: int, side: int = SIDE) -> np.ndarray:
    """The facts' layout written out cell by cell: colour c -> c + 2, EOS below and right, no corner."""
    height, width = grid.shape
    canvas = np.full((side, side), PAD, dtype=np.int64)
    for r in range(height):
        for c in range(width):
            canvas[row + r, col + c] = int(grid[r, c]) + 2
    if row + height < side:
        for c in range(width):
            canvas[row + height, col + c] = EOS
    if col + width < side:
        for r in range(height):
            canvas[row + r, col + width] = EOS
    return canvas


def test_token_constants_match_the_reference():
    assert (PAD, EOS, IGNORE_LABEL) == (0, 1, -100)
    tokens = encode_grid(np.array([[0, 9]], dtype=np.uint8))
    assert tokens[:2].tolist() == [2, 11]


@pytest.mark.parametrize(
    ("height", "width", "row", "col"),
    [
        (3, 5, 0, 0),
        (1, 1, 0, 0),
        (3, 5, 4, 7),
        (30, 5, 0, 0),
        (5, 30, 0, 0),
        (4, 4, 26, 26),
        (2, 3, 28, 10),
        (7, 2, 3, 28),
        (29, 29, 0, 0),
    ],
)
def test_eos_row_below_and_column_right_within_the_grid(height, width, row, col):
    grid = np.random.default_rng(height * 31 + width).integers(0, 10, size=(height, width)).astype(np.uint8)
    tokens = encode_grid(grid, SIDE, row, col)
    assert tokens.shape == (SIDE * SIDE,) and tokens.dtype == np.uint8
    canvas = tokens.reshape(SIDE, SIDE)
    np.testing.assert_array_equal(canvas, _expected_canvas(grid, row, col))
    # Count check, independent of the cell-by-cell layout above.
    expected_eos = (width if row + height < SIDE else 0) + (height if col + width < SIDE else 0)
    assert int((canvas == EOS).sum()) == expected_eos
    if row + height < SIDE and col + width < SIDE:
        assert canvas[row + height, col + width] == PAD  # no corner


def test_full_canvas_grid_has_no_eos():
    grid = np.random.default_rng(0).integers(0, 10, size=(30, 30)).astype(np.uint8)
    tokens = encode_grid(grid)
    assert not (tokens == EOS).any() and not (tokens == PAD).any()
    np.testing.assert_array_equal(decode_grid(tokens), grid)


def test_encode_refuses_a_grid_that_does_not_fit():
    with pytest.raises(ValueError):
        encode_grid(np.zeros((5, 5), dtype=np.uint8), canvas_side=10, row=6)
    with pytest.raises(ValueError):
        encode_grid(np.zeros((11, 2), dtype=np.uint8), canvas_side=10)


def test_smaller_canvas():
    grid = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)
    tokens = encode_grid(grid, canvas_side=5, row=1, col=2)
    assert tokens.shape == (25,)
    np.testing.assert_array_equal(tokens.reshape(5, 5), _expected_canvas(grid, 1, 2, side=5))
    np.testing.assert_array_equal(decode_grid(encode_grid(grid, canvas_side=5), canvas_side=5), grid)


def test_every_arc1_grid_round_trips(arc1_training, arc1_evaluation):
    count = 0
    for task in arc1_training + arc1_evaluation:
        for grid in task.grids():
            decoded = decode_grid(encode_grid(grid, SIDE))
            assert decoded.shape == grid.shape, task.id
            np.testing.assert_array_equal(decoded, grid, err_msg=task.id)
            count += 1
    assert count > 5000


def _largest_colour_rectangle(canvas: np.ndarray) -> int:
    """Brute force: the largest area r*c such that canvas[:r, :c] holds only colour tokens."""
    is_colour = ((canvas >= 2) & (canvas <= 11)).astype(np.int64)
    best = 0
    for r in range(1, canvas.shape[0] + 1):
        for c in range(1, canvas.shape[1] + 1):
            if r * c > best and is_colour[:r, :c].all():
                best = r * c
    return best


def test_decode_never_raises_on_random_sequences():
    rng = np.random.default_rng(1234)
    nonempty = 0
    for trial in range(300):
        kind = trial % 4
        if kind == 0:  # anything, including values outside 0..11
            tokens = rng.integers(-20, 300, size=SIDE * SIDE)
        elif kind == 1:  # mostly colours: large rectangles
            tokens = rng.choice([0, 1, 2, 5, 11, 12], p=[0.02, 0.02, 0.32, 0.32, 0.3, 0.02], size=SIDE * SIDE)
        elif kind == 2:  # a valid encoding with random corruptions
            grid = rng.integers(0, 10, size=tuple(rng.integers(1, 31, size=2)))
            tokens = encode_grid(grid).astype(np.int64)
            spots = rng.integers(0, SIDE * SIDE, size=int(rng.integers(0, 20)))
            tokens[spots] = rng.integers(-3, 15, size=len(spots))
        else:  # uint8 like real predictions
            tokens = rng.integers(0, 256, size=SIDE * SIDE).astype(np.uint8)
        canvas = np.asarray(tokens).reshape(SIDE, SIDE)
        decoded = decode_grid(tokens)
        assert decoded.ndim == 2 and decoded.dtype == np.uint8
        height, width = decoded.shape
        assert height * width == _largest_colour_rectangle(canvas)
        if decoded.size:
            nonempty += 1
            assert decoded.max() <= 9
            np.testing.assert_array_equal(
                decoded.astype(np.int64), canvas[:height, :width].astype(np.int64) - 2
            )
        else:
            assert decoded.shape == (0, 0)
    assert nonempty > 100


@pytest.mark.parametrize("corner", [PAD, EOS, 12, -1, 255])
def test_decode_is_empty_when_the_corner_is_not_a_colour(corner):
    tokens = encode_grid(np.full((5, 5), 3, dtype=np.uint8)).astype(np.int64)
    tokens[0] = corner
    assert decode_grid(tokens).shape == (0, 0)
    assert decode_grid(np.zeros(SIDE * SIDE, dtype=np.uint8)).shape == (0, 0)


def test_decode_takes_the_largest_rectangle():
    # An L of colours: a 2x6 bar over a 6x2 column; the 12-cell rectangles tie, the first (2x6) wins.
    canvas = np.zeros((SIDE, SIDE), dtype=np.int64)
    canvas[:2, :6] = 4
    canvas[:6, :2] = 5
    assert decode_grid(canvas.reshape(-1)).shape == (2, 6)
    canvas[:7, :2] = 5  # now 7x2 = 14 beats 2x6 = 12
    assert decode_grid(canvas.reshape(-1)).shape == (7, 2)
