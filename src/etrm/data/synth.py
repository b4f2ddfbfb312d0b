"""A generator of ARC-like tasks from parameterised rule families: few-shot generalisation
measurable in CPU minutes.

A task = 3-4 demos + 1-2 tests drawn from ONE rule instance (a family with fixed parameters,
or a composition of two), on random input grids (background 0); every grid, input or output,
is at most `max_side` on a side (rules that enlarge a grid get smaller inputs).

The three splits share ONE training set, so one trained model answers all three questions:
training tasks use only the families' training parameter values and only the pairs of rules
not held out for `compose`. The held-out tasks of each split:

- `iid`: new instances drawn from the training distribution itself.
- `params`: every parameter value is one never seen in training (unseen scale factors,
  tilings, colours, transforms, offsets, directions), on single rules and seen pairs.
- `compose`: pairs of rules never composed in training, with training parameter values.

A ladder of difficulty (`LEVELS`): level 3 is the benchmark above (all ten families and the
seen compositions); level 2 draws single rules of `colour_permutation`, `dihedral` and
`translate`; level 1 `colour_permutation` alone: every task a fresh random permutation of the
colours 1-9, readable from its demos (every colour of a test input appears in a demo input).
Levels 1 and 2 have the `iid` split only.

Every task keeps its rule (`Task.rule`); `rule_atoms` names the atoms an oracle context is
built from: one per (family, parameter value) step, and for a colour permutation one per
colour it maps (c -> p(c)), so held-out permutations are made of atoms seen in training.

Everything is a pure function of the seed. As a source:
`synth:SPLIT:PART[:SEED[:COUNT[:MAX_SIDE[:LEVEL]]]]`, e.g. `synth:params:test` or
`synth:iid:train:0:2000:8:1`; `etrm data synth` writes the same tasks as Kaggle-layout files.
"""

from __future__ import annotations

import itertools
import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etrm.core.errors import DataError
from etrm.data.augment import dihedral
from etrm.data.tasks import MAX_GRID_SIDE, Task

Grid = np.ndarray
SPLITS = ("iid", "params", "compose")


