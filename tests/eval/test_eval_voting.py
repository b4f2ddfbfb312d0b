"""Voting over augmented predictions and ARC Prize scoring (facts section 4; section 6, bug 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from etrm.eval.voting import Candidate, pass_at_k, rank_of_truth, vote


def grid(*rows):
    return np.array(rows, dtype=np.uint8)


A, B, C = grid([1, 2], [3, 4]), grid([5, 5], [5, 5]), grid([0])


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_vote_count_comes_first():
    # B has three votes with low confidence, A two votes with high confidence: B wins.
    candidates = vote([(A, 9.0), (B, -9.0), (A, 9.0), (B, -9.0), (B, -9.0)])
    assert [c.votes for c in candidates] == [3, 2]
    assert np.array_equal(candidates[0].grid, B) and np.array_equal(candidates[1].grid, A)


def test_ties_are_broken_by_mean_sigmoid_of_q_halt():
    # Both have two votes. A: one very confident and one very unsure prediction (mean ~0.5,
    # max ~1); B: two moderately confident ones (mean ~0.73). The mean ranks B first.
    candidates = vote([(A, 10.0), (A, -10.0), (B, 1.0), (B, 1.0)])
    assert np.array_equal(candidates[0].grid, B)
    assert candidates[0].mean_confidence == pytest.approx(sigmoid(1.0))
    assert candidates[1].mean_confidence == pytest.approx((sigmoid(10.0) + sigmoid(-10.0)) / 2)


def test_tie_break_does_not_depend_on_input_order():
    predictions = [(A, -1.0), (B, 2.0), (A, -1.0), (B, 2.0)]
    for order in (predictions, predictions[::-1], predictions[1:] + predictions[:1]):
        assert np.array_equal(vote(order)[0].grid, B)


def test_grids_with_the_same_cells_but_another_shape_are_different_candidates():
    wide, tall = grid([1, 2, 3, 4]), grid([1], [2], [3], [4])
    candidates = vote([(wide, 0.0), (tall, 0.0), (tall, 0.0)])
    assert len(candidates) == 2 and candidates[0].grid.shape == (4, 1)
    assert rank_of_truth(candidates, wide) == 2
    assert rank_of_truth(candidates, grid([1, 2], [3, 4])) is None


def test_vote_of_nothing_and_rank_of_unknown_truth():
    assert vote([]) == []
    assert rank_of_truth([Candidate(A, 1, 0.5)], None) is None


def test_rank_of_truth_is_one_based():
    candidates = vote([(A, 0.0), (A, 0.0), (B, 0.0), (C, 0.0), (C, 0.0), (C, 0.0)])
    assert [rank_of_truth(candidates, g) for g in (C, A, B)] == [1, 2, 3]


def test_task_with_three_test_inputs_one_solved_scores_a_third():
    assert pass_at_k([[1, None, None]], 1) == pytest.approx(1 / 3)
    assert pass_at_k([[2, None, 5]], 2) == pytest.approx(1 / 3)
    assert pass_at_k([[2, None, 5]], 5) == pytest.approx(2 / 3)


def test_pass_at_k_is_the_mean_over_the_tasks_evaluated():
    # Bug 5: pass@k was divided by 400 when 32 tasks were evaluated. Tasks with 3, 1 and 2 test
    # inputs: the task mean (1/3 + 1 + 0) / 3 differs from the per-test-input mean 2/6.
    ranks = [[1, None, None], [1], [None, 3]]
    assert pass_at_k(ranks, 1) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert pass_at_k(ranks, 3) == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert pass_at_k(ranks, 1) != pytest.approx(2 / 6)


def test_pass_at_k_grows_with_k_and_handles_no_tasks():
    ranks = [[1, 2], [3], [None], [2, 4]]
    scores = [pass_at_k(ranks, k) for k in range(1, 6)]
    assert scores == sorted(scores) and scores[-1] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert pass_at_k([], 2) == 0.0


def test_vote_survives_extreme_halting_logits():
    # math.exp(-q) overflows for q < -709; the confidence must still be computed and ordered
    # (sigmoid(-720) < sigmoid(-710), both tiny but non-zero in double precision).
    from etrm.eval.voting import sigmoid

    grid_a, grid_b = np.zeros((2, 2), dtype=np.uint8), np.ones((2, 2), dtype=np.uint8)
    candidates = vote([(grid_a, -720.0), (grid_b, -710.0)])
    assert candidates[0].grid is grid_b and 0 < candidates[1].mean_confidence < candidates[0].mean_confidence
    assert sigmoid(-1000.0) == 0.0 and sigmoid(1000.0) == 1.0 and sigmoid(0.0) == 0.5
    assert sigmoid(-30.0) == pytest.approx(1 / (1 + math.exp(30.0)), rel=1e-12)
    assert sigmoid(30.0) == pytest.approx(1 / (1 + math.exp(-30.0)), rel=1e-12)
