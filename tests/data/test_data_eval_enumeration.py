"""Evaluation enumeration: every (task, test input, augmentation) exactly once over ranks and batches."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from etrm.data.encoding import decode_grid
from etrm.data.episodes import AugmentedTasks, EvalEnumeration

SIDE = 30
NUM_AUGMENTATIONS = 3


@pytest.fixture(scope="module")
def augmented(conceptarc, arc1_evaluation):
    multi_test = [t for t in arc1_evaluation if len(t.tests) > 1][:3]
    single_test = [t for t in arc1_evaluation if len(t.tests) == 1][:2]
    tasks = conceptarc[:10] + multi_test + single_test
    assert sum(len(t.tests) for t in tasks) == 10 * 3 + sum(len(t.tests) for t in multi_test) + 2
    return AugmentedTasks(tasks, NUM_AUGMENTATIONS, seed=0)


def _expected(augmented: AugmentedTasks) -> Counter:
    return Counter(
        (t, q, a)
        for t, task in enumerate(augmented.tasks)
        for q in range(len(task.tests))
        for a in range(len(augmented.lists[t]))
    )


@pytest.mark.parametrize("region_margin", [None, 1])  # a size-aware canvas sorts the items by size
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("batch_size", [1, 4, 7, 16, 500])
def test_every_item_exactly_once_over_ranks(augmented, world_size, batch_size, region_margin):
    enumeration = EvalEnumeration(augmented, canvas_side=SIDE, max_demos=10, region_margin=region_margin)
    expected = _expected(augmented)
    assert len(expected) == len(enumeration.items) and len(expected) > 100
    found = Counter()
    for rank in range(world_size):
        for batch in enumeration.batches(batch_size, rank, world_size):
            for key, value in batch.items():
                assert value.shape[0] == batch_size, key
            valid = batch["valid"]
            assert valid.dtype == bool and valid[0]
            # Filler rows only at the end of a batch.
            assert valid.tolist() == sorted(valid.tolist(), reverse=True)
            rows = zip(
                batch["task_index"][valid].tolist(),
                batch["query_index"][valid].tolist(),
                batch["augmentation_index"][valid].tolist(),
                strict=True,
            )
            found.update(rows)
    assert found == expected


def test_valid_rows_hold_the_augmented_test_pair(augmented):
    enumeration = EvalEnumeration(augmented, canvas_side=SIDE, max_demos=10)
    checked = 0
    for batch in enumeration.batches(9, rank=1, world_size=2):
        for b in np.flatnonzero(batch["valid"]):
            t, q, a = (int(batch[k][b]) for k in ("task_index", "query_index", "augmentation_index"))
            task, augmentation = augmented.tasks[t], augmented.lists[t][a]
            assert batch["puzzle_identifiers"][b] == augmented.puzzle_id(t, a)
            assert np.array_equal(decode_grid(batch["inputs"][b]), augmentation.apply(task.tests[q][0]))
            assert np.array_equal(decode_grid(batch["labels"][b]), augmentation.apply(task.tests[q][1]))
            assert int(batch["demo_mask"][b].sum()) == len(task.demos)
            for d, (grid_in, grid_out) in enumerate(task.demos):
                assert np.array_equal(decode_grid(batch["demo_inputs"][b, d]), augmentation.apply(grid_in))
                assert np.array_equal(decode_grid(batch["demo_outputs"][b, d]), augmentation.apply(grid_out))
            checked += 1
    assert checked == len(enumeration.shard(1, 2))


def test_multi_test_tasks_are_enumerated_per_test(augmented):
    enumeration = EvalEnumeration(augmented, canvas_side=SIDE, max_demos=10)
    per_task = Counter(enumeration.items[:, 0].tolist())
    for t, task in enumerate(augmented.tasks):
        assert per_task[t] == len(task.tests) * len(augmented.lists[t])
    assert max(len(t.tests) for t in augmented.tasks) == 3


def test_more_ranks_than_items(augmented):
    enumeration = EvalEnumeration(augmented, canvas_side=SIDE, max_demos=10)
    world_size = len(enumeration.items) + 2
    found = Counter()
    for rank in range(world_size):
        for batch in enumeration.batches(2, rank, world_size):
            found.update(
                zip(
                    batch["task_index"][batch["valid"]].tolist(),
                    batch["query_index"][batch["valid"]].tolist(),
                    batch["augmentation_index"][batch["valid"]].tolist(),
                    strict=True,
                )
            )
    assert found == _expected(augmented)


def test_head_keeps_ids_and_takes_a_prefix_of_each_list(augmented):
    view = augmented.head(2)
    assert all(len(v) == min(2, len(full)) for v, full in zip(view.lists, augmented.lists, strict=True))
    assert all(v == full[: len(v)] for v, full in zip(view.lists, augmented.lists, strict=True))
    assert [len(lst) for lst in augmented.lists] != [len(lst) for lst in view.lists]  # original untouched
    for t in range(len(augmented.tasks)):
        assert view.puzzle_id(t, 1) == augmented.puzzle_id(t, 1)
    enumeration = EvalEnumeration(view, canvas_side=SIDE, max_demos=10)
    assert set(enumeration.items[:, 2].tolist()) == {0, 1}
    assert len(enumeration.items) == sum(
        len(t.tests) * len(lst) for t, lst in zip(view.tasks, view.lists, strict=True)
    )


def test_fixed_puzzle_id(augmented):
    fixed = AugmentedTasks(augmented.tasks[:3], NUM_AUGMENTATIONS, seed=0, fixed_puzzle_id=7)
    batch = next(EvalEnumeration(fixed, canvas_side=SIDE, max_demos=10).batches(20))
    assert set(batch["puzzle_identifiers"].tolist()) == {7}
    assert len(set(batch["augmentation_index"].tolist())) > 1
