"""Leak check: held-out tasks sharing a pair (up to dihedral + colour permutation) with training tasks."""

from __future__ import annotations

import zlib
from collections import defaultdict

import numpy as np
import pytest

from etrm.core.errors import DataError
from etrm.data.augment import Augmentation, dihedral
from etrm.data.leaks import find_leaks, remove_leaks
from etrm.data.tasks import Task


def _known_pairs(task: Task) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(task.demos) + [(i, o) for i, o in task.tests if o is not None]


def _maps_onto(source: tuple, target: tuple) -> bool:
    """Brute force: does some dihedral transform + colour permutation fixing 0 take source to target?"""
    for transform_id in range(8):
        moved = [dihedral(g, transform_id) for g in source]
        if any(m.shape != t.shape for m, t in zip(moved, target, strict=True)):
            continue
        mapping: dict[int, int] = {0: 0}
        consistent = True
        for m, t in zip(moved, target, strict=True):
            for a, b in zip(m.ravel().tolist(), t.ravel().tolist(), strict=True):
                if mapping.setdefault(a, b) != b:
                    consistent = False
                    break
            if not consistent:
                break
        if consistent and len(set(mapping.values())) == len(mapping):
            return True
    return False


def _invariant(pair) -> tuple:
    """A cheap signature shared by equivalent pairs (a bucket for the brute force)."""
    parts = []
    for grid in pair:
        counts = np.bincount(grid.ravel(), minlength=10)
        parts += [tuple(sorted(grid.shape)), int(counts[0]), tuple(sorted(counts[1:].tolist()))]
    return tuple(parts)


def _brute_force_leaks(train_tasks, held_out_tasks) -> dict[str, set[str]]:
    buckets = defaultdict(list)
    for task in train_tasks:
        for pair in _known_pairs(task):
            buckets[_invariant(pair)].append((task.id, pair))
    found: dict[str, set[str]] = defaultdict(set)
    for task in held_out_tasks:
        for pair in _known_pairs(task):
            for train_id, candidate in buckets.get(_invariant(pair), []):
                if train_id not in found[task.id] and _maps_onto(candidate, pair):
                    found[task.id].add(train_id)
    return {k: v for k, v in found.items() if v}


def test_arc2_training_contains_arc1_evaluation(arc2_training, arc1_evaluation):
    shared = {t.id for t in arc2_training} & {t.id for t in arc1_evaluation}
    assert len(shared) == 376  # reference facts §1
    report = find_leaks(arc2_training, arc1_evaluation)
    assert shared <= set(report.matches)
    assert all(task_id in report.matches[task_id] for task_id in shared)
    assert report.overlapping_tasks >= 376


def test_arc1_training_vs_evaluation_matches_brute_force(arc1_training, arc1_evaluation):
    report = find_leaks(arc1_training, arc1_evaluation)
    assert report.overlapping_tasks >= 1
    by_id_train = {t.id: t for t in arc1_training}
    by_id_test = {t.id: t for t in arc1_evaluation}
    for held_out, train in report.pairs():
        assert any(
            _maps_onto(p, q)
            for p in _known_pairs(by_id_train[train])
            for q in _known_pairs(by_id_test[held_out])
        ), (held_out, train)
    expected = _brute_force_leaks(arc1_training, arc1_evaluation)
    assert {k: set(v) for k, v in report.matches.items()} == expected
    assert report.overlapping_tasks == len(report.matches)
    assert report.training_ids == set().union(*expected.values())
    as_json = report.to_json()
    assert as_json["overlapping_tasks"] == len(expected)
    assert {(p["held_out"], p["training"]) for p in as_json["pairs"]} == set(report.pairs())


def test_conceptarc_does_not_overlap_arc1_evaluation(conceptarc, arc1_evaluation):
    assert find_leaks(conceptarc, arc1_evaluation).overlapping_tasks == 0


# --- synthetic -----------------------------------------------------------------------------------

RNG = np.random.default_rng(42)
BASE_IN = RNG.integers(0, 10, size=(4, 6)).astype(np.uint8)
BASE_OUT = RNG.integers(0, 10, size=(5, 3)).astype(np.uint8)
OTHER = (RNG.integers(0, 10, size=(3, 3)).astype(np.uint8), RNG.integers(0, 10, size=(3, 3)).astype(np.uint8))
PERMUTED = Augmentation(1, (0, 3, 1, 2, 9, 8, 7, 6, 5, 4))  # rot90 + colour permutation


