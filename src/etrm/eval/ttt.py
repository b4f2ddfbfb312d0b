"""Test-time training (TTT): adapt a chosen set of parameters to each held-out task's demos.

For each task, `ttt.steps` Adam steps lower the decoder's loss on episodes built from its
demonstrations only (never its test pairs): with the `leave_one_out` objective each demo in
turn is the query and the other demos the context, as training builds episodes; with
`all_demos` every demo is the query with all demos as context (the objective of the earlier
test-time optimisation). Each step has every demo once as the query, each under one of the
task's evaluation augmentations (`ttt.augment`) drawn from (seed, task id, step). The loss is
the token-mean cross-entropy of the demo output after `act_steps` ACT steps, never more than the
model's `halt_max_steps` (the gradient flows through the last one, as in training); each task's
gradient is clipped on its own. Then the task's test inputs are predicted with the adapted
parameters (augment / invert / vote as usual).

What adapts (`ttt.params`), as tensors of a `TaskAdapter` made anew for every group of tasks:

- `context`: ETRM: an offset per task on the context source's output (with `scaled`, each
  vector keeps the norm the source gave it and only its direction moves); TRM: a fresh
  embedding row per task, started from the mean trained row (an unseen task has no row).
- `lora`: rank-r adapters (A random, B zero, so training starts from the trained model) on the
  decoder's qkv, output, gate-up and down projections, one per task.
- `decoder`, `all`: the decoder's weights (and, with `all`, the context source's) themselves,
  as one per-task copy of those tensors passed to the model by `torch.func.functional_call`.

`context` and `lora` adapt many tasks in one batch (each episode picks its task's slice);
`decoder` and `all` adapt one task at a time. A TRM's fresh row adapts with every choice. The
trained model is never changed: gradients are taken with `torch.autograd.grad` with respect to
the adapter's tensors only, so the weights and their `.grad` stay as they were, and nothing
learnt on one task reaches another.
"""

from __future__ import annotations

import contextlib
import math
import zlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from etrm.core.config import TTTConfig
from etrm.core.distributed import autocast_for
from etrm.data.augment import Augmentation
from etrm.data.encoding import IGNORE_LABEL
from etrm.data.episodes import AugmentedTasks, encode_episodes
from etrm.data.tensors import to_torch
from etrm.models.decoder import ACTModel
from etrm.models.losses import stablemax_cross_entropy
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER, PuzzleEmbedding

LORA_TARGETS = ("qkv", "out", "gate_up", "down")  # the decoder's projections LoRA adapts
TASK_SLOT = "task_slot"  # batch key: which of the adapter's tasks an episode belongs to


def task_integer_seed(seed: int, task_id: str) -> int:
    """One 32-bit integer seeding a task's own random streams (its episodes, its LoRA init), from
    the seed and its id alone."""
    return zlib.crc32(f"{seed}:{task_id}".encode())


def _with_norm(vectors: Tensor, norm: Tensor) -> Tensor:
    return vectors * (norm / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12))


