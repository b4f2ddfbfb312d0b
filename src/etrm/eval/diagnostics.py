"""Collapse diagnostics: does the encoder tell tasks apart?

The earlier ETRM's encoders all collapsed to near-constant contexts, and its metric hid it by
grouping augmented copies under their augmented ids. Here every figure is computed on a fixed
probe set: K tasks, each under A augmentations, grouped by the ORIGINAL task.

- cross_task_variance: variance over tasks of each task's mean context (mean over features).
- within_task_variance: variance over a task's augmentations, averaged over tasks.
- effective_rank: exp(entropy of the normalised singular values) of the centred context matrix;
  1 means every context lies on one line.
- retrieval_accuracy: for task t under augmentation i, is the nearest context (cosine) among all
  tasks under augmentation j that of task t? Averaged over tasks and ordered pairs i != j.
  Chance is 1/K: at chance, the encoder tells tasks apart no better than noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from etrm.data.augment import NUM_DIHEDRAL
from etrm.data.episodes import AugmentedTasks, encode_episodes
from etrm.data.tasks import Task
from etrm.data.tensors import to_torch
from etrm.models.decoder import ContextSource


def probe_contexts(context_source: ContextSource, tasks: Sequence[Task], num_augmentations: int, canvas_side: int,
                   max_demos: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Contexts (K, A, context_len * hidden) of each probe task under A augmentations: the
    identity and A - 1 random (dihedral + colour permutation) ones, so that a context must survive
    recolouring to be retrieved. Tasks without that many distinct augmentations are left out.
    """
    augmented = AugmentedTasks(tasks, NUM_DIHEDRAL + num_augmentations - 1, seed)
    augmented.lists = [options[:1] + options[NUM_DIHEDRAL:] for options in augmented.lists]
    kept = [t for t, options in enumerate(augmented.lists) if len(options) == num_augmentations]
    episodes = np.array([(t, 0) for t in kept for _ in range(num_augmentations)], dtype=np.int64).reshape(-1, 2)
    augmentations = [augmented.lists[t][a] for t in kept for a in range(num_augmentations)]
    batch = to_torch(encode_episodes(augmented.tasks, episodes, augmentations, canvas_side, max_demos), device)
    was_training = context_source.training
    context_source.eval()
    with torch.no_grad():
        context = context_source(batch)
    context_source.train(was_training)
    return context.float().reshape(len(kept), num_augmentations, -1).cpu()


def collapse_metrics(contexts: torch.Tensor) -> dict[str, float]:
    """The four diagnostics of a (K tasks, A augmentations, features) context tensor."""
    num_tasks, num_augs, _ = contexts.shape
    task_means = contexts.mean(1)
    flat = contexts.reshape(num_tasks * num_augs, -1)
    singular = torch.linalg.svdvals(flat - flat.mean(0))
    weights = singular / singular.sum().clamp_min(1e-12)
    entropy = -(weights * torch.log(weights.clamp_min(1e-12))).sum()
    unit = torch.nn.functional.normalize(contexts, dim=-1)
    hits, trials = 0, 0
    for i in range(num_augs):
        for j in range(num_augs):
            if i != j:
                similarity = unit[:, i] @ unit[:, j].T  # (K, K): task under i vs every task under j
                hits += int((similarity.argmax(1) == torch.arange(num_tasks)).sum())
                trials += num_tasks
    return {
        "cross_task_variance": float(task_means.var(0).mean()),
        "within_task_variance": float(contexts.var(1).mean()),
        "effective_rank": float(torch.exp(entropy)),
        "retrieval_accuracy": hits / max(trials, 1),
        "retrieval_chance": 1.0 / num_tasks,
        "probe_tasks": num_tasks,
    }


def retrieval_at_chance(metrics: dict[str, float], margin: float = 2.0) -> bool:
    """Whether retrieval is no better than `margin` x chance (a collapsed or task-blind encoder)."""
    return metrics["retrieval_accuracy"] <= margin * metrics["retrieval_chance"]
