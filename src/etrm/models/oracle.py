"""The oracle context: the decoder is told which program to run (an upper bound for ETRM).

A synthetic task knows its rule (`Task.rule`); its atoms (`etrm.data.synth.rule_atoms`: one
per (family, value) step, one per mapped colour of a permutation) arrive in the batch as keys
(`batch["rule_atoms"]`, in step order, 0-padded). Each atom seen in training has one learned
vector; the context is those vectors in order in the first context positions, zeros after.
An atom never seen in training reads one shared row that training never reaches (zero), as
TRM's unseen tasks read its blank row. Trained like ETRM, on the same episodes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from etrm.models.decoder import ContextOutput, ContextSource
from etrm.models.layers import trunc_normal_init_

# The buffer of known atom keys in an `ACTModel`'s state dict (read back when evaluating).
ORACLE_KEYS_BUFFER = "context_source.atom_keys"


class RuleOracle(ContextSource):
    """Context = one learned vector per rule atom, from the keys of the training tasks' atoms."""

    def __init__(self, atom_keys: Tensor, hidden_size: int, context_len: int):
        super().__init__()
        keys = torch.unique(atom_keys.long())  # sorted, for searchsorted
        self.context_len = context_len
        self.register_buffer("atom_keys", keys)
        self.atoms = nn.Embedding(len(keys) + 1, hidden_size)  # last row: an atom never trained
        with torch.no_grad():
            # The scale of a token embedding (the decoder multiplies both by sqrt(hidden)).
            trunc_normal_init_(self.atoms.weight, std=hidden_size**-0.5)
            self.atoms.weight[-1].zero_()

    def step(self, batch: dict[str, Tensor], state: Tensor | None, reset: Tensor) -> ContextOutput:
        atoms = batch["rule_atoms"].long()
        if atoms.shape[1] > self.context_len:
            raise ValueError(f"a rule of {atoms.shape[1]} atoms does not fit context_len {self.context_len}")
        index = torch.searchsorted(self.atom_keys, atoms).clamp_max(len(self.atom_keys) - 1)
        known = self.atom_keys[index] == atoms
        rows = self.atoms(torch.where(known, index, len(self.atom_keys)))
        rows = rows * (atoms != 0).unsqueeze(-1).to(rows.dtype)  # padding positions stay zero
        context = rows.new_zeros(atoms.shape[0], self.context_len, rows.shape[-1])
        context[:, : atoms.shape[1]] = rows
        return ContextOutput(context)
