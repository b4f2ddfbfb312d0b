"""The data layer: task sources, grid encoding, augmentation, few-shot episodes and batches."""

from etrm.data.sources import Task, load_tasks

__all__ = ["Task", "load_tasks"]
