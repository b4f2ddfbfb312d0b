"""Numpy batches -> model inputs on a device. The rest of the data layer needs no torch."""

from __future__ import annotations

import numpy as np
import torch

from etrm.data.encoding import IGNORE_LABEL, PAD

TOKEN_KEYS = ("inputs", "labels", "demo_inputs", "demo_outputs")


def to_torch(batch: dict[str, np.ndarray], device: torch.device | str = "cpu",
             pin_memory: bool = False) -> dict[str, torch.Tensor]:
    """Model inputs from a numpy batch: int64 tokens, labels with PAD -> IGNORE_LABEL.

    Tokens travel as uint8 (an eighth of the bytes) and widen on the device.
    """
    tensors = {}
    for key, value in batch.items():
        tensor = torch.from_numpy(value)
        if pin_memory:
            tensor = tensor.pin_memory()
        tensor = tensor.to(device, non_blocking=pin_memory)
        if key in TOKEN_KEYS:
            tensor = tensor.long()
        if key == "labels":
            tensor = tensor.masked_fill(tensor == PAD, IGNORE_LABEL)
        tensors[key] = tensor
    return tensors
