"""The data layer: task sources, grid encoding, augmentation, few-shot episodes and batches."""

from etrm.data.augment import Augmentation
from etrm.data.sources import load_tasks
from etrm.data.tasks import Task

__all__ = ["Augmentation", "Task", "load_tasks"]
