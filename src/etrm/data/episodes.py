"""Few-shot episodes, built into batches on the fly.

An episode is one task's demonstrations (the context, at most `max_demos`, with a mask) plus
one query input and its target, all under one augmentation of the task. Training episodes are
the training tasks' test pairs and, with `leave_one_out`, each demo in turn as the query with
the other demos as context. Nothing is materialised: a batch is encoded from the tasks when it
is asked for, deterministically from (seed, epoch, index).

A batch is a dict of numpy arrays (uint8 tokens; `etrm.data.tensors.to_torch` makes model inputs):

- `inputs`, `labels`: (B, canvas_side**2) query input and target tokens
- `demo_inputs`, `demo_outputs`: (B, D, canvas_side**2), D = the largest demo count in the batch
- `demo_mask`: (B, D) True for real demos
- `puzzle_identifiers`: (B,) the (task, augmentation) id, used by the TRM baseline
- `task_index`, `query_index`, `augmentation_index`: (B,) where each episode came from
- `valid`: (B,) False for the filler rows that complete the last evaluation batch
- `rule_atoms`: (B, A) the keys (`atom_key`) of each task's rule atoms in order, 0-padded; A = the
  most atoms in the batch (0 when no task has a rule). Read only by the oracle context source.
- `region_side`: (B,) with a size-aware canvas only (`region_margin` given): the side of the
  top-left square each episode's grids sit in (`etrm.data.canvas`); the decoder runs the batch
  on the smallest square holding them all.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections.abc import Iterator, Sequence

import numpy as np

from etrm.data.augment import NUM_DIHEDRAL, Augmentation, augmentation_list, dihedral
from etrm.data.canvas import region_side
from etrm.data.encoding import COLOUR_OFFSET, place_grid
from etrm.data.synth import rule_atoms
from etrm.data.tasks import NUM_COLOURS, Task

Batch = dict[str, np.ndarray]


def training_episodes(tasks: Sequence[Task], leave_one_out: bool) -> np.ndarray:
    """(task_index, query) rows: query >= 0 is a test pair, query < 0 is demo -(query + 1) held out.

    Test pairs without a known output cannot be trained on and are not listed; a demo is held
    out only when at least one other demo remains as context.
    """
    rows = []
    for task_index, task in enumerate(tasks):
        rows += [(task_index, i) for i, (_, output) in enumerate(task.tests) if output is not None]
        if leave_one_out and len(task.demos) >= 2:
            rows += [(task_index, -(d + 1)) for d in range(len(task.demos))]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 2)


def atom_key(atom: str) -> int:
    """A stable non-zero int64 key of a rule atom's name (0 marks padding in `rule_atoms`)."""
    return int.from_bytes(hashlib.blake2b(atom.encode(), digest_size=8).digest(), "little") % (2**62) + 1


def task_atom_keys(task: Task) -> list[int]:
    """The keys of a task's rule atoms, in order; empty for a task without a rule."""
    return [] if task.rule is None else list(_rule_keys(task.rule))


@functools.cache
def _rule_keys(rule: tuple[tuple[str, object], ...]) -> tuple[int, ...]:
    # Every batch asks for its tasks' keys: hash each rule's atoms once.
    return tuple(atom_key(atom) for atom in rule_atoms(rule))


def _atom_rows(tasks: Sequence[Task]) -> np.ndarray:
    keys = [task_atom_keys(task) for task in tasks]
    rows = np.zeros((len(tasks), max(map(len, keys), default=0)), dtype=np.int64)
    for row, task_keys in zip(rows, keys, strict=True):
        row[: len(task_keys)] = task_keys
    return rows


def _query_and_context(task: Task, query: int, max_demos: int, context_includes_query: bool) -> tuple[tuple, list]:
    if query >= 0 or context_includes_query:
        return task.tests[query] if query >= 0 else task.demos[-(query + 1)], task.demos[:max_demos]
    held_out = -(query + 1)
    context = [pair for d, pair in enumerate(task.demos) if d != held_out]
    return task.demos[held_out], context[:max_demos]


