"""What a run config implies about its tasks and its context source: the one place, outside the
model, where TRM and ETRM differ.

TRM's context is one learned embedding row per (training task, augmentation) of a fixed list,
plus one blank (never trained) row that every unseen task shares; ETRM's is computed from the
demos, so it needs no ids; the oracle's is learned per rule atom of the training
tasks. Everything that builds a model, a training stream or an evaluation
set from a config asks `run_data(config)` instead of rebuilding the split and the ids itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from etrm.core.config import RunConfig
from etrm.data.episodes import AugmentedTasks, task_atom_keys
from etrm.data.splits import FewShotSplit, few_shot_split
from etrm.data.tasks import Task
from etrm.models.build import build_model
from etrm.models.decoder import ACTModel


def split_of(config: RunConfig, leak_policy: str | None = None) -> FewShotSplit:
    """The few-shot split a config names (`leak_policy` overrides the config's, e.g. "warn" to
    look at a finished run's tasks)."""
    return few_shot_split(config.train_sources, config.test_sources, config.canvas_side, config.max_train_groups,
                          config.max_eval_groups, leak_policy or config.leak_policy, config.validation_sources,
                          config.max_validation_groups, config.data_dir or None)


@dataclass
class RunData:
    """A config's split and the facts of its context source.

    `enumerated`: the fixed augmentation list per training task (`augmentations_per_task`),
    whose ids are TRM's embedding rows; None when training draws augmentations on the fly.
    `blank_puzzle_id`: TRM's row for tasks it never trained on (the table's last), else None.
    `atom_keys`: the keys of the rule atoms of the training tasks (the oracle's vocabulary).
    """

    config: RunConfig
    split: FewShotSplit
    enumerated: AugmentedTasks | None
    blank_puzzle_id: int | None
    atom_keys: torch.Tensor | None = None  # the oracle's known rule atoms (model_type=oracle)

    @property
    def is_trm(self) -> bool:
        return self.config.model_type == "trm"

    @property
    def num_puzzle_ids(self) -> int:
        """Rows of TRM's embedding table (0 for ETRM)."""
        return 0 if self.blank_puzzle_id is None else self.blank_puzzle_id + 1

    def build_model(self) -> ACTModel:
        return build_model(self.config, num_puzzle_ids=self.num_puzzle_ids, atom_keys=self.atom_keys)

    def training_test_pairs(self, num_augmentations: int = 1) -> AugmentedTasks:
        """The training tasks' test pairs under their first augmentations (identity first), with
        TRM's trained ids: Phase 1's train accuracy."""
        if self.is_trm:
            return self.enumerated.head(num_augmentations)
        return AugmentedTasks(self.split.train, num_augmentations, self.config.seed)

    def held_out(self, num_augmentations: int, tasks: list[Task] | None = None) -> AugmentedTasks:
        """Held-out tasks (default: the split's) under `num_augmentations` each; TRM reads them all
        from the blank row."""
        return AugmentedTasks(self.split.test if tasks is None else tasks, num_augmentations, self.config.seed,
                              fixed_puzzle_id=self.blank_puzzle_id)


def run_data(config: RunConfig, leak_policy: str | None = None, table_rows: int | None = None,
             atom_keys: torch.Tensor | None = None) -> RunData:
    """The split and context-source facts of `config`.

    `table_rows`: the size of a trained TRM's embedding table. Evaluating a checkpoint on another
    held-out set drops other training tasks in the leak check, so its blank row is taken from the
    table (its last row), not recounted from today's split. `atom_keys`: likewise a trained
    oracle's atom vocabulary, taken from its checkpoint.
    """
    split = split_of(config, leak_policy)
    enumerated = (AugmentedTasks(split.train, config.augmentations_per_task, config.seed)
                  if config.augmentations_per_task else None)
    blank = None
    if config.model_type == "trm":
        blank = table_rows - 1 if table_rows is not None else enumerated.num_ids
    if config.model_type == "oracle" and atom_keys is None:
        atom_keys = torch.tensor(sorted({key for task in split.train for key in task_atom_keys(task)}),
                                 dtype=torch.long)
    return RunData(config, split, enumerated, blank, atom_keys)
