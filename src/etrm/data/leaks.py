"""Leak check: held-out tasks whose examples also occur in the training pool.

Two examples match when one (input, output) pair equals the other after some dihedral
transform and colour permutation (0 fixed) applied to both grids alike. Matching whole pairs,
not single grids, matters: small grids such as 3x3 patterns recur across unrelated tasks.

Each pair gets a canonical key: for each of the 8 transforms, recolour the non-zero colours
in order of first appearance (input then output, row-major), and keep the smallest result.
Equivalent pairs get equal keys, so the check is one set lookup per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from etrm.core.errors import DataError
from etrm.data.augment import NUM_DIHEDRAL, dihedral
from etrm.data.tasks import NUM_COLOURS, Task

LEAK_POLICIES = ("drop", "warn", "error")


def _relabelled(grid_in: np.ndarray, grid_out: np.ndarray) -> bytes:
    flat = np.concatenate([grid_in.ravel(), grid_out.ravel()])
    values, first_seen = np.unique(flat, return_index=True)
    lut = np.zeros(NUM_COLOURS, dtype=np.uint8)
    in_order = values[np.argsort(first_seen)]
    in_order = in_order[in_order != 0]
    lut[in_order] = np.arange(1, len(in_order) + 1, dtype=np.uint8)
    return bytes((*grid_in.shape, *grid_out.shape)) + lut[flat].tobytes()


def canonical_pair_key(grid_in: np.ndarray, grid_out: np.ndarray) -> bytes:
    """A key shared by exactly the pairs equal up to a dihedral transform and colour permutation."""
    return min(_relabelled(dihedral(grid_in, t), dihedral(grid_out, t)) for t in range(NUM_DIHEDRAL))


def task_pair_keys(task: Task) -> set[bytes]:
    """Canonical keys of every demo pair and every test pair with a known output."""
    pairs = list(task.demos) + [(i, o) for i, o in task.tests if o is not None]
    return {canonical_pair_key(grid_in, grid_out) for grid_in, grid_out in pairs}


@dataclass
class LeakReport:
    """Held-out task id -> the training task ids sharing at least one pair with it."""

    matches: dict[str, list[str]] = field(default_factory=dict)

    @property
    def overlapping_tasks(self) -> int:
        return len(self.matches)

    @property
    def training_ids(self) -> set[str]:
        return {train_id for ids in self.matches.values() for train_id in ids}

    def pairs(self) -> list[tuple[str, str]]:
        return [(held_out, train) for held_out, ids in sorted(self.matches.items()) for train in ids]

    def to_json(self) -> dict:
        return {
            "overlapping_tasks": self.overlapping_tasks,
            "training_tasks_involved": len(self.training_ids),
            "pairs": [{"held_out": h, "training": t} for h, t in self.pairs()],
        }


def find_leaks(train_tasks: Sequence[Task], held_out_tasks: Sequence[Task]) -> LeakReport:
    """Every held-out task that shares a pair (up to transform and recolouring) with a training task."""
    owners: dict[bytes, set[str]] = {}
    for task in train_tasks:
        for key in task_pair_keys(task):
            owners.setdefault(key, set()).add(task.id)
    report = LeakReport()
    for task in held_out_tasks:
        hits = set().union(*(owners.get(key, set()) for key in task_pair_keys(task)))
        if hits:
            report.matches[task.id] = sorted(hits)
    return report


def _checked_leaks(train_tasks: Sequence[Task], held_out_tasks: Sequence[Task], policy: str, overlapping: str,
                   drop_does: str) -> LeakReport:
    # The leaks of a policy that is known, refusing them under "error" (one line naming a pair).
    if policy not in LEAK_POLICIES:
        raise DataError(f"leak policy '{policy}' is not one of {', '.join(LEAK_POLICIES)}")
    report = find_leaks(train_tasks, held_out_tasks)
    if report.overlapping_tasks and policy == "error":
        first_held, first_train = report.pairs()[0]
        raise DataError(f"{report.overlapping_tasks} {overlapping} (e.g. {first_held} ~ {first_train}); "
                        f"set leak_policy=drop to {drop_does}")
    return report


def remove_leaks(train_tasks: Sequence[Task], held_out_tasks: Sequence[Task],
                 policy: str = "drop") -> tuple[list[Task], LeakReport]:
    """Apply a leak policy: drop the overlapping training tasks, only warn, or refuse to run."""
    report = _checked_leaks(train_tasks, held_out_tasks, policy, "held-out tasks overlap the training pool",
                            "remove them")
    if policy == "drop":
        leaked = report.training_ids
        return [task for task in train_tasks if task.id not in leaked], report
    return list(train_tasks), report


def check_evaluated_tasks(trained_tasks: Sequence[Task], evaluated_tasks: Sequence[Task],
                          policy: str = "drop") -> tuple[list[Task], LeakReport]:
    """The leak policy at evaluation, where the training set is fixed: drop the evaluated tasks
    that share a pair with a task the model trained on, only warn (keep them), or refuse."""
    report = _checked_leaks(trained_tasks, evaluated_tasks, policy,
                            "evaluated tasks overlap the run's training tasks", "leave them out")
    if policy == "drop":
        return [task for task in evaluated_tasks if task.id not in report.matches], report
    return list(evaluated_tasks), report


def evaluated_leak_summary(report: LeakReport, policy: str, evaluated: int) -> str:
    """One line saying what the evaluation-time leak check found and did."""
    if not report.overlapping_tasks:
        return f"leak check: none of the {evaluated} evaluated tasks overlaps the run's training tasks"
    action = "left out" if policy == "drop" else "kept (leak_policy=warn)"
    ids = sorted(report.matches)
    shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
    return (f"leak check: {report.overlapping_tasks} of the {evaluated} evaluated tasks overlap the run's training "
            f"tasks ({shown}): {action}")
