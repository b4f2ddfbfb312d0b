"""TRM's context: one learned vector per puzzle identifier, trained with sign-SGD on touched rows.

The table is an ``nn.Embedding(sparse=True)``, so a backward pass yields a sparse gradient that
names only the rows of the batch. Keep its weight out of the dense optimiser and give it to
`SparseSignSGD` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from etrm.models.decoder import ContextOutput, ContextSource

# The table's name in an `ACTModel`'s state dict: trained by sign-SGD, kept out of the dense
# optimiser and of the EMA.
PUZZLE_TABLE_PARAMETER = "context_source.table.weight"


def dense_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter but TRM's puzzle-embedding table: what the dense optimiser, gradient
    clipping and the EMA see."""
    return {name: param for name, param in model.named_parameters() if name != PUZZLE_TABLE_PARAMETER}


class PuzzleEmbedding(ContextSource):
    """Context = the row of `batch["puzzle_identifiers"]` in a zero-initialised table (num_ids,
    emb_ndim), zero-padded to context_len * hidden_size and viewed (B, context_len, hidden_size)."""

    def __init__(self, num_ids: int, emb_ndim: int, context_len: int, hidden_size: int):
        super().__init__()
        if emb_ndim > context_len * hidden_size:
            raise ValueError(
                f"emb_ndim {emb_ndim} does not fit in context_len {context_len} x hidden {hidden_size}"
            )
        self.context_len = context_len
        self.hidden_size = hidden_size
        self.table = nn.Embedding(num_ids, emb_ndim, sparse=True)
        nn.init.zeros_(self.table.weight)

    def step(self, batch: dict[str, Tensor], state: Tensor | None, reset: Tensor) -> ContextOutput:
        return ContextOutput(self.rows_to_context(self.table(batch["puzzle_identifiers"].long())))

    def rows_to_context(self, rows: Tensor) -> Tensor:
        """(B, emb_ndim) embedding rows -> (B, context_len, hidden) context, zero-padded."""
        rows = F.pad(rows, (0, self.context_len * self.hidden_size - rows.shape[-1]))
        return rows.view(-1, self.context_len, self.hidden_size)


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay, applied only to the rows named by a sparse gradient:
    ``row = row * (1 - lr * weight_decay) - lr * sign(summed row gradient)``. Rows absent from the
    gradient do not change (no decay either)."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-2, weight_decay: float = 0.1):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                if not param.grad.is_sparse:
                    raise ValueError("SparseSignSGD needs sparse gradients (use nn.Embedding(sparse=True))")
                grad = param.grad.coalesce()  # sums the gradients of repeated rows
                rows, row_grads = grad.indices()[0], grad.values()
                updated = param[rows] * (1 - lr * weight_decay) - lr * torch.sign(row_grads)
                param.index_copy_(0, rows, updated.to(param.dtype))
        return loss
