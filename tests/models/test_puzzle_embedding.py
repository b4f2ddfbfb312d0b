"""TRM's puzzle embedding (the context of the baseline) and its sparse sign-SGD."""

import pytest
import torch

from etrm.models import PuzzleEmbedding, SparseSignSGD


def test_context_is_the_row_zero_padded_to_context_positions():
    embedding = PuzzleEmbedding(num_ids=3, emb_ndim=6, context_len=2, hidden_size=4)
    assert embedding.table.weight.eq(0).all()  # zero init
    with torch.no_grad():
        embedding.table.weight.copy_(torch.arange(18.0).view(3, 6))
    context = embedding({"puzzle_identifiers": torch.tensor([2, 0])})
    assert context.shape == (2, 2, 4)
    assert context[0].flatten().tolist() == [12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 0.0, 0.0]
    assert context[1].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0]


def test_rejects_an_embedding_larger_than_the_context():
    with pytest.raises(ValueError, match="does not fit"):
        PuzzleEmbedding(num_ids=3, emb_ndim=9, context_len=2, hidden_size=4)


def test_sign_sgd_updates_only_touched_rows_by_the_sign_of_the_summed_gradient():
    torch.manual_seed(0)
    lr, weight_decay = 1e-2, 0.1
    embedding = PuzzleEmbedding(num_ids=5, emb_ndim=2, context_len=1, hidden_size=2)
    with torch.no_grad():
        embedding.table.weight.normal_()
    before = embedding.table.weight.detach().clone()
    optimizer = SparseSignSGD(embedding.parameters(), lr=lr, weight_decay=weight_decay)

    # Row 3 appears twice with gradients [+2, -3] and [-1, +1]: summed [+1, -2] -> signs [+1, -1]
    # (per-duplicate signs would cancel). Row 1 gets [0, +4] -> signs [0, +1].
    ids = torch.tensor([3, 3, 1])
    coefficients = torch.tensor([[2.0, -3.0], [-1.0, 1.0], [0.0, 4.0]])
    context = embedding({"puzzle_identifiers": ids})
    (context.view(3, 2) * coefficients).sum().backward()
    assert embedding.table.weight.grad.is_sparse
    optimizer.step()

    after = embedding.table.weight.detach()
    for row in (0, 2, 4):
        assert torch.equal(after[row], before[row])
    decay = 1 - lr * weight_decay
    torch.testing.assert_close(after[3], before[3] * decay - lr * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(after[1], before[1] * decay - lr * torch.tensor([0.0, 1.0]))


def test_sign_sgd_refuses_dense_gradients():
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    weight.grad = torch.ones(3, 2)
    with pytest.raises(ValueError, match="sparse"):
        SparseSignSGD([weight]).step()
