"""The strict few-shot split: which tasks train, which are held out, and what was dropped.

Default: train on ARC-AGI-1 training (add ConceptARC with `kaggle:PREFIX`), hold out ARC-AGI-1
evaluation. Held-out tasks' demos and test pairs never reach training: training tasks that
share a pair with an evaluated held-out task are handled by the leak policy (default: drop).

Subsets (`max_train_groups`, `max_eval_groups`) are the first N tasks in task-id order among
those that fit the canvas, so a subset is the same on every machine and every run.

Validation tasks (`validation_sources`, `max_validation_groups`): held-out tasks of their own,
for choices that must not be made on the reported held-out set (test-time settings, for one).
A training task with a validation task's id is always taken out of training, and one sharing
a pair with a validation task is handled by the leak policy like a held-out task's, so they may
name tasks of a training source: `validation_sources=arc1:training max_validation_groups=30` keeps the first 30 fitting
ARC-AGI-1 training tasks apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from etrm.data.leaks import LeakReport, remove_leaks
from etrm.data.sources import load_tasks
from etrm.data.tasks import Task


def fitting_subset(tasks: list[Task], canvas_side: int, max_groups: int | None) -> tuple[list[Task], int]:
    """The first `max_groups` tasks (by id) that fit the canvas, and how many did not fit."""
    fitting = sorted((t for t in tasks if t.fits(canvas_side)), key=lambda t: t.id)
    dropped = len(tasks) - len(fitting)
    return (fitting if max_groups is None else fitting[:max_groups]), dropped


@dataclass
class FewShotSplit:
    """Training and held-out tasks, with what was removed and why."""

    train: list[Task]
    test: list[Task]
    dropped_train_canvas: int = 0
    dropped_test_canvas: int = 0
    leaks: LeakReport = field(default_factory=LeakReport)
    dropped_train_leaks: list[str] = field(default_factory=list)
    validation: list[Task] = field(default_factory=list)

    def summary(self, canvas_side: int) -> list[str]:
        """Human-readable lines saying what the split holds and what it dropped."""
        lines = [f"train tasks: {len(self.train)}, held-out tasks: {len(self.test)}"
                 + (f", validation tasks: {len(self.validation)}" if self.validation else "")]
        if self.dropped_train_canvas or self.dropped_test_canvas:
            lines.append(f"tasks not fitting the {canvas_side}x{canvas_side} canvas: "
                         f"{self.dropped_train_canvas} train, {self.dropped_test_canvas} held-out (dropped)")
        if self.leaks.overlapping_tasks:
            action = "dropped" if self.dropped_train_leaks else "kept (leak_policy=warn)"
            ids = sorted(self.leaks.training_ids)
            shown = ", ".join(ids[:8]) + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")
            lines.append(f"leak check: {self.leaks.overlapping_tasks} held-out tasks overlap {len(ids)} training "
                         f"tasks ({shown}): {action}")
        return lines


def few_shot_split(train_sources: str, test_sources: str, canvas_side: int,
                   max_train_groups: int | None = None, max_eval_groups: int | None = None,
                   leak_policy: str = "drop", validation_sources: str = "",
                   max_validation_groups: int | None = None, data_dir: str | None = None) -> FewShotSplit:
    """Load, filter to the canvas, select subsets and apply the leak policy (against the
    held-out and the validation tasks together); `data_dir`: the data home of `data:` sources."""
    test, dropped_test = fitting_subset(load_tasks(test_sources, data_dir), canvas_side, max_eval_groups)
    validation = fitting_subset(load_tasks(validation_sources, data_dir), canvas_side, max_validation_groups)[0] \
        if validation_sources else []
    train_pool, dropped_train = fitting_subset(load_tasks(train_sources, data_dir), canvas_side, None)
    validation_ids = {task.id for task in validation}
    train_pool = [task for task in train_pool if task.id not in validation_ids]
    kept, leaks = remove_leaks(train_pool, [*test, *validation], leak_policy)
    dropped_leaks = sorted({t.id for t in train_pool} - {t.id for t in kept})
    train = kept if max_train_groups is None else kept[:max_train_groups]
    return FewShotSplit(train, test, dropped_train, dropped_test, leaks, dropped_leaks, validation)
