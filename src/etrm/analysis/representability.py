"""Representability: can a context source carry a task's rule at all?

A diagnostic, never an objective of a reported model (ARC tasks have no labels). A fresh context
source of a run's configuration (its encoder, untrained) and a small head are trained together,
directly on the synthetic rule labels of the run's training tasks, then scored on its held-out
tasks. The head: one learned query per label cross-attending over the context positions (the
context's key mask respected), then a linear classifier. Labels (`rule_targets`):

- `colour_image`: for a colour permutation (level 1), the image of each colour 1-9 that a demo
  input shows (nine queries, ten classes; colours no demo shows are not scored);
- `family` and `parameter`: the rule's family and its first step's value (`rule_labels`, the
  rule probe's classes; classes the training tasks lack are not scored).

High held-out accuracy says the front end can carry the rule, so a starving ETRM is a training
problem (the signal), not a representation problem; chance says the front end loses it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from etrm.analysis.probe import rule_labels
from etrm.core.config import RunConfig
from etrm.data.augment import Augmentation
from etrm.data.episodes import encode_episodes
from etrm.data.tasks import Task
from etrm.data.tensors import to_torch
from etrm.models.build import build_model

COLOURS = 9  # the images of colours 1..9
IGNORE = -100


def rule_targets(tasks: Sequence[Task], family_classes: Sequence[str], parameter_classes: Sequence[str]
                 ) -> dict[str, np.ndarray]:
    """Per task: `colour_image` (N, 9) the image of colours 1..9 under a first-step colour
    permutation where a demo input shows the colour, `family` and `parameter` (N,) class indices
    into the given class lists; IGNORE where a label is unknown or not a class."""
    families, parameters = rule_labels(tasks)
    image = np.full((len(tasks), COLOURS), IGNORE, dtype=np.int64)
    for row, task in enumerate(tasks):
        if task.rule and task.rule[0][0] == "colour_permutation":
            shown = set(np.unique(np.concatenate([grid_in.ravel() for grid_in, _ in task.demos])).tolist())
            for colour in range(1, COLOURS + 1):
                if colour in shown:
                    image[row, colour - 1] = int(task.rule[0][1][colour])

    def index(labels: list[str | None], classes: Sequence[str]) -> np.ndarray:
        lookup = {label: i for i, label in enumerate(classes)}
        return np.asarray([lookup.get(label, IGNORE) if label else IGNORE for label in labels], dtype=np.int64)

    return {"colour_image": image, "family": index(families, family_classes),
            "parameter": index(parameters, parameter_classes)}


class RuleHead(nn.Module):
    """One learned query per label, cross-attending over the context, then a linear classifier
    per target (`colour_image` shares one over its nine queries)."""

    def __init__(self, hidden: int, num_families: int, num_parameters: int, num_heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(2 + COLOURS, hidden) / math.sqrt(hidden))
        self.attention = nn.MultiheadAttention(hidden, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.family = nn.Linear(hidden, max(num_families, 1))
        self.parameter = nn.Linear(hidden, max(num_parameters, 1))
        self.colour = nn.Linear(hidden, 10)

    def forward(self, context: Tensor, key_mask: Tensor | None) -> dict[str, Tensor]:
        # Contexts come at the token embeddings' scale: back to unit scale, as the decoder does.
        context = context * math.sqrt(context.shape[-1])
        queries = self.queries.expand(context.shape[0], -1, -1)
        read, _ = self.attention(queries, context, context, key_padding_mask=None if key_mask is None else ~key_mask)
        read = self.norm(read + queries)
        return {"family": self.family(read[:, 0]), "parameter": self.parameter(read[:, 1]),
                "colour_image": self.colour(read[:, 2:])}


def _batch(tasks: Sequence[Task], indices: np.ndarray, config: RunConfig, device: torch.device) -> dict[str, Tensor]:
    # Each task's demos under the identity (an augmentation would change the labels' values).
    episodes = np.stack([indices, np.zeros_like(indices)], axis=1)
    return to_torch(encode_episodes([tasks[i] for i in range(len(tasks))], episodes,
                                    [Augmentation()] * len(indices), config.canvas_side, config.max_demos), device)


def _losses(outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
    return sum(nn.functional.cross_entropy(outputs[k].reshape(-1, outputs[k].shape[-1]), targets[k].reshape(-1),
                                           ignore_index=IGNORE) for k in outputs if (targets[k] != IGNORE).any())


def representability(config: RunConfig, train_tasks: Sequence[Task], test_tasks: Sequence[Task], steps: int = 1000,
                     batch_size: int = 32, lr: float = 1e-3, seed: int = 0,
                     device: torch.device | None = None) -> dict[str, Any]:
    """Train a fresh context source of `config` with a `RuleHead` on the labels of `train_tasks`
    for `steps` AdamW steps; the held-out accuracy of each target on `test_tasks` (with its
    chance, the majority class of the scored labels), and for `colour_image` the share of tasks
    whose every shown colour's image is right."""
    if config.model_type != "etrm":
        raise ValueError(f"representability trains an encoder; model_type={config.model_type} has none")
    device = device or torch.device("cpu")
    families = sorted({f for f in rule_labels(train_tasks)[0] if f})
    parameters = sorted({p for p in rule_labels(train_tasks)[1] if p})
    train_targets = {key: torch.from_numpy(value).to(device)
                     for key, value in rule_targets(train_tasks, families, parameters).items()}
    test_targets = rule_targets(test_tasks, families, parameters)
    torch.manual_seed(seed)
    source = build_model(config).context_source.to(device).train()
    head = RuleHead(config.model.hidden_size, len(families), len(parameters)).to(device)
    optimizer = torch.optim.AdamW([*source.parameters(), *head.parameters()], lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        chosen = rng.choice(len(train_tasks), size=min(batch_size, len(train_tasks)), replace=False)
        batch = _batch(train_tasks, chosen, config, device)
        outputs = head(source(batch), _key_mask(source, batch))
        loss = _losses(outputs, {k: v[torch.from_numpy(chosen).to(device)] for k, v in train_targets.items()})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    source.eval()
    predictions: dict[str, list[np.ndarray]] = {k: [] for k in test_targets}
    with torch.no_grad():
        for start in range(0, len(test_tasks), batch_size):
            indices = np.arange(start, min(start + batch_size, len(test_tasks)))
            batch = _batch(test_tasks, indices, config, device)
            for key, logits in head(source(batch), _key_mask(source, batch)).items():
                predictions[key].append(logits.argmax(-1).cpu().numpy())
    return {"steps": steps, "train_tasks": len(train_tasks), "test_tasks": len(test_tasks),
            **{key: _score(np.concatenate(predictions[key]), test_targets[key]) for key in test_targets}}


def _key_mask(source: nn.Module, batch: dict[str, Tensor]) -> Tensor | None:
    layout = source.layout(batch)
    return None if layout is None else layout.key_mask


def _score(predicted: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    scored = target != IGNORE
    if not scored.any():
        return {"accuracy": None, "chance": None, "labels": 0}
    values, counts = np.unique(target[scored], return_counts=True)
    result = {"accuracy": float((predicted[scored] == target[scored]).mean()),
              "chance": float(counts.max() / scored.sum()), "labels": int(scored.sum()), "classes": len(values)}
    if target.ndim == 2:  # colour images: every shown colour of a task right
        rows = scored.any(1)
        result["tasks_all_right"] = float(((predicted == target) | ~scored).all(1)[rows].mean())
    return result


REPRESENTABILITY_FILE = "representability.json"


def representability_run(run_dir: str | Path, steps: int) -> list[str]:
    """`etrm analyze RUN --representability STEPS`: `representability` on the run's config and
    its split (training tasks with labels, held-out tasks) -> RUN_DIR/representability.json; the
    lines it prints."""
    from etrm.core.config import config_from_yaml
    from etrm.models.run_data import split_of

    run_dir = Path(run_dir)
    config = config_from_yaml(run_dir / "config.yaml")
    if config.model_type != "etrm":
        return [f"representability: does not apply (model_type={config.model_type} has no encoder)"]
    split = split_of(config)
    train, test = [t for t in split.train if t.rule], [t for t in split.test if t.rule]
    if not train or not test:
        return ["representability: does not apply (its tasks have no rule labels)"]
    result = representability(config, train, test, steps=steps)
    (run_dir / REPRESENTABILITY_FILE).write_text(json.dumps(result, indent=1))
    lines = [f"representability ({key}): held-out accuracy {part['accuracy']:.3f} (chance {part['chance']:.3f}, "
             f"{part['labels']} labels)" for key, part in result.items()
             if isinstance(part, dict) and part.get("accuracy") is not None]
    return [*lines, f"wrote {run_dir / REPRESENTABILITY_FILE}"]
