"""The train state: everything the loop changes besides the weights, the EMA and the optimisers.

One object (lingua's `TrainState`) with `state_dict` / `load_state_dict`, so a checkpoint holds
it whole and a resume continues exactly: the step (which is also the data position, batches
being a pure function of it), the persistent ACT carry, the metric sums of the open log
window, the logged history, the random state and the training time so far. The carry, the
random state and the sums are per rank: `local_state_dict` gives this rank's share, and
`state_dict` joins the shares of every rank in rank order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from etrm.core.distributed import Runtime
from etrm.models.decoder import ACTCarry


@dataclass
class TrainState:
    """The loop's own state; `step` counts finished batches (`Trainer.train_step` calls: optimiser steps
    in the persistent mode; see `etrm.train.loop`)."""

    step: int = 0
    carry: ACTCarry | None = None
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # metric sums of the open log window
    window_steps: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # every logged training record
    started: float = field(default_factory=time.perf_counter)  # the clock at the (possibly resumed) start
    window_start: float = field(default_factory=time.perf_counter)

    @property
    def wall_time(self) -> float:
        """Training seconds so far, across resumes."""
        return time.perf_counter() - self.started

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Count one finished step and its metric sums (kept on the device: no host sync)."""
        for key, value in metrics.items():
            self.sums[key] = self.sums.get(key, 0) + value.detach().double()
        self.step += 1
        self.window_steps += 1

    def close_window(self, record: dict[str, Any]) -> None:
        """A log record was written: keep it and start the next window."""
        self.history.append({"step": self.step, **record})
        self.sums, self.window_steps, self.window_start = {}, 0, time.perf_counter()

    def local_state_dict(self, device: torch.device) -> dict[str, Any]:
        """This rank's share: its carry, random state and metric sums."""
        return {"carry": None if self.carry is None else self.carry.state_dict(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda"
                else torch.empty(0, dtype=torch.uint8),
                "sums": {k: v.cpu() for k, v in self.sums.items()}}

    def state_dict(self, shares: list[dict[str, Any]]) -> dict[str, Any]:
        """The whole state, from every rank's `local_state_dict` (in rank order)."""
        carries = [share["carry"] for share in shares]
        return {"step": self.step, "carry": None if carries[0] is None else ACTCarry.join_state_dicts(carries),
                "rng": [s["rng"] for s in shares], "cuda_rng": [s["cuda_rng"] for s in shares],
                "sums": [s["sums"] for s in shares], "window_steps": self.window_steps, "history": self.history,
                "elapsed": self.wall_time, "world_size": len(shares)}

    def load_state_dict(self, state: dict[str, Any], runtime: Runtime) -> None:
        """Continue from `state` as rank `runtime.rank`. The carry is re-sliced for any world size;
        the random state and the open window's sums only carry over to the same world size."""
        rank, world = runtime.rank, runtime.world_size
        self.step = state["step"]
        if state["carry"] is not None:
            self.carry = ACTCarry.from_state_dict(ACTCarry.slice_state_dict(state["carry"], rank, world),
                                                  runtime.device)
        if state["world_size"] == world:
            torch.set_rng_state(state["rng"][rank])
            if runtime.device.type == "cuda" and state["cuda_rng"][rank].numel():
                torch.cuda.set_rng_state(state["cuda_rng"][rank], runtime.device)
            self.sums = {k: v.to(runtime.device) for k, v in state["sums"][rank].items()}
            self.window_steps = state["window_steps"]
        self.history = list(state["history"])
        self.started = time.perf_counter() - state["elapsed"]