def episode_regions(tasks: Sequence[Task], episodes: np.ndarray, canvas_side: int, max_demos: int,
                    margin: int) -> np.ndarray:
    """Each episode's region side (`etrm.data.canvas`), as `encode_episodes` gives it; the rows
    are (task index, query) in `training_episodes` form, test pairs as evaluation lists them."""
    return np.asarray([region_side(context, query[0], canvas_side, margin) for query, context in
                       (_query_and_context(tasks[t], int(q), max_demos, False) for t, q in episodes)], dtype=np.int64)


def _place_pair(canvas_in: np.ndarray, canvas_out: np.ndarray, pair: tuple, augmentation: Augmentation,
                lut: np.ndarray, offset_fraction: np.ndarray | None, region: int) -> None:
    # Input and output of one example share one offset, drawn inside the free space of both
    # within the region (the whole canvas unless it is size-aware). A grid inside the region is
    # written into the region alone, so its EOS border stops at the region's edge as it would at
    # a canvas's; one the region cuts off (a training output the rule did not foresee) is kept
    # whole, and the cells beyond the region count as errors.
    grid_in = dihedral(pair[0], augmentation.dihedral)
    grid_out = None if pair[1] is None else dihedral(pair[1], augmentation.dihedral)
    row = col = 0
    if offset_fraction is not None:
        height = max(grid_in.shape[0], 0 if grid_out is None else grid_out.shape[0])
        width = max(grid_in.shape[1], 0 if grid_out is None else grid_out.shape[1])
        row = int(offset_fraction[0] * (max(region, height) - height + 1))
        col = int(offset_fraction[1] * (max(region, width) - width + 1))
    for canvas, grid in ((canvas_in, grid_in), (canvas_out, grid_out)):
        if grid is not None:
            fits = row + grid.shape[0] <= region and col + grid.shape[1] <= region
            place_grid(canvas[:region, :region] if fits else canvas, lut[grid], row, col)


def encode_episodes(
    tasks: Sequence[Task],
    episodes: np.ndarray,
    augmentations: Sequence[Augmentation],
    canvas_side: int,
    max_demos: int,
    offset_fractions: np.ndarray | None = None,
    puzzle_identifiers: np.ndarray | None = None,
    augmentation_index: np.ndarray | None = None,
    context_includes_query: bool | np.ndarray = False,
    region_margin: int | None = None,
) -> Batch:
    """Encode episodes (rows of `training_episodes` form) under one augmentation each.

    `offset_fractions` (B, max_demos + 1, 2) in [0, 1) translate each example inside the canvas
    (context demos first, the query last); None places every grid at the top-left corner.
    `context_includes_query` (one flag, or one per episode): a held-out demo stays in its own
    context (every demo as context; test-time training's all-demos objective).
    `region_margin`: a size-aware canvas (`etrm.data.canvas`): each episode's grids sit (and
    translate) inside its region, whose side the batch gives as `region_side`.
    """
    size = len(episodes)
    includes_query = np.broadcast_to(context_includes_query, (size,))
    prepared = [_query_and_context(tasks[t], int(q), max_demos, bool(include))
                for (t, q), include in zip(episodes, includes_query, strict=True)]
    num_demos = max((len(context) for _, context in prepared), default=0)
    area = canvas_side * canvas_side
    inputs = np.zeros((size, canvas_side, canvas_side), dtype=np.uint8)
    labels = np.zeros_like(inputs)
    demo_inputs = np.zeros((size, num_demos, canvas_side, canvas_side), dtype=np.uint8)
    demo_outputs = np.zeros_like(demo_inputs)
    demo_mask = np.zeros((size, num_demos), dtype=bool)
    regions = np.full(size, canvas_side, dtype=np.int64)
    for b, ((query_pair, context), augmentation) in enumerate(zip(prepared, augmentations, strict=True)):
        lut = augmentation.colour_lut + COLOUR_OFFSET
        offsets = offset_fractions[b] if offset_fractions is not None else [None] * (max_demos + 1)
        if region_margin is not None:
            regions[b] = region_side(context, query_pair[0], canvas_side, region_margin)
        for d, pair in enumerate(context):
            _place_pair(demo_inputs[b, d], demo_outputs[b, d], pair, augmentation, lut, offsets[d], regions[b])
        demo_mask[b, : len(context)] = True
        _place_pair(inputs[b], labels[b], query_pair, augmentation, lut, offsets[-1], regions[b])
    zeros = np.zeros(size, dtype=np.int64)
    region = {} if region_margin is None else {"region_side": regions}
    return {
        "inputs": inputs.reshape(size, area),
        "labels": labels.reshape(size, area),
        "demo_inputs": demo_inputs.reshape(size, num_demos, area),
        "demo_outputs": demo_outputs.reshape(size, num_demos, area),
        "demo_mask": demo_mask,
        "puzzle_identifiers": zeros if puzzle_identifiers is None else puzzle_identifiers.astype(np.int64),
        "task_index": episodes[:, 0].astype(np.int64),
        "query_index": episodes[:, 1].astype(np.int64),
        "augmentation_index": zeros if augmentation_index is None else augmentation_index.astype(np.int64),
        "valid": np.ones(size, dtype=bool),
        "rule_atoms": _atom_rows([tasks[t] for t in episodes[:, 0]]),
        **region,
    }


