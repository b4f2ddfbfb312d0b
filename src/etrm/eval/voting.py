"""Voting over augmented predictions and ARC Prize scoring (pure functions, no model)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Candidate:
    """One distinct predicted grid for a test input, with its votes and mean halting confidence."""

    grid: np.ndarray
    votes: int
    mean_confidence: float


def sigmoid(logit: float) -> float:
    """1 / (1 + exp(-logit)) without overflow for any finite logit (exp of a negative number only)."""
    if logit >= 0:
        return 1.0 / (1.0 + math.exp(-logit))
    exp = math.exp(logit)
    return exp / (1.0 + exp)


def vote(predictions: Sequence[tuple[np.ndarray, float]]) -> list[Candidate]:
    """Rank distinct grids by vote count, ties broken by mean sigmoid(q_halt) (higher first).

    `predictions`: (grid in the task's original frame, q_halt logit) per augmentation.
    """
    groups: dict[bytes, list] = {}
    for grid, q_halt in predictions:
        key = bytes(grid.shape) + grid.astype(np.uint8).tobytes()
        confidence = sigmoid(q_halt)
        if key in groups:
            groups[key][1] += 1
            groups[key][2] += confidence
        else:
            groups[key] = [grid, 1, confidence]
    candidates = [Candidate(grid, votes, total / votes) for grid, votes, total in groups.values()]
    return sorted(candidates, key=lambda c: (-c.votes, -c.mean_confidence))


def rank_of_truth(candidates: Sequence[Candidate], truth: np.ndarray | None) -> int | None:
    """1-based rank of the true grid among the candidates, None if absent or unknown."""
    if truth is None:
        return None
    for rank, candidate in enumerate(candidates, start=1):
        if candidate.grid.shape == truth.shape and np.array_equal(candidate.grid, truth):
            return rank
    return None


def pass_at_k(ranks_per_task: Sequence[Sequence[int | None]], k: int) -> float:
    """ARC Prize convention: a task scores the fraction of its test inputs solved within k
    attempts; the result is the mean over the tasks evaluated (the denominator is their count)."""
    if not ranks_per_task:
        return 0.0
    scores = [sum(r is not None and r <= k for r in ranks) / len(ranks) for ranks in ranks_per_task]
    return float(np.mean(scores))
