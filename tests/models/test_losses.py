"""Stablemax cross-entropy and the ACT loss, against hand computations."""

import math

import torch

from etrm.models.losses import IGNORE_LABEL, act_loss, stablemax_cross_entropy


def stablemax_by_hand(logits: list[float], label: int) -> float:
    s = [x + 1 if x >= 0 else 1 / (1 - x) for x in logits]
    return -math.log(s[label] / sum(s))


def bce_with_logits_by_hand(logit: float, target: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


def test_stablemax_cross_entropy_matches_hand_values_and_ignores():
    logits = torch.tensor([[[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]]])
    labels = torch.tensor([[2, IGNORE_LABEL]])
    loss = stablemax_cross_entropy(logits, labels)
    assert loss.dtype == torch.float64 and loss.shape == (1, 2)
    assert math.isclose(loss[0, 0].item(), -math.log(3 / 4.5), rel_tol=1e-12)
    assert math.isclose(loss[0, 0].item(), stablemax_by_hand([-1.0, 0.0, 2.0], 2), rel_tol=1e-12)
    assert loss[0, 1].item() == 0.0


def test_act_loss_matches_hand_computation():
    # Sample 0: tokens [label 0 predicted, label 2 mispredicted, ignored] -> not exact.
    # Sample 1: both valid tokens predicted -> exact. Sample 2: no valid label -> only in the loss.
    logits = torch.tensor([
        [[2.0, 0.0, -1.0], [1.0, 0.5, 0.0], [0.0, 0.0, 0.0]],
        [[-2.0, 1.5, 0.0], [0.0, -1.0, 4.0], [1.0, 1.0, 1.0]],
        [[0.3, 0.2, 0.1], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ])
    labels = torch.tensor([[0, 2, IGNORE_LABEL], [1, 2, IGNORE_LABEL], [IGNORE_LABEL] * 3])
    q_halt = torch.tensor([0.5, 1.0, -2.0])
    halted = torch.tensor([True, True, True])
    steps = torch.tensor([3, 1, 2], dtype=torch.int32)
    outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": torch.zeros(3)}
    total, metrics = act_loss(outputs, labels, halted, halt_loss_weight=0.5, steps=steps)

    lm = (stablemax_by_hand([2.0, 0.0, -1.0], 0) + stablemax_by_hand([1.0, 0.5, 0.0], 2)) / 2
    lm += (stablemax_by_hand([-2.0, 1.5, 0.0], 1) + stablemax_by_hand([0.0, -1.0, 4.0], 2)) / 2
    # Sample 2 has no valid token: it counts as "exactly correct" for the halting target.
    q = sum(bce_with_logits_by_hand(logit, target) for logit, target in [(0.5, 0.0), (1.0, 1.0), (-2.0, 1.0)])
    assert math.isclose(total.item(), lm + 0.5 * q, rel_tol=1e-6)
    assert math.isclose(metrics["lm_loss"].item(), lm, rel_tol=1e-9)
    assert math.isclose(metrics["q_halt_loss"].item(), q, rel_tol=1e-6)
    assert metrics["count"].item() == 2
    assert math.isclose(metrics["token_accuracy"].item(), 0.5 + 1.0, rel_tol=1e-6)
    assert metrics["exact_match"].item() == 1
    assert metrics["q_halt_accuracy"].item() == 1  # sample 0: q>=0 but wrong; sample 1: q>=0 and exact
    assert metrics["steps"].item() == 3 + 1
    assert all(isinstance(value, torch.Tensor) for value in metrics.values())


def test_act_loss_metrics_count_only_halted_samples_but_loss_covers_all():
    logits = torch.randn(2, 4, 5)
    labels = torch.randint(0, 5, (2, 4))
    outputs = {"logits": logits, "q_halt_logits": torch.zeros(2)}
    total_all, metrics = act_loss(outputs, labels, torch.tensor([False, True]))
    assert metrics["count"].item() == 1 and "steps" not in metrics
    total_none, metrics_none = act_loss(outputs, labels, torch.tensor([False, False]))
    assert metrics_none["count"].item() == 0
    assert torch.equal(total_all, total_none)


def test_act_loss_backpropagates_to_logits_and_q_halt():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    q_halt = torch.zeros(2, requires_grad=True)
    total, _ = act_loss({"logits": logits, "q_halt_logits": q_halt}, torch.randint(0, 4, (2, 3)),
                        torch.ones(2, dtype=torch.bool))
    total.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert q_halt.grad is not None and q_halt.grad.abs().sum() > 0
