"""The strict few-shot split: canvas filtering, deterministic subsets and the leak policy."""

from __future__ import annotations

import pytest

from etrm.core.errors import DataError
from etrm.data.leaks import find_leaks
from etrm.data.splits import few_shot_split, fitting_subset


def _largest_side(task) -> int:
    grids = [g for pair in task.demos for g in pair] + [
        g for pair in task.tests for g in pair if g is not None
    ]
    return max(max(g.shape) for g in grids)


def test_canvas_filter_counts_what_it_drops(arc1_training, arc1_evaluation):
    split = few_shot_split("arc1:training", "arc1:evaluation", canvas_side=10, leak_policy="warn")
    too_big_train = sum(_largest_side(t) > 10 for t in arc1_training)
    too_big_test = sum(_largest_side(t) > 10 for t in arc1_evaluation)
    assert 0 < too_big_train < 400 and 0 < too_big_test < 400
    assert split.dropped_train_canvas == too_big_train
    assert split.dropped_test_canvas == too_big_test
    assert len(split.train) == 400 - too_big_train and len(split.test) == 400 - too_big_test
    assert all(_largest_side(t) <= 10 for t in split.train + split.test)
    summary = " ".join(split.summary(10))
    assert f"{too_big_train} train" in summary and f"{too_big_test} held-out" in summary


def test_subsets_are_the_first_ids_among_fitting_tasks(arc1_training, arc1_evaluation):
    canvas = 12
    split = few_shot_split(
        "arc1:training", "arc1:evaluation", canvas_side=canvas, max_train_groups=25, max_eval_groups=30
    )
    fitting_test = sorted(t.id for t in arc1_evaluation if _largest_side(t) <= canvas)
    assert [t.id for t in split.test] == fitting_test[:30]
    # The leak policy (drop) removes the training tasks overlapping the chosen held-out tasks.
    leaked = find_leaks(arc1_training, split.test).training_ids
    assert split.dropped_train_leaks == sorted(
        leaked & {t.id for t in arc1_training if _largest_side(t) <= canvas}
    )
    fitting_train = sorted(t.id for t in arc1_training if _largest_side(t) <= canvas and t.id not in leaked)
    assert [t.id for t in split.train] == fitting_train[:25]
    # The same call gives the same split.
    again = few_shot_split(
        "arc1:training", "arc1:evaluation", canvas_side=canvas, max_train_groups=25, max_eval_groups=30
    )
    assert [t.id for t in again.train] == [t.id for t in split.train]


def test_default_split_drops_leaked_training_tasks(arc1_training, arc1_evaluation):
    split = few_shot_split("arc1:training", "arc1:evaluation", canvas_side=30)
    leaked = find_leaks(arc1_training, arc1_evaluation).training_ids
    assert leaked and split.dropped_train_leaks == sorted(leaked)
    assert len(split.train) == 400 - len(leaked) and len(split.test) == 400
    assert not {t.id for t in split.train} & leaked
    assert split.dropped_train_canvas == split.dropped_test_canvas == 0
    assert any("dropped" in line and "leak check" in line for line in split.summary(30))
    # No held-out task's pair is left in the training pool.
    assert find_leaks(split.train, split.test).overlapping_tasks == 0


def test_leak_policies_through_the_split(arc1_training):
    warned = few_shot_split("arc1:training", "arc1:evaluation", canvas_side=30, leak_policy="warn")
    assert len(warned.train) == 400 and warned.leaks.overlapping_tasks > 0 and not warned.dropped_train_leaks
    assert any("kept" in line for line in warned.summary(30))
    with pytest.raises(DataError, match="overlap"):
        few_shot_split("arc1:training", "arc1:evaluation", canvas_side=30, leak_policy="error")


@pytest.mark.parametrize("leak_policy", ("drop", "warn"))
def test_validation_tasks_are_kept_out_of_training(arc1_training, leak_policy):
    split = few_shot_split("arc1:training", "arc1:evaluation", canvas_side=10, leak_policy=leak_policy,
                           validation_sources="arc1:training", max_validation_groups=30)
    fitting = sorted(t.id for t in arc1_training if _largest_side(t) <= 10)
    assert [t.id for t in split.validation] == fitting[:30]
    assert not {t.id for t in split.train} & {t.id for t in split.validation}
    plain = few_shot_split("arc1:training", "arc1:evaluation", canvas_side=10, leak_policy=leak_policy)
    assert {t.id for t in plain.train} - {t.id for t in split.train} >= set(fitting[:30])
    if leak_policy == "drop":
        assert find_leaks(split.train, split.validation).overlapping_tasks == 0
    assert "validation tasks: 30" in split.summary(10)[0]


def test_fitting_subset(arc1_training):
    shuffled = arc1_training[::-1]
    chosen, dropped = fitting_subset(shuffled, 8, None)
    assert [t.id for t in chosen] == sorted(t.id for t in arc1_training if _largest_side(t) <= 8)
    assert dropped == 400 - len(chosen)
    first, same_dropped = fitting_subset(shuffled, 8, 5)
    assert [t.id for t in first] == [t.id for t in chosen[:5]] and same_dropped == dropped
