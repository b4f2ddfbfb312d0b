"""Optimisers, the learning-rate schedule (a pure function of the step) and EMA weights."""

from __future__ import annotations

import math

import torch
from adam_atan2_pytorch import AdamAtan2
from torch import nn

from etrm.core.config import RunConfig
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER, SparseSignSGD, dense_parameters


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, schedule: str = "constant",
          min_ratio: float = 0.0) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warmup, then constant or cosine.

    Warmup reaches `base_lr` at step `warmup_steps - 1`; the cosine then decays to
    `base_lr * min_ratio` at the last step (`total_steps - 1`).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(1, total_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizers(model: nn.Module, config: RunConfig) -> list[torch.optim.Optimizer]:
    """The dense optimiser (Adam-atan2 or AdamW; encoder params at `encoder_lr_scale`) and, for
    TRM, sign-SGD over the puzzle-embedding table. Each param group records its `lr_scale`."""
    dense = dense_parameters(model)
    sparse = [p for n, p in model.named_parameters() if n not in dense]
    encoder = [p for n, p in dense.items() if n.startswith("context_source.encoder")]
    decoder = [p for n, p in dense.items() if not n.startswith("context_source.encoder")]
    groups = [{"params": decoder, "lr_scale": 1.0, "name": "decoder"}]
    if encoder:
        groups.append({"params": encoder, "lr_scale": config.encoder_lr_scale, "name": "encoder"})
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adam_atan2":
        # a=1: the reference applies lr * atan2(m_hat, sqrt(v_hat)); the package's default a=1.27
        # would scale every step by 1.27.
        dense_optimizer = AdamAtan2(groups, lr=config.lr, betas=betas, weight_decay=config.weight_decay, a=1.0,
                                    b=1.0)
    else:
        dense_optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=betas, weight_decay=config.weight_decay)
    optimizers: list[torch.optim.Optimizer] = [dense_optimizer]
    if sparse:
        optimizers.append(SparseSignSGD(sparse, lr=config.puzzle_emb_lr, weight_decay=config.puzzle_emb_weight_decay))
        optimizers[-1].param_groups[0]["lr_scale"] = config.puzzle_emb_lr / config.lr
    return optimizers


def set_learning_rate(optimizers: list[torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]


class EMA:
    """Exponential moving average of the dense parameters, for evaluation (TRM's rate 0.999).

    As in the TRM reference, the puzzle-embedding table is not averaged: evaluation reads it as
    trained (an averaged table lags the rows sign-SGD just moved, and at ARC-AGI-1 scale its
    shadow alone would be ~1.8 GB updated every step). Buffers are fixed and not averaged either.
    """

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.shadow = {name: param.detach().clone() for name, param in dense_parameters(model).items()}
        # What older checkpoints also averaged: the table and the (fixed) float buffers.
        self.not_averaged = {PUZZLE_TABLE_PARAMETER, *(name for name, _ in model.named_buffers())}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a saved shadow; entries older checkpoints also averaged (the table, buffers) are
        skipped, anything else unknown or missing is an error."""
        unknown = sorted(set(state) - set(self.shadow) - self.not_averaged)
        missing = sorted(set(self.shadow) - set(state))
        if unknown or missing:
            raise KeyError(f"EMA state does not match the model: unknown {unknown[:3]}, missing {missing[:3]}")
        for key, value in self.shadow.items():
            value.copy_(state[key])

    def weights_for(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full state dict for `model` with the averaged float weights."""
        return {**model.state_dict(), **self.shadow}
