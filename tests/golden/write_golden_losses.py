"""Write tests/golden/losses.json: the per-step training losses of tiny seeded CPU runs, one per
training path (TRM and ETRM on the persistent carry, the per-batch modes, the size-aware canvas,
the rule oracle).

`tests/test_golden_losses.py` replays the same runs and compares; a change of the numbers a run
computes (a refactor that is not one) fails it. Run from the repository root, single-threaded, at
a commit that holds this script unchanged: `OMP_NUM_THREADS=1 python tests/golden/write_golden_losses.py`;
it stores that commit, and the test's docstring names it.

Each run starts from the run schema's defaults (`preset=default`, which sets nothing) and writes
out every setting its training steps read (`SETTINGS`, then the case's own `CASES[name]`), so a
preset retuned (cpu-demo, overfit-cpu, ...) or a schema default changed cannot move the numbers.
The keys the steps never read (evaluation, test-time training, logging and cadence, the outer
loop's) are listed in `NOT_READ`; the test checks that the two lists cover the schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STEPS = 6  # training steps (batches) per run

# Every setting the training steps read (Trainer.__init__, train_step, the sampler, the model, the
# optimisers): the tests' tiny run (a 6x6 canvas, hidden 32, 3 ACT steps) with the run's own
# optimiser (Adam-atan2, warmup, clipping, EMA) and halting exploration on.
SETTINGS: dict[str, object] = {
    "preset": "default",
    "model_type": "etrm",
    "seed": 0,
    "device": "cpu",
    "compile": False,
    # data
    "data_dir": "",
    "train_sources": "arc1:training",
    "test_sources": "arc1:evaluation",
    "canvas_side": 6,
    "dynamic_canvas": False,
    "dynamic_canvas_margin": 1,
    "dynamic_canvas_keys": "region",
    "max_demos": 10,
    "leave_one_out": True,
    "context_includes_query_prob": 0.0,
    "context_includes_query_decay_steps": 0,
    "max_train_groups": 4,
    "max_eval_groups": 3,
    "validation_sources": "",
    "max_validation_groups": None,
    "leak_policy": "drop",
    "augment": True,
    "translate": True,
    "augmentations_per_task": 2,
    # optimisation
    "max_steps": STEPS,
    "global_batch_size": 8,
    "optimizer": "adam_atan2",
    "lr": 1e-3,
    "lr_schedule": "constant",
    "lr_warmup_steps": 2,
    "lr_min_ratio": 0.0,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "grad_clip_norm": 1.0,
    "encoder_lr_scale": 1.0,
    "puzzle_emb_lr": 1e-2,
    "puzzle_emb_weight_decay": 0.1,
    "ema_rate": 0.99,
    # halting
    "halt_max_steps": 3,
    "halt_exploration_prob": 0.5,
    "halt_loss_weight": 0.5,
    "train_mode": "persistent",
    # decoder initialisation
    "load_pretrained_decoder": "",
    "freeze_decoder_steps": 0,
    "pretrained_h_cycles": None,
    "pretrained_l_cycles": None,
    "init_weights_from": "",
    # the decoder
    "model.hidden_size": 32,
    "model.num_heads": 2,
    "model.expansion": 4.0,
    "model.num_layers": 2,
    "model.h_cycles": 2,
    "model.l_cycles": 2,
    "model.context_len": 16,
    "model.rope_theta": 10000.0,
    "model.place_embedding": False,
    "model.place_grid_edges": False,
    # the encoder (ETRM)
    "encoder.type": "standard",
    "encoder.num_layers": 1,
    "encoder.hidden_size": 32,
    "encoder.num_heads": 2,
    "encoder.expansion": 4.0,
    "encoder.pooling": "mean",
    "encoder.kl_weight": 1e-4,
    "encoder.variational": False,
    "encoder.num_inducing": 8,
    "encoder.h_cycles": 1,
    "encoder.l_cycles": 2,
    "encoder.pair_tokens": "separate",
    "encoder.pair_positions": "sequence",
    "encoder.cell_positions": "sequence",
    "encoder.place_drop_prob": 0.0,
}

# Schema keys the training steps never read: the run's name and place, the outer loop (Trainer.run:
# resume, background batches, time limit, cadence, tracker, progress bar), the verdict, evaluation,
# test-time training. The script calls Trainer.train_step directly, so none of them reaches it.
NOT_READ = frozenset({
    "phase", "project_name", "run_name", "run_dir", "resume", "tracker", "progress", "data_workers", "max_minutes",
    "log_every", "checkpoint_every", "eval_every", "diagnostics_every", "diagnostics_tasks",
    "diagnostics_augmentations", "final_eval", "overfit_pass_accuracy", "generalisation_pass_em",
    "eval.num_augmentations", "eval.batch_size", "eval.split", "eval.periodic_splits", "eval.out_dir",
    "eval.early_stop_confidence",
    "ttt.steps", "ttt.lr", "ttt.params", "ttt.lora_rank", "ttt.objective", "ttt.augment", "ttt.tasks_per_batch",
    "ttt.act_steps", "ttt.grad_clip", "ttt.context_parameterisation", "ttt.seed",
})

# Synthetic tasks labelled with their rules (tests/models/test_oracle.py): an augmentation would
# change the rule a label names, so the oracle trains and evaluates without any.
_SYNTH = {"train_sources": "synth:iid:train:0:24:6", "test_sources": "synth:iid:test:0:6:6", "augment": False,
          "translate": False, "eval.num_augmentations": 1}

# Each case: what it sets on top of SETTINGS, and the path it pins.
CASES: dict[str, dict[str, object]] = {
    "trm": {"model_type": "trm"},  # persistent carry, fixed canvas, puzzle embedding
    "etrm": {"model_type": "etrm"},  # persistent carry, fixed canvas, standard encoder
    "etrm-per-batch": {"model_type": "etrm", "train_mode": "per_batch"},
    "etrm-per-batch-encode-once": {"model_type": "etrm", "train_mode": "per_batch_encode_once"},
    # Size-aware canvas with 2 ACT steps: every sample of the persistent carry halts at step 2, so
    # batches 0, 2 and 4 enter it, and batch 4 mixes regions of side 5 and 6 (with 3 steps batches
    # 0 and 3 enter, every region of side 5): how the decoder runs a batch of mixed regions (its
    # groups of region, each on its own square, put back in order) is pinned too.
    "etrm-size-aware": {"model_type": "etrm", "dynamic_canvas": True, "halt_max_steps": 2},
    "trm-size-aware": {"model_type": "trm", "dynamic_canvas": True, "halt_max_steps": 2},
    "oracle": {"model_type": "oracle", **_SYNTH},
}


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if value == "":
        return "''"
    return str(value)


def settings(case: str) -> dict[str, object]:
    """Every setting of `case` that its training steps read (and any other it sets)."""
    return {**SETTINGS, **CASES[case]}


def overrides(case: str) -> list[str]:
    """The full command line of `case` (without run_dir): `preset=default` and every setting."""
    return [f"{key}={_text(value)}" for key, value in settings(case).items()]


def config(case: str, run_dir: str):
    from etrm.core.config import load_config

    return load_config([*overrides(case), f"run_dir={run_dir}"])


def resolved(case: str, run_dir: str = "unused") -> dict[str, object]:
    """The values the resolved config of `case` holds for its settings."""
    from omegaconf import OmegaConf

    composed = OmegaConf.structured(config(case, run_dir))
    return {key: OmegaConf.select(composed, key) for key in settings(case)}


def losses(case: str, run_dir: str) -> dict[str, list[float]]:
    """The loss of each of the first STEPS training steps of `case` (as the trainer returns it: the
    metric sum that metrics.jsonl divides by the batch's samples; in the per-batch modes the mean per
    supervised sample and supervision step, times the batch size) and the optimiser steps each took."""
    from etrm.core.distributed import Runtime
    from etrm.data.tensors import to_torch
    from etrm.train.loop import Trainer

    torch.set_num_threads(1)
    run_config = config(case, run_dir)
    trainer = Trainer(run_config, Runtime(torch.device("cpu")))
    values, optimizer_steps = [], []
    for step in range(STEPS):
        metrics = trainer.train_step(to_torch(trainer.sampler.batch(step, run_config.global_batch_size)))
        trainer.state.add(metrics)
        values.append(float(metrics["loss"]))
        optimizer_steps.append(int(metrics["optimizer_steps"]) if "optimizer_steps" in metrics else 1)
    return {"losses": values, "optimizer_steps": optimizer_steps}


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--", Path(__file__).name], capture_output=True,
                             text=True, cwd=HERE).stdout.strip()
    if changed:
        sys.exit(f"{Path(__file__).name} differs from commit {commit}: commit it first, so the numbers name "
                 "the script that wrote them")
    golden: dict[str, object] = {"commit": commit, "steps": STEPS, "cases": {}}
    with tempfile.TemporaryDirectory() as run_dir:  # the steps write nothing there; the config needs one
        for case in CASES:
            golden["cases"][case] = {"overrides": overrides(case), "config": resolved(case, run_dir),
                                     **losses(case, run_dir)}
            print(case, json.dumps(golden["cases"][case]["losses"]), golden["cases"][case]["optimizer_steps"])
    (HERE / "losses.json").write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
