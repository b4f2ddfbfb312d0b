"""Write tests/golden/losses.json: the per-step training losses of two tiny seeded CPU runs.

`tests/test_golden_losses.py` replays the same runs and compares; a change of the numbers a run
computes (a refactor that is not one) fails it. Run from the repository root, single-threaded:
`OMP_NUM_THREADS=1 python tests/golden/write_golden_losses.py`, and name in the test the commit
it was run at.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STEPS = 6
# The tests' tiny run (tests/conftest.py TINY_OVERRIDES) with the run's own optimiser (Adam-atan2,
# warmup, clipping, EMA) and halting exploration on: every part of the step is exercised.
OVERRIDES = (
    "preset=cpu-demo", "canvas_side=6", "max_train_groups=4", "max_eval_groups=3", "global_batch_size=8",
    "model.hidden_size=32", "model.num_heads=2", "encoder.hidden_size=32", "encoder.num_heads=2",
    "encoder.num_layers=1", "halt_max_steps=3", "halt_exploration_prob=0.5", "optimizer=adam_atan2", "lr=1e-3",
    "lr_warmup_steps=2", "tracker=none", "progress=false", "device=cpu", "augmentations_per_task=2",
    f"max_steps={STEPS}",
)
MODELS = ("trm", "etrm")


def losses(model_type: str, run_dir: str) -> list[float]:
    """The loss of each of the first STEPS training steps of the tiny run."""
    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.data.tensors import to_torch
    from etrm.train.loop import Trainer

    torch.set_num_threads(1)
    config = load_config([*OVERRIDES, f"model_type={model_type}", f"run_dir={run_dir}"])
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    values = []
    for step in range(STEPS):
        metrics = trainer.train_step(to_torch(trainer.sampler.batch(step, config.global_batch_size)))
        trainer.state.add(metrics)
        values.append(float(metrics["loss"]))
    return values


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    with tempfile.TemporaryDirectory() as run_dir:  # the steps write nothing there; the config needs one
        golden = {"commit": commit, "overrides": list(OVERRIDES),
                  "losses": {model: losses(model, run_dir) for model in MODELS}}
    (HERE / "losses.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(json.dumps(golden["losses"]))


if __name__ == "__main__":
    sys.exit(main())