class TaskAdapter:
    """The adapted tensors of a group of tasks and how they enter the model's forward.

    `tensors` are what the optimiser moves: the per-task ones have the tasks on dim 0; the
    weights of `decoder` / `all` (one task only) have their parameter's own shape.
    """

    def __init__(self, model: ACTModel, config: TTTConfig, task_ids: Sequence[str]):
        self.model, self.config, self.num_tasks = model, config, len(task_ids)
        self.is_trm = isinstance(model.context_source, PuzzleEmbedding)
        self.context: Tensor | None = None  # (T, C, H) ETRM offsets or (T, emb_ndim) TRM rows
        self.lora: dict[str, tuple[Tensor, Tensor]] = {}  # module name -> (A (T, in, r), B (T, r, out))
        self.weights: dict[str, Tensor] = {}  # parameter name -> its adapted copy
        self.demo_fit: dict[str, dict[str, list[float]]] = {}  # filled by `adapt`
        parameters = dict(model.named_parameters())
        if self.is_trm or config.params == "context":
            self.context = self._initial_context(parameters)
        if config.params == "lora":
            # Each task's A from its own generator: it does not depend on the tasks beside it.
            generators = [torch.Generator().manual_seed(task_integer_seed(config.seed, task_id))
                          for task_id in task_ids]
            for name, module in model.decoder.named_modules():
                if name.rsplit(".", 1)[-1] in LORA_TARGETS:
                    out_features, in_features = module.weight.shape
                    down = torch.stack([torch.randn(in_features, config.lora_rank, generator=generator)
                                        for generator in generators])
                    down = (down / math.sqrt(in_features)).to(module.weight.device, module.weight.dtype)
                    up = torch.zeros(self.num_tasks, config.lora_rank, out_features, device=module.weight.device,
                                     dtype=module.weight.dtype)
                    self.lora[f"decoder.{name}"] = (down.requires_grad_(True), up.requires_grad_(True))
        if config.params in ("decoder", "all"):
            if self.num_tasks != 1:
                raise ValueError(f"ttt.params={config.params} adapts one task at a time, got {self.num_tasks}")
            prefix = "decoder." if config.params == "decoder" else ""
            self.weights = {name: param.detach().clone().requires_grad_(True) for name, param in parameters.items()
                            if name.startswith(prefix) and name != PUZZLE_TABLE_PARAMETER}

    def _initial_context(self, parameters: dict[str, nn.Parameter]) -> Tensor:
        if self.is_trm:
            trained_rows = parameters[PUZZLE_TABLE_PARAMETER].detach()[:-1]  # the last row is the blank row
            self._row_norm = trained_rows.norm(dim=-1).mean()
            return trained_rows.mean(0).expand(self.num_tasks, -1).clone().requires_grad_(True)
        config, weight = self.model.config, self.model.decoder.lm_head.weight
        return torch.zeros(self.num_tasks, config.context_len, config.hidden_size, device=weight.device,
                           dtype=weight.dtype, requires_grad=True)

    @property
    def per_task_tensors(self) -> list[Tensor]:
        """The tensors with the tasks on dim 0 (context, LoRA)."""
        return [*([] if self.context is None else [self.context]), *(t for pair in self.lora.values() for t in pair)]

    @property
    def tensors(self) -> list[Tensor]:
        """Everything the optimiser moves: the per-task tensors, then the adapted weights."""
        return [*self.per_task_tensors, *self.weights.values()]

    def num_parameters(self) -> int:
        """Adapted scalars per task."""
        return sum(t.numel() for t in self.tensors) // self.num_tasks

    def adapt_context(self, context: Tensor, slots: Tensor) -> Tensor:
        """The context the decoder reads: the source's (B, C, H), moved by the task's context tensor."""
        if self.context is None:
            return context
        if self.is_trm:
            row = self.context[slots]
            if self.config.context_parameterisation == "scaled":
                row = _with_norm(row, self._row_norm)
            return self.model.context_source.rows_to_context(row)
        source = context.to(self.context.dtype)
        moved = source + self.context[slots]
        if self.config.context_parameterisation == "scaled":
            moved = _with_norm(moved, source.norm(dim=-1, keepdim=True))
        return moved

    @contextlib.contextmanager
    def lora_hooks(self, slots: Tensor) -> Iterator[None]:
        """Forward hooks that add each sample's task's low-rank update to the targeted projections.

        The hooks pair the rows they see with `slots`, so while they are on a size-aware batch runs
        on one square (`region_groups=1`: the same results, since masked keys change nothing)
        rather than in groups of rows."""
        modules = dict(self.model.named_modules())
        decoder_config = self.model.decoder.config
        region_groups = decoder_config.region_groups
        if self.lora:
            decoder_config.region_groups = 1
        handles = []
        for name, (down, up) in self.lora.items():
            def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor,
                     down: Tensor = down, up: Tensor = up) -> Tensor:
                x = inputs[0]
                update = torch.einsum("bsr,bro->bso", torch.einsum("bsi,bir->bsr", x, down[slots].to(x.dtype)),
                                      up[slots].to(x.dtype))
                return output + update
            handles.append(modules[name].register_forward_hook(hook))
        try:
            yield
        finally:
            decoder_config.region_groups = region_groups
            for handle in handles:
                handle.remove()

    def forward(self, batch: dict[str, Tensor], num_steps: int, early_stop_confidence: float = 0.0
                ) -> dict[str, Tensor]:
        """`num_steps` ACT steps from fresh latents on the adapted model (`ACTModel.decode`'s outputs)."""
        with self.lora_hooks(batch[TASK_SLOT]):
            return functional_call(_AdaptedRun(self.model, self), {f"model.{k}": v for k, v in self.weights.items()},
                                   (batch, num_steps, early_stop_confidence), strict=False)