# ----------------------------------------------------------------------------- input grids
def random_grid(rng: np.random.Generator, min_side: int, max_side: int, objects: bool) -> Grid:
    """Background 0 with either scattered coloured cells or a few solid rectangles."""
    height, width = rng.integers(min_side, max_side + 1, size=2)
    grid = np.zeros((height, width), dtype=np.uint8)
    colours = rng.choice(np.arange(1, 10), size=rng.integers(1, 4), replace=False)
    if not objects:
        mask = rng.random((height, width)) < rng.uniform(0.15, 0.45)
        grid[mask] = rng.choice(colours, size=int(mask.sum()))
        return grid
    for _ in range(rng.integers(1, 4)):
        h, w = rng.integers(1, max(2, height // 2) + 1), rng.integers(1, max(2, width // 2) + 1)
        r, c = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        grid[r:r + h, c:c + w] = rng.choice(colours)
    return grid


def _components(grid: Grid) -> list[np.ndarray]:
    # 4-connected same-colour components of non-background cells, as boolean masks.
    seen = np.zeros(grid.shape, dtype=bool)
    found = []
    for start in zip(*np.nonzero(grid), strict=True):
        if seen[start]:
            continue
        mask, stack, colour = np.zeros(grid.shape, dtype=bool), [start], grid[start]
        seen[start] = mask[start] = True
        while stack:
            r, c = stack.pop()
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and not seen[nr, nc] and grid[nr, nc] == colour:
                    seen[nr, nc] = mask[nr, nc] = True
                    stack.append((nr, nc))
        found.append(mask)
    return found


# ------------------------------------------------------------------------------ the rules
@dataclass(frozen=True)
class Family:
    """A rule family: its parameter values (train / held-out for `params`), the rule, input kind,
    and how much it multiplies the grid side (for fitting the canvas)."""

    name: str
    train_values: tuple
    held_out_values: tuple
    apply: Callable[[Grid, object], Grid]
    objects: bool = False
    growth: Callable[[object], int] = lambda value: 1
    # A family whose values are too many to list (a colour permutation) draws each task's value.
    draw_value: Callable[[np.random.Generator], object] | None = None
    # The oracle's atoms of one value; default: the (family, value) step itself.
    atoms: Callable[[object], list[str]] | None = None
    # Every colour of a test input must appear in a demo input (else the rule is not readable).
    needs_colour_coverage: bool = False

    @property
    def grows(self) -> bool:
        return bool(self.train_values) and self.growth(self.train_values[0]) > 1


def _colour_map(grid: Grid, shift: int) -> Grid:
    lut = np.arange(10, dtype=np.uint8)
    lut[1:] = (np.arange(9) + shift) % 9 + 1  # cyclic shift of colours 1..9; 0 stays
    return lut[grid]


def _draw_permutation(rng: np.random.Generator) -> tuple[int, ...]:
    # A permutation of colours 1..9 (0, the background, stays) that moves at least one colour.
    while True:
        permutation = (0, *(rng.permutation(9) + 1).tolist())
        if permutation != tuple(range(10)):
            return permutation


def _translate(grid: Grid, offset: tuple[int, int]) -> Grid:
    out = np.zeros_like(grid)
    dy, dx = offset
    h, w = grid.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = grid[max(-dy, 0):h - max(dy, 0),
                                                                         max(-dx, 0):w - max(dx, 0)]
    return out


def _gravity(grid: Grid, direction: str) -> Grid:
    # Every non-background cell falls to the side named, keeping order within its column/row.
    turned = {"down": 0, "up": 2, "right": 1, "left": 3}[direction]
    rotated = np.rot90(grid, turned)
    out = np.zeros_like(rotated)
    for column in range(rotated.shape[1]):
        cells = rotated[:, column][rotated[:, column] != 0]
        if len(cells):
            out[-len(cells):, column] = cells
    return np.rot90(out, -turned)


def _fill_enclosed(grid: Grid, colour: int) -> Grid:
    # Background cells not connected to the border (through background) take `colour`.
    outside = np.zeros(grid.shape, dtype=bool)
    stack = [(r, c) for r in range(grid.shape[0]) for c in range(grid.shape[1])
             if (r in (0, grid.shape[0] - 1) or c in (0, grid.shape[1] - 1)) and grid[r, c] == 0]
    for cell in stack:
        outside[cell] = True
    while stack:
        r, c = stack.pop()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and not outside[nr, nc] and grid[nr, nc] == 0:
                outside[nr, nc] = True
                stack.append((nr, nc))
    out = grid.copy()
    out[(grid == 0) & ~outside] = colour
    return out


def _crop_largest(grid: Grid, _: object) -> Grid:
    components = _components(grid)
    if not components:
        return grid.copy()
    mask = max(components, key=lambda m: int(m.sum()))
    rows, cols = np.nonzero(mask)
    return grid[rows.min():rows.max() + 1, cols.min():cols.max() + 1].copy()


def _border(grid: Grid, colour: int) -> Grid:
    out = grid.copy()
    out[0, :] = out[-1, :] = colour
    out[:, 0] = out[:, -1] = colour
    return out


def _recolour_by_size(grid: Grid, colours: tuple[int, int]) -> Grid:
    # The largest object(s) take the first colour, every other object the second.
    components = _components(grid)
    out = grid.copy()
    if components:
        largest = max(int(m.sum()) for m in components)
        for mask in components:
            out[mask] = colours[0] if int(mask.sum()) == largest else colours[1]
    return out


LEVEL3_FAMILIES = {
    family.name: family for family in (
        Family("colour_map", (1, 2, 3, 4, 5), (6, 7, 8), _colour_map),
        Family("dihedral", (1, 2, 3, 4), (5, 6, 7), lambda g, t: dihedral(g, t).copy()),
        Family("translate", ((0, 1), (1, 0), (1, 1), (0, -1)), ((-1, 0), (-1, -1), (2, 0)), _translate),
        Family("gravity", ("down", "right"), ("up", "left"), _gravity),
        Family("fill_enclosed", (1, 2, 3, 4, 5), (6, 7, 8, 9), _fill_enclosed, objects=True),
        Family("scale", (2,), (3,), lambda g, k: np.kron(g, np.ones((k, k), dtype=np.uint8)), growth=lambda k: k),
        Family("tile", ((1, 2), (2, 1), (2, 2)), ((1, 3), (3, 1), (3, 2)), lambda g, nm: np.tile(g, nm),
               growth=lambda nm: max(nm)),
        Family("crop_object", (None,), (None,), _crop_largest, objects=True),
        Family("border", (1, 2, 3, 4, 5), (6, 7, 8, 9), _border),
        Family("recolour_by_size", ((1, 2), (3, 4), (5, 6)), ((7, 8), (8, 9), (9, 7)), _recolour_by_size,
               objects=True),
    )
}
COLOUR_PERMUTATION = Family("colour_permutation", (), (), lambda g, p: np.asarray(p, dtype=np.uint8)[g],
                            draw_value=_draw_permutation,
                            atoms=lambda p: [f"colour_permutation({c}->{p[c]})" for c in range(1, 10)],
                            needs_colour_coverage=True)
FAMILIES = {**LEVEL3_FAMILIES, COLOUR_PERMUTATION.name: COLOUR_PERMUTATION}
# Pairs (first, then second) whose composition is defined everywhere; never two that enlarge.
COMPOSABLE = [(a, b) for a, b in itertools.permutations(LEVEL3_FAMILIES, 2)
              if not (FAMILIES[a].grows and FAMILIES[b].grows) and a != "crop_object"]
# The ladder: the families each level draws single rules from (level 3 also composes pairs).
LEVELS = {1: ("colour_permutation",), 2: ("colour_permutation", "dihedral", "translate"),
          3: tuple(LEVEL3_FAMILIES)}


@dataclass(frozen=True)
class Rule:
    """A rule instance: one or two (family, parameter value) steps applied in order."""

    steps: tuple[tuple[str, object], ...]

    @property
    def name(self) -> str:
        return "+".join(f"{family}({value})" for family, value in self.steps)

    @property
    def objects(self) -> bool:
        return FAMILIES[self.steps[0][0]].objects

    @property
    def growth(self) -> int:
        return int(np.prod([FAMILIES[family].growth(value) for family, value in self.steps]))

    def __call__(self, grid: Grid) -> Grid:
        for family, value in self.steps:
            grid = FAMILIES[family].apply(grid, value)
        return grid


# ------------------------------------------------------------------------------ the splits
def _values(family: str, part: str, split: str) -> tuple:
    values = FAMILIES[family]
    return values.held_out_values if (split, part) == ("params", "test") else values.train_values


def compose_held_out_pairs() -> list[tuple[str, str]]:
    """The pairs of families composed only in held-out tasks of `compose` (fixed: every 3rd pair)."""
    return COMPOSABLE[::3]


def _draw_families(rng: np.random.Generator, part: str, split: str, level: int) -> tuple[str, ...]:
    names = list(LEVELS[level])
    if level < 3:
        return (names[rng.integers(len(names))],)
    held_out = compose_held_out_pairs()
    if (split, part) == ("compose", "test"):
        return held_out[rng.integers(len(held_out))]
    if rng.random() < 0.5:
        return (names[rng.integers(len(names))],)
    seen = [pair for pair in COMPOSABLE if pair not in held_out]
    return seen[rng.integers(len(seen))]


def _draw_rule(rng: np.random.Generator, part: str, split: str, level: int) -> Rule:
    steps = []
    for family in _draw_families(rng, part, split, level):
        if FAMILIES[family].draw_value is not None:
            steps.append((family, FAMILIES[family].draw_value(rng)))
            continue
        values = _values(family, part, split)
        steps.append((family, values[rng.integers(len(values))]))
    return Rule(tuple(steps))


def rule_atoms(steps: tuple[tuple[str, object], ...]) -> list[str]:
    """The oracle's atoms of a rule, in step order: one per (family, value) step, or the
    family's own atoms (a colour permutation: one per colour it maps)."""
    atoms = []
    for family, value in steps:
        known = FAMILIES.get(family)
        atoms += known.atoms(value) if known is not None and known.atoms is not None else [f"{family}({value})"]
    return atoms


def _colours_covered(demos: list, tests: list) -> bool:
    shown = set(np.unique(np.concatenate([i.ravel() for i, _ in demos])).tolist())
    return all(set(np.unique(i).tolist()) <= shown for i, _ in tests)


def make_task(rng: np.random.Generator, rule: Rule, task_id: str, min_side: int, max_side: int) -> Task | None:
    """Demos and tests of one rule instance; None when the rule leaves every demo unchanged.

    Inputs are at most `max_side // growth` on a side, so outputs stay within `max_side`. A
    rule read off the demos' colours (a colour permutation) redraws the grids until every
    colour of a test input appears in a demo input.
    """
    side = max(1, max_side // rule.growth)
    num_demos, num_tests = int(rng.integers(3, 5)), int(rng.integers(1, 3))
    needs_coverage = any(FAMILIES[family].needs_colour_coverage for family, _ in rule.steps)
    while True:
        pairs = []
        for _ in range(num_demos + num_tests):
            grid = random_grid(rng, min(min_side, side), side, rule.objects)
            pairs.append((grid, rule(grid).astype(np.uint8)))
        demos, tests = pairs[:num_demos], pairs[num_demos:]
        if not needs_coverage or _colours_covered(demos, tests):
            break
    if all(np.array_equal(i, o) for i, o in demos):
        return None
    return Task(task_id, demos, list(tests), origin=f"synth {rule.name}", rule=rule.steps)


def synth_tasks(split: str, part: str, count: int, seed: int = 0, min_side: int = 3,
                max_side: int = 10, level: int = 3) -> list[Task]:
    """`count` tasks of one part (train/test) of one split of one ladder level, a pure function
    of the arguments.

    The train part is the same for every split of a level (see the module docstring).
    """
    if level not in LEVELS:
        raise DataError(f"synthetic level {level} is not one of {', '.join(map(str, LEVELS))}")
    if split not in SPLITS or (level < 3 and split != "iid"):
        allowed = SPLITS if level == 3 else ("iid",)
        raise DataError(f"synthetic split '{split}' is not one of {', '.join(allowed)} at level {level}")
    if part not in ("train", "test"):
        raise DataError(f"synthetic part '{part}' is not train or test")
    if not 1 <= max_side <= MAX_GRID_SIDE:
        raise DataError(f"synthetic max_side {max_side} is not within 1..{MAX_GRID_SIDE}")
    # Level 3 keeps the seeds it always had, so its tasks are unchanged.
    key = [seed, 0] if part == "train" else [seed, 1, SPLITS.index(split)]
    rng = np.random.default_rng(key if level == 3 else [*key, level])
    prefix = "synth" if level == 3 else f"synth{level}"
    tasks = []
    while len(tasks) < count:
        rule = _draw_rule(rng, part, split, level)
        name = f"{prefix}-train" if part == "train" else f"{prefix}-{split}-test"
        task_id = f"{name}-{len(tasks):05d}-{zlib.crc32(rule.name.encode()) % 10**6:06d}"
        task = make_task(rng, rule, task_id, min_side, max_side)
        if task is not None:
            tasks.append(task)
    return tasks


def rule_of(task: Task) -> str:
    """The rule instance a synthetic task was drawn from (kept in its origin)."""
    return task.origin.removeprefix("synth ")


def write_kaggle(tasks: list[Task], prefix: str | Path) -> None:
    """Write tasks as PREFIX_challenges.json + PREFIX_solutions.json (readable as `kaggle:PREFIX`)."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    challenges = {t.id: {"train": [{"input": i.tolist(), "output": o.tolist()} for i, o in t.demos],
                         "test": [{"input": i.tolist()} for i, _ in t.tests]} for t in tasks}
    solutions = {t.id: [o.tolist() for _, o in t.tests] for t in tasks}
    Path(f"{prefix}_challenges.json").write_text(json.dumps(challenges))
    Path(f"{prefix}_solutions.json").write_text(json.dumps(solutions))
