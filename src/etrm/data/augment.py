"""Task augmentation: one dihedral transform and one colour permutation per task.

The same augmentation applies to every grid of a task (demos and queries alike). Colour 0
(black, the background) is fixed; colours 1..9 are permuted. `apply` and `invert` are exact
inverses on every grid shape. Training draws augmentations on the fly (see `episodes`);
evaluation and the TRM baseline use a fixed, de-duplicated list per task (`augmentation_list`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from etrm.data.tasks import NUM_COLOURS, Task

NUM_DIHEDRAL = 8
# Inverse of each dihedral transform id (rotations 1 and 3 swap; flips and transposes are involutions).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
IDENTITY_COLOURS = tuple(range(NUM_COLOURS))


def dihedral(grid: np.ndarray, transform_id: int) -> np.ndarray:
    """Apply dihedral transform `transform_id` (0 identity, 1-3 rotations, 4-7 flips) to a grid."""
    if transform_id == 0:
        return grid
    if transform_id == 1:
        return np.rot90(grid, 1)
    if transform_id == 2:
        return np.rot90(grid, 2)
    if transform_id == 3:
        return np.rot90(grid, 3)
    if transform_id == 4:
        return np.fliplr(grid)
    if transform_id == 5:
        return np.flipud(grid)
    if transform_id == 6:
        return grid.T
    if transform_id == 7:
        return np.fliplr(np.rot90(grid, 1))
    raise ValueError(f"dihedral transform id {transform_id} is not in 0..7")


@dataclass(frozen=True)
class Augmentation:
    """A dihedral transform id (0..7) and a colour map (`colour_map[c]` is the new colour of c)."""

    dihedral: int = 0
    colour_map: tuple[int, ...] = IDENTITY_COLOURS

    def __post_init__(self) -> None:
        if not 0 <= self.dihedral < NUM_DIHEDRAL:
            raise ValueError(f"dihedral transform id {self.dihedral} is not in 0..7")
        colour_map = tuple(int(c) for c in self.colour_map)
        if sorted(colour_map) != list(IDENTITY_COLOURS):
            raise ValueError(f"colour_map {colour_map} is not a permutation of the colours 0..9")
        if colour_map[0] != 0:
            raise ValueError(f"colour_map {colour_map} moves colour 0 (the background stays fixed)")
        object.__setattr__(self, "colour_map", colour_map)

    @classmethod
    def random(cls, rng: np.random.Generator) -> Augmentation:
        """Draw a uniformly random dihedral transform and permutation of colours 1..9."""
        return cls(int(rng.integers(NUM_DIHEDRAL)), (0, *(rng.permutation(NUM_COLOURS - 1) + 1).tolist()))

    @property
    def is_identity(self) -> bool:
        return self.dihedral == 0 and self.colour_map == IDENTITY_COLOURS

    @property
    def colour_lut(self) -> np.ndarray:
        return np.asarray(self.colour_map, dtype=np.uint8)

    def inverse(self) -> Augmentation:
        """The augmentation that undoes this one."""
        inverse_colours = np.argsort(self.colour_map)
        return Augmentation(DIHEDRAL_INVERSE[self.dihedral], tuple(inverse_colours.tolist()))

    def apply(self, grid: np.ndarray) -> np.ndarray:
        """Augment one grid (a new array)."""
        return self.colour_lut[dihedral(grid, self.dihedral)]

    def invert(self, grid: np.ndarray) -> np.ndarray:
        """Map an augmented grid (e.g. a prediction) back to the task's original frame."""
        return self.inverse().apply(grid)


def task_seed_sequence(task_id: str, seed: int) -> list[int]:
    """A task's entropy for `np.random.default_rng`, the same in every process (Python's hash()
    is salted): [seed, crc32 of the task id]."""
    return [seed, zlib.crc32(task_id.encode())]


def _visible_signature(task: Task, augmentation: Augmentation) -> bytes:
    # What a model sees of the task: demos and test inputs (never the hidden test outputs).
    grids = [g for pair in task.demos for g in pair] + [test_input for test_input, _ in task.tests]
    parts = []
    for grid in grids:
        augmented = augmentation.apply(grid)
        parts.append(bytes(augmented.shape) + augmented.tobytes())
    return b"|".join(parts)


def augmentation_list(task: Task, count: int, seed: int = 0) -> list[Augmentation]:
    """A fixed list of up to `count` augmentations of a task that change what the model sees.

    Identity first, then the other 7 dihedral transforms, then random (transform, colour
    permutation) draws seeded by (seed, task id). Augmentations that leave the task's visible
    grids identical to an earlier one (symmetric grids, colours the task never uses) are dropped,
    so the list can be shorter than `count` for very symmetric tasks.
    """
    if count < 1:
        raise ValueError(f"augmentation count must be at least 1, got {count}")
    rng = np.random.default_rng(task_seed_sequence(task.id, seed))
    candidates = (Augmentation(t) for t in range(NUM_DIHEDRAL))
    chosen: list[Augmentation] = []
    seen: set[bytes] = set()
    attempts = 0
    while len(chosen) < count and attempts < 20 * count + NUM_DIHEDRAL:
        attempts += 1
        candidate = next(candidates, None) or Augmentation.random(rng)
        signature = _visible_signature(task, candidate)
        if signature not in seen:
            seen.add(signature)
            chosen.append(candidate)
    return chosen