class AugmentedTasks:
    """A fixed augmentation list per task, with one id per (task, augmentation).

    Used for evaluation (the list to vote over) and by the TRM baseline, whose learned puzzle
    embedding needs one row per (task, augmentation).
    """

    def __init__(self, tasks: Sequence[Task], num_augmentations: int, seed: int = 0,
                 fixed_puzzle_id: int | None = None):
        self.tasks = list(tasks)
        self.lists = [augmentation_list(task, num_augmentations, seed) for task in self.tasks]
        counts = np.array([len(lst) for lst in self.lists], dtype=np.int64)
        self.first_id = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.num_ids = int(counts.sum())
        # Tasks a TRM never trained on all share one blank (never trained, zero) embedding row.
        self.fixed_puzzle_id = fixed_puzzle_id

    def puzzle_id(self, task_index: int, augmentation_index: int) -> int:
        if self.fixed_puzzle_id is not None:
            return self.fixed_puzzle_id
        return int(self.first_id[task_index] + augmentation_index)

    def head(self, count: int) -> AugmentedTasks:
        """The same tasks and ids with only the first `count` augmentations of each list."""
        view = copy.copy(self)
        view.lists = [lst[:count] for lst in self.lists]
        return view


class TrainSampler:
    """A deterministic, endless, rank-sharded stream of augmented training episodes.

    Global position p (counted in episodes) is episode `order(epoch)[p % n]` of epoch p // n,
    so a batch depends only on (seed, step, global batch size): resuming needs the step alone.
    Batch `step` covers positions [step * global, (step + 1) * global); rank r takes its own
    contiguous slice, so ranks never share an episode. Each epoch draws, from (seed, epoch),
    one augmentation and one set of translation offsets per episode; with translation, each
    example of a task with n examples (demos + tests) is left at the top-left with probability
    1/n, as in the reference (which leaves one of them untranslated).

    With a size-aware canvas (`region_margin` given) an epoch's order also groups episodes of
    similar region: each window of `SIZE_GROUP_BATCHES` global batches is sorted by region and
    its batches shuffled, so a batch pads little and the order is still a function of (seed,
    epoch) alone.
    """

    SIZE_GROUP_BATCHES = 16

    def __init__(self, tasks: Sequence[Task], *, canvas_side: int, max_demos: int, leave_one_out: bool,
                 seed: int, augment: bool = True, translate: bool = True,
                 enumerated: AugmentedTasks | None = None, rank: int = 0, world_size: int = 1,
                 region_margin: int | None = None, context_includes_query_prob: float = 0.0,
                 context_includes_query_decay_steps: int = 0):
        self.tasks = list(tasks)
        self.context_includes_query_prob = context_includes_query_prob
        self.context_includes_query_decay_steps = context_includes_query_decay_steps
        self.episodes = training_episodes(self.tasks, leave_one_out)
        if len(self.episodes) == 0:
            raise ValueError("no training episodes: the training tasks have no test pair with a known output")
        self.canvas_side, self.max_demos, self.seed = canvas_side, max_demos, seed
        self.augment, self.translate, self.enumerated = augment, translate, enumerated
        self.rank, self.world_size, self.region_margin = rank, world_size, region_margin
        self.examples_per_task = np.asarray([len(t.demos) + len(t.tests) for t in self.tasks])
        self.episode_regions = None if region_margin is None else episode_regions(
            self.tasks, self.episodes, canvas_side, max_demos, region_margin)
        self._epoch_cache: dict[int, dict[str, np.ndarray]] = {}

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def steps_per_epoch(self, global_batch_size: int) -> int:
        """Optimiser steps for one pass over every real episode (multi-test tasks counted in full)."""
        return math.ceil(self.num_episodes / global_batch_size)

    def _epoch_draws(self, epoch: int, global_batch_size: int) -> dict[str, np.ndarray]:
        if epoch not in self._epoch_cache:
            n = self.num_episodes
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch_cache = {epoch: {
                "order": self._grouped_by_size(rng.permutation(n), global_batch_size, epoch),
                "dihedral": rng.integers(NUM_DIHEDRAL, size=n),
                "colours": np.argsort(rng.random((n, NUM_COLOURS - 1)), axis=1) + 1,
                "choice": rng.random(n),
                "offsets": rng.random((n, self.max_demos + 1, 2)),
                # Drawn last, so the draws above (and runs without translation) are unchanged.
                "untranslated": rng.random((n, self.max_demos + 1)),
                # Its own generator, so that runs without it draw exactly what they drew before.
                "includes_query": np.random.default_rng([self.seed, epoch, 2]).random(n),
            }, **{e: d for e, d in self._epoch_cache.items() if e == epoch - 1}}
        return self._epoch_cache[epoch]

    def _grouped_by_size(self, order: np.ndarray, global_batch_size: int, epoch: int) -> np.ndarray:
        # Its own generator, so that the epoch's other draws are those of a fixed canvas.
        if self.episode_regions is None:
            return order
        rng = np.random.default_rng([self.seed, epoch, 1])
        window = self.SIZE_GROUP_BATCHES * global_batch_size
        grouped = []
        for start in range(0, len(order), window):
            part = order[start:start + window]
            part = part[np.argsort(self.episode_regions[part], kind="stable")]
            blocks = [part[i:i + global_batch_size] for i in range(0, len(part), global_batch_size)]
            grouped += [blocks[i] for i in rng.permutation(len(blocks))]
        return np.concatenate(grouped)

    def includes_query_prob(self, step: int) -> float:
        """The probability at optimiser step `step` that a held-out demo stays in its context."""
        if not self.context_includes_query_decay_steps:
            return self.context_includes_query_prob
        return self.context_includes_query_prob * max(0.0, 1.0 - step / self.context_includes_query_decay_steps)

    def batch(self, step: int, global_batch_size: int) -> Batch:
        """This rank's share of optimiser step `step`'s batch."""
        if global_batch_size % self.world_size:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {self.world_size} ranks")
        local = global_batch_size // self.world_size
        positions = step * global_batch_size + self.rank * local + np.arange(local)
        epochs, slots = np.divmod(positions, self.num_episodes)
        chosen, augmentations, offsets, puzzle_ids, aug_ids, includes_query = [], [], [], [], [], []
        includes_query_prob = self.includes_query_prob(step)
        for epoch, slot in zip(epochs.tolist(), slots.tolist(), strict=True):
            draws = self._epoch_draws(epoch, global_batch_size)
            episode = int(draws["order"][slot])
            chosen.append(episode)
            includes_query.append(draws["includes_query"][episode] < includes_query_prob)
            task_index = int(self.episodes[episode, 0])
            if self.enumerated is not None:
                options = self.enumerated.lists[task_index]
                aug_index = int(draws["choice"][episode] * len(options)) if self.augment else 0
                augmentations.append(options[aug_index])
                aug_ids.append(aug_index)
                puzzle_ids.append(self.enumerated.puzzle_id(task_index, aug_index))
            elif self.augment:
                colours = (0, *draws["colours"][episode].tolist())
                augmentations.append(Augmentation(int(draws["dihedral"][episode]), colours))
            else:
                augmentations.append(Augmentation())
            # As the reference's dataset builder leaves one of a task's n examples untranslated,
            # each example sits at the top-left (where evaluation puts every grid) with chance 1/n.
            at_corner = draws["untranslated"][episode] < 1.0 / self.examples_per_task[task_index]
            offsets.append(np.where(at_corner[:, None], 0.0, draws["offsets"][episode]))
        return encode_episodes(
            self.tasks, self.episodes[chosen], augmentations, self.canvas_side, self.max_demos,
            offset_fractions=np.stack(offsets) if self.translate else None,
            puzzle_identifiers=np.asarray(puzzle_ids) if puzzle_ids else None,
            augmentation_index=np.asarray(aug_ids) if aug_ids else None, region_margin=self.region_margin,
            context_includes_query=np.asarray(includes_query),
        )


