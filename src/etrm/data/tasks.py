"""The one task type every source loads into, and the limits of an ARC grid."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_GRID_SIDE = 30
NUM_COLOURS = 10

Grid = np.ndarray
GridPair = tuple[Grid, Grid]


@dataclass(frozen=True)
class Task:
    """One ARC task: demonstration pairs and test pairs (a test output may be unknown)."""

    id: str
    demos: list[GridPair]
    tests: list[tuple[Grid, Grid | None]]
    origin: str = field(default="", compare=False)
    # The generating rule where the source knows it (synthetic tasks): its steps in order, each
    # (family, parameter value); None for tasks from sources without labels (ARC files).
    rule: tuple[tuple[str, object], ...] | None = field(default=None, compare=False)

    def grids(self) -> list[Grid]:
        """Every known grid of the task: demo inputs and outputs, test inputs and known outputs."""
        found = [g for pair in self.demos for g in pair]
        found += [g for pair in self.tests for g in pair if g is not None]
        return found

    @property
    def max_side(self) -> int:
        """The largest height or width among the task's grids."""
        return max(max(g.shape) for g in self.grids())

    def fits(self, canvas_side: int) -> bool:
        """Whether every grid fits a `canvas_side` x `canvas_side` canvas."""
        return self.max_side <= canvas_side
