"""Checkpoints: everything a resume needs, written atomically, read without executing code.

A checkpoint is one `torch.save` file of tensors, numbers, strings, lists and dicts only, read
back with `torch.load(weights_only=True)`: loading a file never runs code from it. It is written
to a temporary file in the same folder, flushed to disk, then renamed over the old one, so a
kill during the write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from etrm.core.errors import EtrmError

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointReadError(EtrmError):
    """A checkpoint file is missing, truncated, or holds something other than plain data."""


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically replace `path` with `state`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with `weights_only=True` (no code execution); clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointReadError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointReadError(f"{path}: refused to load (not plain tensors and data): {first}") from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise CheckpointReadError(f"{path}: unreadable or truncated checkpoint ({type(error).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointReadError(f"{path}: not a checkpoint (expected a dict)")
    return state