class EvalEnumeration:
    """Every (task, test input, augmentation) of the held-out tasks, each exactly once over ranks.

    The items are split into contiguous shards, one per rank; each rank's last batch is filled
    with copies of its first item marked `valid=False`, so nothing is lost at batch or rank
    boundaries and no item is counted twice.
    """

    def __init__(self, augmented: AugmentedTasks, *, canvas_side: int, max_demos: int,
                 region_margin: int | None = None):
        self.augmented, self.canvas_side, self.max_demos = augmented, canvas_side, max_demos
        self.region_margin = region_margin
        rows = [(t, q, a) for t, task in enumerate(augmented.tasks)
                for q in range(len(task.tests)) for a in range(len(augmented.lists[t]))]
        self.items = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
        if region_margin is not None:
            # Items of similar region share batches (the order of records never matters).
            regions = episode_regions(augmented.tasks, self.items[:, :2], canvas_side, max_demos, region_margin)
            self.items = self.items[np.argsort(regions, kind="stable")]

    def shard(self, rank: int = 0, world_size: int = 1) -> np.ndarray:
        """This rank's (task_index, test_index, augmentation_index) rows."""
        return np.array_split(self.items, world_size)[rank]

    def batches(self, batch_size: int, rank: int = 0, world_size: int = 1,
                items: np.ndarray | None = None) -> Iterator[Batch]:
        """This rank's items (or the given `items` rows) in batches of exactly `batch_size` rows
        (the last one padded)."""
        items = self.shard(rank, world_size) if items is None else items
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            real = len(chunk)
            if real < batch_size:
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - real, axis=0)])
            augmentations = [self.augmented.lists[t][a] for t, _, a in chunk]
            puzzle_ids = np.asarray([self.augmented.puzzle_id(t, a) for t, _, a in chunk])
            batch = encode_episodes(self.augmented.tasks, chunk[:, :2], augmentations, self.canvas_side,
                                    self.max_demos, puzzle_identifiers=puzzle_ids,
                                    augmentation_index=chunk[:, 2], region_margin=self.region_margin)
            batch["valid"][real:] = False
            yield batch
