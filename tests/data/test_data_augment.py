"""Augmentation: the 8 dihedral transforms, colour permutations with 0 fixed, exact inverses."""

from __future__ import annotations

import numpy as np
import pytest

from etrm.data.augment import DIHEDRAL_INVERSE, Augmentation, augmentation_list, dihedral
from etrm.data.tasks import Task

GENERIC = np.arange(1, 13, dtype=np.uint8).reshape(3, 4) % 10  # non-square, no symmetry


def _by_index(grid: np.ndarray, transform_id: int) -> np.ndarray:
    """The reference's transform ids written as index formulas (not numpy helpers)."""
    h, w = grid.shape
    formulas = {
        0: ((h, w), lambda i, j: grid[i, j]),
        1: ((w, h), lambda i, j: grid[j, w - 1 - i]),  # rotate 90 degrees counter-clockwise
        2: ((h, w), lambda i, j: grid[h - 1 - i, w - 1 - j]),
        3: ((w, h), lambda i, j: grid[h - 1 - j, i]),
        4: ((h, w), lambda i, j: grid[i, w - 1 - j]),  # mirror left-right
        5: ((h, w), lambda i, j: grid[h - 1 - i, j]),  # mirror up-down
        6: ((w, h), lambda i, j: grid[j, i]),  # transpose
        7: ((w, h), lambda i, j: grid[h - 1 - j, w - 1 - i]),  # anti-transpose
    }
    shape, cell = formulas[transform_id]
    return np.array([[cell(i, j) for j in range(shape[1])] for i in range(shape[0])], dtype=grid.dtype)


@pytest.mark.parametrize("transform_id", range(8))
def test_dihedral_ids_match_the_reference(transform_id):
    np.testing.assert_array_equal(dihedral(GENERIC, transform_id), _by_index(GENERIC, transform_id))


def test_the_eight_transforms_are_distinct():
    assert len({dihedral(GENERIC, t).tobytes() + bytes(dihedral(GENERIC, t).shape) for t in range(8)}) == 8


def test_dihedral_inverse_table():
    assert DIHEDRAL_INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)  # reference facts §1
    for t in range(8):
        np.testing.assert_array_equal(dihedral(dihedral(GENERIC, t), DIHEDRAL_INVERSE[t]), GENERIC)
        np.testing.assert_array_equal(dihedral(dihedral(GENERIC, DIHEDRAL_INVERSE[t]), t), GENERIC)


def test_hand_worked_example():
    grid = np.array([[1, 2], [3, 0]], dtype=np.uint8)
    swap_1_2 = (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)
    # rot90 counter-clockwise: [[2, 0], [1, 3]]; then colours 1 <-> 2.
    np.testing.assert_array_equal(Augmentation(1, swap_1_2).apply(grid), [[1, 0], [2, 3]])
    np.testing.assert_array_equal(Augmentation(0, swap_1_2).apply(grid), [[2, 1], [3, 0]])


@pytest.mark.parametrize(
    "colour_map",
    [
        (1, 0, 2, 3, 4, 5, 6, 7, 8, 9),  # moves 0
        (9, 1, 2, 3, 4, 5, 6, 7, 8, 0),  # moves 0
        (0, 1, 1, 3, 4, 5, 6, 7, 8, 9),  # not a permutation
        (0, 1, 2, 3, 4, 5, 6, 7, 8),  # too short
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10),  # too long
        (0, 1, 2, 3, 4, 5, 6, 7, 8, 10),  # colour outside 0..9
    ],
)
def test_bad_colour_maps_are_refused(colour_map):
    with pytest.raises(ValueError):
        Augmentation(0, colour_map)


@pytest.mark.parametrize("transform_id", [-1, 8, 100])
def test_bad_dihedral_ids_are_refused(transform_id):
    with pytest.raises(ValueError):
        Augmentation(transform_id)
    with pytest.raises(ValueError):
        dihedral(GENERIC, transform_id)


def test_random_augmentations_are_valid_and_seeded():
    draws = [Augmentation.random(np.random.default_rng(7)) for _ in range(2)]
    assert draws[0] == draws[1]
    many = [Augmentation.random(np.random.default_rng(seed)) for seed in range(200)]
    assert all(a.colour_map[0] == 0 and sorted(a.colour_map) == list(range(10)) for a in many)
    assert {a.dihedral for a in many} == set(range(8))
    assert len({a.colour_map for a in many}) > 150


