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


def _loss_by_hand(logits: torch.Tensor, labels: torch.Tensor, q_halt: torch.Tensor, weight: float) -> torch.Tensor:
    # The same definition as the hand computation above, written with plain tensor ops (float64):
    # stablemax s(x) = x + 1 for x >= 0 else 1 / (1 - x); per sample the mean token CE over its
    # valid labels; plus weight x BCE(q_halt, every valid token predicted).
    s = torch.where(logits >= 0, logits + 1, 1 / (1 - torch.where(logits >= 0, 0.0, logits)))
    probability = s / s.sum(-1, keepdim=True)
    valid = labels != IGNORE_LABEL
    picked = probability.gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    token_loss = torch.where(valid, -picked.log(), 0.0)
    lm = (token_loss.sum(-1) / valid.sum(-1).clamp_min(1)).sum()
    correct = ((logits.argmax(-1) == labels) | ~valid).all(-1).to(q_halt.dtype)
    bce = -(correct * torch.sigmoid(q_halt).log() + (1 - correct) * (1 - torch.sigmoid(q_halt)).log())
    return lm + weight * bce.sum()


def test_act_loss_gradients_match_the_loss_written_by_hand():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 4, (3, 5), generator=generator)
    labels[0, 1:3] = IGNORE_LABEL
    labels[1, 0] = int(logits[1, 0].argmax())  # some tokens right, the rest wrong
    q_halt = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    grads = []
    for loss in (lambda lg, q: act_loss({"logits": lg, "q_halt_logits": q}, labels, torch.ones(3, dtype=torch.bool),
                                        halt_loss_weight=0.5)[0],
                 lambda lg, q: _loss_by_hand(lg, labels, q, 0.5)):
        lg, q = logits.clone().requires_grad_(), q_halt.clone().requires_grad_()
        loss(lg, q).backward()
        grads.append((lg.grad, q.grad))
    (logits_grad, q_grad), (expected_logits_grad, expected_q_grad) = grads
    torch.testing.assert_close(logits_grad.double(), expected_logits_grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(q_grad.double(), expected_q_grad, rtol=1e-6, atol=1e-9)
    assert bool(expected_logits_grad[0, 1:3].eq(0).all())  # ignored tokens get no gradient
    assert bool(expected_logits_grad.abs().sum() > 0) and bool(expected_q_grad.abs().min() > 0)
