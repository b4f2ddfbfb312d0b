"""The per-step ACT loss: stablemax cross-entropy on the answer plus BCE on the halting logit.

Stablemax replaces exp in softmax by s(x) = x + 1 for x >= 0 and 1 / (1 - x) for x < 0, which
grows only linearly and keeps training stable; it is computed in float64 as in TRM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from etrm.data.encoding import IGNORE_LABEL


def stablemax_log_probs(logits: Tensor) -> Tensor:
    """log(s(x_i) / sum_j s(x_j)) over the last dim, in float64."""
    x = logits.double()
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(dim=-1, keepdim=True))


def stablemax_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_LABEL) -> Tensor:
    """Per-token loss (float64, shape of `labels`), 0 where the label is `ignore_index`."""
    valid = labels != ignore_index
    log_probs = stablemax_log_probs(logits)
    picked = log_probs.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def act_loss(
    outputs: dict[str, Tensor],
    labels: Tensor,
    halted: Tensor,
    halt_loss_weight: float = 0.5,
    *,
    steps: Tensor | None = None,
    forced: Tensor | None = None,
    active: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss of one ACT step and metric sums.

    outputs: logits (B, S, V) and q_halt_logits (B,); labels (B, S) with IGNORE_LABEL for
    ignored positions (the labels of the carried samples: ``carry.current_data["labels"]``);
    halted (B,): slots that halted at this step; steps (B,): their step counts (optional);
    forced (B,): samples that exploration kept running past q_halt > 0 (optional); active (B,):
    the samples still supervised (optional, default all; the per-batch training modes pass the
    samples of their batch that have not halted yet).

    total = sum over samples of the mean token CE over their valid tokens
            + halt_loss_weight * sum over samples of BCE(q_halt, whole sequence correct).
    Every active sample is supervised; an inactive one weighs 0 in the loss and in the metrics.
    Metrics (tensor sums, no host sync) count only active samples that halted at this step and
    have at least one valid label: count, token_accuracy (sum of per-sample accuracies),
    exact_match, q_halt_accuracy, steps (only when `steps` is given); plus the detached lm_loss
    and q_halt_loss.
    """
    logits, q_halt = outputs["logits"], outputs["q_halt_logits"]
    valid = labels != IGNORE_LABEL
    valid_counts = valid.sum(-1)
    divisor = valid_counts.clamp_min(1)

    with torch.no_grad():
        correct = valid & (logits.argmax(-1) == labels)
        sequence_correct = correct.sum(-1) == valid_counts
        counted = halted & (valid_counts > 0)
        if active is not None:
            counted = counted & active
        metrics = {
            "count": counted.sum(),
            "token_accuracy": torch.where(counted, correct.sum(-1) / divisor, 0).sum(),
            "exact_match": (counted & sequence_correct).sum(),
            "q_halt_accuracy": (counted & ((q_halt >= 0) == sequence_correct)).sum(),
        }
        if steps is not None:
            metrics["steps"] = torch.where(counted, steps, 0).sum()
        if forced is not None:  # samples kept running by halting exploration
            metrics["forced_count"] = (counted & forced).sum()
            metrics["forced_exact_match"] = (counted & forced & sequence_correct).sum()

    lm_loss = stablemax_cross_entropy(logits, labels).sum(-1) / divisor
    halt_targets = sequence_correct.to(q_halt.dtype)
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, halt_targets, reduction="none")
    auxiliary = outputs.get("auxiliary_loss")  # e.g. a variational encoder's weighted KL, per sample
    if active is not None:  # `where`, not a product: an inactive sample's non-finite loss stays out
        lm_loss, q_halt_loss = torch.where(active, lm_loss, 0), torch.where(active, q_halt_loss, 0)
        auxiliary = None if auxiliary is None else torch.where(active, auxiliary, 0)
    lm_loss, q_halt_loss = lm_loss.sum(), q_halt_loss.sum()
    metrics["lm_loss"] = lm_loss.detach()
    metrics["q_halt_loss"] = q_halt_loss.detach()
    total = lm_loss + halt_loss_weight * q_halt_loss
    if auxiliary is not None:
        auxiliary = auxiliary.sum()
        metrics["auxiliary_loss"] = auxiliary.detach()
        total = total + auxiliary
    return total, metrics