class _AdaptedRun(nn.Module):
    # functional_call swaps parameters of the module it calls: this one holds the model, and its
    # forward is the context source followed by the decoder, with the adapter's context.
    def __init__(self, model: ACTModel, adapter: TaskAdapter):
        super().__init__()
        self.model = model
        self.adapter = adapter

    def forward(self, batch: dict[str, Tensor], num_steps: int, early_stop_confidence: float) -> dict[str, Tensor]:
        context = self.adapter.adapt_context(self.model.context_source(batch), batch[TASK_SLOT])
        return self.model.decode(batch["inputs"], context, num_steps, early_stop_confidence, batch.get("region_side"),
                                 self.model.context_source.layout(batch))


def episode_batch(augmented: AugmentedTasks, task_indices: Sequence[int], step: int, config: TTTConfig, *,
                  canvas_side: int, max_demos: int, device: torch.device,
                  region_margin: int | None = None) -> dict[str, Tensor]:
    """Step `step`'s episodes of the tasks: every demo of each task once as the query.

    Each under an augmentation drawn from (seed, the task's id, step), so a task's episodes
    depend neither on the tasks beside it nor on its place in the list. A task with one demo
    has nothing to leave out: its episode uses the all-demos objective.
    """
    rows, augmentations, slots, includes_query = [], [], [], []
    for slot, task_index in enumerate(task_indices):
        task, options = augmented.tasks[task_index], augmented.lists[task_index]
        num_demos = len(task.demos)
        rng = np.random.default_rng([task_integer_seed(config.seed, task.id), step])
        choices = rng.integers(len(options), size=num_demos)
        augmentations += [options[int(c)] if config.augment else Augmentation() for c in choices]
        rows += [(task_index, -(d + 1)) for d in range(num_demos)]
        slots += [slot] * num_demos
        includes_query += [config.objective == "all_demos" or num_demos < 2] * num_demos
    batch = encode_episodes(augmented.tasks, np.asarray(rows), augmentations, canvas_side, max_demos,
                            context_includes_query=np.asarray(includes_query), region_margin=region_margin)
    batch[TASK_SLOT] = np.asarray(slots, dtype=np.int64)
    return to_torch(batch, device)


def episode_losses(outputs: dict[str, Tensor], labels: Tensor) -> Tensor:
    """(B,) token-mean cross-entropy of each episode's output."""
    known = labels != IGNORE_LABEL
    return stablemax_cross_entropy(outputs["logits"], labels).sum(-1) / known.sum(-1).clamp_min(1)


def _per_task_mean(values: Tensor, slots: Tensor, num_tasks: int) -> Tensor:
    totals = torch.zeros(num_tasks, dtype=values.dtype, device=values.device).index_add(0, slots, values)
    return totals / torch.bincount(slots, minlength=num_tasks).clamp_min(1)