def _filler(task_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A random test pair of the task's own, matching nothing else."""
    rng = np.random.default_rng(zlib.crc32(task_id.encode()))
    return rng.integers(0, 10, size=(7, 8)).astype(np.uint8), rng.integers(0, 10, size=(8, 9)).astype(
        np.uint8
    )


def _task(task_id, *pairs, test=None):
    return Task(task_id, list(pairs), [_filler(task_id) if test is None else test])


def test_rotated_and_recoloured_pair_is_found():
    train = [_task("train", (BASE_IN, BASE_OUT)), _task("unrelated", OTHER)]
    moved = (PERMUTED.apply(BASE_IN), PERMUTED.apply(BASE_OUT))
    assert not np.array_equal(moved[0], BASE_IN)
    test_side = RNG.integers(0, 10, size=(2, 2)).astype(np.uint8)
    held_out = [_task("leaky", moved, test=(test_side, test_side)), _task("clean", (test_side, test_side))]
    report = find_leaks(train[:1], held_out)
    assert report.matches == {"leaky": ["train"]}


def test_pair_sharing_only_its_input_is_not_a_leak():
    other_out = BASE_OUT.copy()
    other_out[0, 0] = (other_out[0, 0] + 1) % 10
    train = [_task("train", (BASE_IN, BASE_OUT), test=(BASE_IN[:2], BASE_IN[:2]))]
    held_out = [_task("same input", (BASE_IN, other_out), test=(BASE_OUT, BASE_OUT))]
    assert not _maps_onto((BASE_IN, other_out), (BASE_IN, BASE_OUT))
    assert find_leaks(train, held_out).overlapping_tasks == 0


def test_transforms_must_apply_to_both_grids_alike():
    half_moved = (dihedral(BASE_IN, 1), BASE_OUT)  # input rotated, output not
    assert not _maps_onto((BASE_IN, BASE_OUT), half_moved)
    assert find_leaks([_task("train", (BASE_IN, BASE_OUT))], [_task("h", half_moved)]).overlapping_tasks == 0


def test_colour_zero_is_not_permuted():
    grid_in = np.array([[0, 1, 1], [1, 1, 1]], dtype=np.uint8)
    swapped = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.uint8)  # 0 <-> 1 swapped: not an allowed recolouring
    assert not _maps_onto((grid_in, grid_in), (swapped, swapped))
    assert (
        find_leaks([_task("t", (grid_in, grid_in))], [_task("h", (swapped, swapped))]).overlapping_tasks == 0
    )
    recoloured = np.array([[7, 7, 7], [7, 7, 0]], dtype=np.uint8)  # rotated 180 degrees, 1 -> 7
    assert (
        find_leaks([_task("t", (grid_in, grid_in))], [_task("h", (recoloured, recoloured))]).overlapping_tasks
        == 1
    )


def test_test_pairs_count_but_unknown_outputs_do_not():
    train = [Task("train", [OTHER], [(BASE_IN, BASE_OUT)])]
    assert find_leaks(train, [_task("h", (BASE_IN, BASE_OUT))]).overlapping_tasks == 1
    unknown = [Task("train", [OTHER], [(BASE_IN, None)])]
    other_in = PERMUTED.apply(OTHER[0])
    assert (
        find_leaks(unknown, [_task("h", (BASE_IN, BASE_OUT), test=(other_in, other_in))]).overlapping_tasks
        == 0
    )


# --- policies ------------------------------------------------------------------------------------


def _pool():
    train = [_task("a", (BASE_IN, BASE_OUT)), _task("b", OTHER), _task("c", (BASE_OUT, BASE_IN))]
    held_out = [_task("h", (PERMUTED.apply(BASE_IN), PERMUTED.apply(BASE_OUT)))]
    return train, held_out


def test_policy_drop():
    train, held_out = _pool()
    kept, report = remove_leaks(train, held_out, "drop")
    assert [t.id for t in kept] == ["b", "c"] and report.matches == {"h": ["a"]}


def test_policy_warn():
    train, held_out = _pool()
    kept, report = remove_leaks(train, held_out, "warn")
    assert [t.id for t in kept] == ["a", "b", "c"] and report.overlapping_tasks == 1


def test_policy_error():
    train, held_out = _pool()
    with pytest.raises(DataError, match="h ~ a") as caught:
        remove_leaks(train, held_out, "error")
    assert "\n" not in str(caught.value)
    kept, report = remove_leaks(train[1:], held_out, "error")  # nothing to complain about
    assert [t.id for t in kept] == ["b", "c"] and report.overlapping_tasks == 0


def test_unknown_policy():
    train, held_out = _pool()
    with pytest.raises(DataError, match="leak policy"):
        remove_leaks(train, held_out, "ignore")


@pytest.mark.parametrize("transform_id", range(8))
def test_every_dihedral_transform_with_recolouring_is_found(transform_id):
    colours = (0, *(np.random.default_rng(transform_id).permutation(9) + 1).tolist())
    moved = Augmentation(transform_id, colours)
    held_out = [_task("h", (moved.apply(BASE_IN), moved.apply(BASE_OUT)))]
    assert find_leaks([_task("train", (BASE_IN, BASE_OUT))], held_out).matches == {"h": ["train"]}