def test_inverse_composes_to_identity():
    rng = np.random.default_rng(3)
    grid = rng.integers(0, 10, size=(5, 7)).astype(np.uint8)
    for _ in range(64):
        augmentation = Augmentation.random(rng)
        inverse = augmentation.inverse()
        assert inverse.inverse() == augmentation
        assert all(inverse.colour_map[augmentation.colour_map[c]] == c for c in range(10))
        np.testing.assert_array_equal(inverse.apply(augmentation.apply(grid)), grid)
        np.testing.assert_array_equal(augmentation.apply(inverse.apply(grid)), grid)
    assert Augmentation().is_identity and Augmentation().inverse().is_identity


def test_apply_invert_is_exact_on_every_arc1_grid(arc1_training, arc1_evaluation):
    rng = np.random.default_rng(2024)
    grids = [g for task in arc1_training + arc1_evaluation for g in task.grids()]
    for transform_id in range(8):
        colours = (0, *(rng.permutation(9) + 1).tolist())
        augmentation = Augmentation(transform_id, colours)
        assert not augmentation.is_identity
        changed = 0
        for grid in grids:
            augmented = augmentation.apply(grid)
            assert sorted(augmented.shape) == sorted(grid.shape)
            restored = augmentation.invert(augmented)
            assert restored.dtype == grid.dtype and np.array_equal(restored, grid)
            changed += not np.array_equal(augmented, grid)
        assert changed > len(grids) // 2


# --- augmentation_list ----------------------------------------------------------------------------


def _visible(task: Task, augmentation: Augmentation) -> tuple:
    grids = [g for pair in task.demos for g in pair] + [i for i, _ in task.tests]
    return tuple((augmentation.apply(g).shape, augmentation.apply(g).tobytes()) for g in grids)


def test_augmentation_list_properties(arc1_training):
    for task in arc1_training[:25]:
        for count in (1, 8, 40):
            chosen = augmentation_list(task, count, seed=0)
            assert 1 <= len(chosen) <= count
            assert chosen[0].is_identity
            assert chosen == augmentation_list(task, count, seed=0)  # deterministic
            views = [_visible(task, a) for a in chosen]
            assert len(set(views)) == len(views)  # no two entries look the same to the model
        distinct_dihedrals = len({_visible(task, Augmentation(t)) for t in range(8)})
        if distinct_dihedrals == 8:
            assert [a for a in augmentation_list(task, 8)] == [Augmentation(t) for t in range(8)]


def test_augmentation_list_depends_on_seed_and_task(arc1_training):
    first, second = arc1_training[0], arc1_training[1]
    assert augmentation_list(first, 30, seed=0) != augmentation_list(first, 30, seed=1)
    assert [a.colour_map for a in augmentation_list(first, 30)[8:]] != [
        a.colour_map for a in augmentation_list(second, 30)[8:]
    ]


def test_augmentation_list_drops_invisible_changes():
    blank = np.zeros((3, 3), dtype=np.uint8)
    symmetric = Task("blank", [(blank, blank)], [(blank, blank)])
    assert augmentation_list(symmetric, 50) == [Augmentation()]
    # Only colour 5 used and every grid symmetric: the distinct views are the colour choices for 5.
    plus = np.array([[0, 5, 0], [5, 5, 5], [0, 5, 0]], dtype=np.uint8)
    one_colour = Task("plus", [(plus, plus)], [(plus, None)])
    chosen = augmentation_list(one_colour, 100)
    assert len(chosen) == 9 and len({a.colour_map[5] for a in chosen}) == 9
    with pytest.raises(ValueError):
        augmentation_list(one_colour, 0)


def test_augmentation_list_ignores_hidden_test_outputs():
    # Two tasks that differ only in the hidden test output must get the same list.
    rng = np.random.default_rng(5)
    demo = (
        rng.integers(0, 10, size=(3, 4)).astype(np.uint8),
        rng.integers(0, 10, size=(4, 2)).astype(np.uint8),
    )
    query = rng.integers(0, 10, size=(2, 2)).astype(np.uint8)
    a = Task("same", [demo], [(query, np.zeros((1, 1), dtype=np.uint8))])
    b = Task("same", [demo], [(query, np.arange(9, dtype=np.uint8).reshape(3, 3))])
    assert augmentation_list(a, 40) == augmentation_list(b, 40)