def _objective(adapter: TaskAdapter, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    # (T,) mean episode loss of each task, and the outputs it was computed from.
    act_steps = adapter.config.objective_act_steps(adapter.model.config.halt_max_steps)
    outputs = adapter.forward(batch, act_steps)
    losses = episode_losses(outputs, batch["labels"])
    return _per_task_mean(losses, batch[TASK_SLOT], adapter.num_tasks), outputs


def task_losses(adapter: TaskAdapter, batch: dict[str, Tensor]) -> Tensor:
    """(T,) mean episode loss of each of the adapter's tasks."""
    return _objective(adapter, batch)[0]


def _clip_per_task(adapter: TaskAdapter, gradients: list[Tensor], max_norm: float) -> list[Tensor]:
    # Each task's gradient norm over all its tensors: the per-task tensors carry the tasks on
    # dim 0, the adapted weights (`decoder`, `all`) belong to the group's only task.
    num_per_task = len(adapter.per_task_tensors)
    squared = torch.zeros(adapter.num_tasks, device=gradients[0].device, dtype=gradients[0].dtype)
    for index, gradient in enumerate(gradients):
        squared += gradient.pow(2).flatten(1).sum(1) if index < num_per_task else gradient.pow(2).sum()
    scale = (max_norm / squared.sqrt().clamp_min(1e-12)).clamp(max=1.0)
    return [(g * (scale.view(-1, *([1] * (g.ndim - 1))) if index < num_per_task else scale[0])).to(g.dtype)
            for index, g in enumerate(gradients)]


def adapt(model: ACTModel, augmented: AugmentedTasks, task_indices: Sequence[int], config: TTTConfig, *,
          canvas_side: int, max_demos: int, region_margin: int | None = None) -> TaskAdapter:
    """A fresh adapter for the tasks, trained on their demos for `config.steps` steps.

    Its `demo_fit` says how well each task's demos were fitted, read off the steps' own forward
    passes (no extra work): `first` before any update, `last` before the last one; each holds
    the tasks' mean episode `loss` and the share of their episodes predicted `exact`ly.
    """
    device = next(model.parameters()).device
    adapter = TaskAdapter(model, config, [augmented.tasks[t].id for t in task_indices])
    optimiser = torch.optim.Adam(adapter.tensors, lr=config.lr)
    for step in range(config.steps):
        batch = episode_batch(augmented, task_indices, step, config, canvas_side=canvas_side,
                              max_demos=max_demos, device=device, region_margin=region_margin)
        with torch.enable_grad():  # also when called under no_grad
            with autocast_for(device):
                losses, outputs = _objective(adapter, batch)
            gradients = torch.autograd.grad(losses.sum(), adapter.tensors, allow_unused=True)
        if step in (0, config.steps - 1):  # computed once when both (a single step)
            fit = _demo_fit(adapter, batch, losses, outputs)
            adapter.demo_fit.update({moment: fit for moment, at_step in (("first", 0), ("last", config.steps - 1))
                                     if step == at_step})
        gradients = [torch.zeros_like(t) if g is None else g for t, g in zip(adapter.tensors, gradients, strict=True)]
        for tensor, gradient in zip(adapter.tensors, _clip_per_task(adapter, gradients, config.grad_clip),
                                    strict=True):
            tensor.grad = gradient
        optimiser.step()
    return adapter


def _demo_fit(adapter: TaskAdapter, batch: dict[str, Tensor], losses: Tensor, outputs: dict[str, Tensor]
              ) -> dict[str, list[float]]:
    # Each task's mean episode loss and the share of its episodes exactly right.
    labels = batch["labels"]
    exact = ((outputs["logits"].argmax(-1) == labels) | (labels == IGNORE_LABEL)).all(-1)
    return {"loss": losses.detach().float().cpu().tolist(),
            "exact": _per_task_mean(exact.float(), batch[TASK_SLOT], adapter.num_tasks).cpu().tolist()}


def task_groups(num_tasks: int, config: TTTConfig, rank: int, world_size: int) -> list[np.ndarray]:
    """This rank's tasks (a contiguous share of the task indices), in the groups adapted together."""
    mine = np.array_split(np.arange(num_tasks), world_size)[rank]
    size = 1 if config.params in ("decoder", "all") else config.tasks_per_batch
    return [mine[start:start + size] for start in range(0, len(mine), size)]
