"""Where a process runs: device, rank and world size for one process or a torchrun job (NCCL on
GPU, gloo on CPU), the collectives the loop needs, and the autocast of that device.

Kept out of the model files: models never see torch.distributed.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from etrm.core.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    """Where this process runs and which rank of how many it is."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    in_process_group: bool = False  # launched by torchrun: `shutdown` leaves the group

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def autocast_for(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; plain float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def select_device(preference: str) -> torch.device:
    """`auto` takes CUDA when present; `cuda` without a GPU is an error, not a silent fallback."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is available")
    if preference == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


# How long a collective may wait for the slowest rank. Evaluation ends in one gather of every
# rank's records, and with test-time training a rank can finish its tasks long before another:
# NCCL's default (10 minutes) would kill such a run at its very end.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=2)


def init_runtime(preference: str) -> Runtime:
    """Join the torchrun process group when launched by torchrun (one process included: then the
    group exists, and every collective is skipped), else run as a single process."""
    device = select_device(preference)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if "TORCHELASTIC_RUN_ID" not in os.environ and world_size == 1:
        return Runtime(device)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return Runtime(device, dist.get_rank(), dist.get_world_size(), in_process_group=True)


def shutdown(runtime: Runtime) -> None:
    if runtime.in_process_group and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module, runtime: Runtime) -> None:
    """Every rank starts from rank 0's weights and buffers."""
    if runtime.distributed:
        for tensor in list(model.parameters()) + list(model.buffers()):
            dist.broadcast(tensor.data, src=0)


def sum_gradients(model: nn.Module, runtime: Runtime) -> None:
    """Sum gradients over ranks before clipping, so clipping sees the global gradient.

    Dense gradients are all-reduced. Sparse ones (the puzzle embedding) are all-gathered: every
    rank holds one gradient row per looked-up sample, the same count on every rank.
    """
    if not runtime.distributed:
        return
    for param in model.parameters():
        grad = param.grad
        if grad is None:
            continue
        if grad.is_sparse:
            grad = grad.coalesce() if grad.is_coalesced() else grad
            indices = [torch.empty_like(grad._indices()) for _ in range(runtime.world_size)]
            values = [torch.empty_like(grad._values()) for _ in range(runtime.world_size)]
            dist.all_gather(indices, grad._indices().contiguous())
            dist.all_gather(values, grad._values().contiguous())
            param.grad = torch.sparse_coo_tensor(torch.cat(indices, 1), torch.cat(values), grad.shape)
        else:
            dist.all_reduce(grad)


def sum_over_ranks(values: dict[str, torch.Tensor], runtime: Runtime) -> dict[str, torch.Tensor]:
    """All-reduce a dict of scalar tensors (one collective for all of them)."""
    if not runtime.distributed or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([values[k].double() for k in keys])
    dist.all_reduce(stacked)
    return dict(zip(keys, stacked, strict=True))


def gather_objects(obj: object, runtime: Runtime) -> list[object]:
    """Every rank's object, on every rank (evaluation results)."""
    if not runtime.distributed:
        return [obj]
    gathered: list[object] = [None] * runtime.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def agree(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's value of `flag`, on every rank."""
    if not runtime.distributed:
        return flag
    value = torch.tensor([float(flag)], device=runtime.device)
    dist.broadcast(value, src=0)
    return bool(value.item())
