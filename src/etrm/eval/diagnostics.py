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
- context_influence (`context_influence`): how much the decoder reads its context: the loss on
  the probe tasks' test pairs with another task's context minus the loss with their own. Near 0,
  the decoder ignores the context (what starvation looks like from the decoder's side).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from etrm.data.augment import NUM_DIHEDRAL, Augmentation
from etrm.data.encoding import IGNORE_LABEL
from etrm.data.episodes import AugmentedTasks, encode_episodes
from etrm.data.tasks import Task
from etrm.data.tensors import to_torch
from etrm.models.decoder import ACTModel, ContextSource
from etrm.models.losses import stablemax_cross_entropy


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


def context_influence(model: ACTModel, tasks: Sequence[Task], canvas_side: int, max_demos: int,
                      device: torch.device, region_margin: int | None = None) -> dict[str, float] | None:
    """The decoder's loss on each task's first test pair (identity augmentation, halt_max_steps
    steps) with the task's own context and with the next task's (the contexts rolled by one),
    and their difference `context_influence` (swapped minus own). None for fewer than two tasks
    or a recurrent context source (its context is refined inside the ACT carry)."""
    source = model.context_source
    if len(tasks) < 2 or source.initial_state(1, device) is not None:
        return None
    episodes = np.array([(t, 0) for t in range(len(tasks))], dtype=np.int64)
    batch = to_torch(encode_episodes(tasks, episodes, [Augmentation()] * len(tasks), canvas_side, max_demos,
                                     region_margin=region_margin), device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        context, layout = source(batch), source.layout(batch)
        swapped_layout = None if layout is None else layout.rows(torch.arange(len(tasks), device=device).roll(1))
        losses = {}
        for name, ctx, lay in (("own", context, layout), ("swapped", context.roll(1, 0), swapped_layout)):
            outputs = model.decode(batch["inputs"], ctx, model.config.halt_max_steps,
                                   region_side=batch.get("region_side"), layout=lay)
            known = batch["labels"] != IGNORE_LABEL
            per_sample = stablemax_cross_entropy(outputs["logits"], batch["labels"]).sum(-1) / known.sum(-1)
            losses[name] = float(per_sample.mean())
    model.train(was_training)
    return {"context_loss_own": losses["own"], "context_loss_swapped": losses["swapped"],
            "context_influence": losses["swapped"] - losses["own"]}
