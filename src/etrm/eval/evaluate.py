"""Evaluate a model on tasks: every test input under N augmentations, inverted, voted, scored.

Works on one device without torch.distributed, and across torchrun ranks (each rank predicts
its shard of the enumeration; rank 0 gathers, votes and writes the results).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from etrm.core.config import RunConfig, TTTConfig, canvas_region_margin
from etrm.core.distributed import Runtime, autocast_for, gather_objects
from etrm.core.errors import EtrmError
from etrm.data.encoding import IGNORE_LABEL, decode_grid
from etrm.data.episodes import AugmentedTasks, EvalEnumeration
from etrm.data.tensors import to_torch
from etrm.eval.ttt import TASK_SLOT, adapt, task_groups
from etrm.eval.voting import pass_at_k, rank_of_truth, vote
from etrm.models.decoder import ACTModel
from etrm.models.oracle import ORACLE_KEYS_BUFFER
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER

PASS_AT = (1, 2, 5)


def _records(numpy_batch: dict[str, np.ndarray], labels: torch.Tensor, outputs: dict[str, torch.Tensor],
             augmented: AugmentedTasks, canvas_side: int, **extra: np.ndarray) -> list[dict[str, Any]]:
    """One record per valid row: the prediction inverted to the task's frame, and its scores."""
    predicted = outputs["logits"].argmax(-1)
    known = labels != IGNORE_LABEL
    correct = (predicted == labels) & known
    token_accuracy = (correct.sum(-1) / known.sum(-1).clamp_min(1)).cpu().numpy()
    exact = (correct.sum(-1) == known.sum(-1)).cpu().numpy()
    has_label = known.any(-1).cpu().numpy()
    predicted, q_halt = predicted.cpu().numpy(), outputs["q_halt_logits"].float().cpu().numpy()
    halt_step, steps_run = outputs["halt_step"].cpu().numpy(), outputs["steps_run"].cpu().numpy()
    records = []
    for row in np.flatnonzero(numpy_batch["valid"]):
        task_index, test_index = int(numpy_batch["task_index"][row]), int(numpy_batch["query_index"][row])
        aug_index = int(numpy_batch["augmentation_index"][row])
        augmentation = augmented.lists[task_index][aug_index]
        records.append({
            "task_index": task_index, "test_index": test_index, "augmentation_index": aug_index,
            "grid": augmentation.invert(decode_grid(predicted[row], canvas_side)),
            "q_halt": float(q_halt[row]), "halt_step": int(halt_step[row]), "steps_run": int(steps_run[row]),
            "token_accuracy": float(token_accuracy[row]) if has_label[row] else None,
            "exact": bool(exact[row]) if has_label[row] else None,
            **{key: value[row].item() for key, value in extra.items()},
        })
    return records


def predict(model: ACTModel, augmented: AugmentedTasks, *, canvas_side: int, max_demos: int, batch_size: int,
            runtime: Runtime, num_steps: int | None = None, ttt: TTTConfig | None = None,
            early_stop_confidence: float = 0.0, region_margin: int | None = None) -> list[dict[str, Any]]:
    """This rank's predictions: one record per (task, test input, augmentation).

    With test-time training (`ttt.steps > 0`) the ranks share out the tasks instead of the
    items; each group of tasks is adapted (`etrm.eval.ttt`), then its items are predicted with
    the adapted parameters, and every record carries its task's `test_time_seconds` (adaptation
    and prediction). `early_stop_confidence`: see `ACTModel.run_fixed_steps`. `region_margin`:
    a size-aware canvas (`etrm.data.canvas`).
    """
    num_steps = num_steps or model.config.halt_max_steps
    enumeration = EvalEnumeration(augmented, canvas_side=canvas_side, max_demos=max_demos,
                                  region_margin=region_margin)
    was_training = model.training
    model.eval()
    records = []
    if ttt is None or ttt.steps == 0:
        for numpy_batch in enumeration.batches(batch_size, runtime.rank, runtime.world_size):
            batch = to_torch(numpy_batch, runtime.device)
            with torch.no_grad(), autocast_for(runtime.device):
                outputs = model.run_fixed_steps(batch, num_steps, early_stop_confidence)
            records += _records(numpy_batch, batch["labels"], outputs, augmented, canvas_side)
    else:
        for group in task_groups(len(augmented.tasks), ttt, runtime.rank, runtime.world_size):
            start = time.perf_counter()
            adapter = adapt(model, augmented, group.tolist(), ttt, canvas_side=canvas_side, max_demos=max_demos,
                            region_margin=region_margin)
            group_records = []
            # how well each task's demos were fitted (per task slot), carried by its records
            fit = {f"ttt_demo_{measure}_{moment}": np.asarray(values) for moment, measures in adapter.demo_fit.items()
                   for measure, values in measures.items()}
            items = enumeration.items[np.isin(enumeration.items[:, 0], group)]
            for numpy_batch in enumeration.batches(batch_size, items=items):
                numpy_batch[TASK_SLOT] = np.searchsorted(group, numpy_batch["task_index"])  # group is sorted
                batch = to_torch(numpy_batch, runtime.device)
                with torch.no_grad(), autocast_for(runtime.device):
                    outputs = adapter.forward(batch, num_steps, early_stop_confidence)
                group_records += _records(numpy_batch, batch["labels"], outputs, augmented, canvas_side,
                                          **{key: values[numpy_batch[TASK_SLOT]] for key, values in fit.items()})
            seconds = (time.perf_counter() - start) / len(group)
            records += [{**record, "test_time_seconds": seconds} for record in group_records]
    model.train(was_training)
    return records


def score(records: list[dict[str, Any]], augmented: AugmentedTasks, num_steps: int) -> tuple[dict, dict]:
    """Vote and score gathered records -> (eval summary with per-task results, submission)."""
    by_test: dict[tuple[int, int], list[dict]] = {}
    for record in records:
        by_test.setdefault((record["task_index"], record["test_index"]), []).append(record)
    per_task, submission, ranks_per_task = {}, {}, []
    for task_index, task in enumerate(augmented.tasks):
        ranks, attempts, tests = [], [], []
        for test_index, (_, truth) in enumerate(task.tests):
            group = by_test.get((task_index, test_index), [])
            candidates = vote([(r["grid"], r["q_halt"]) for r in group])
            rank = rank_of_truth(candidates, truth)
            ranks.append(rank)
            top = [c.grid.tolist() if c.grid.size else [[0]] for c in candidates[:2]] or [[[0]]]
            attempts.append({"attempt_1": top[0], "attempt_2": top[-1]})
            tests.append({"rank_of_truth": rank, "candidates": len(candidates), "votes": len(group),
                          "top_votes": candidates[0].votes if candidates else 0})
        ranks_per_task.append(ranks)
        submission[task.id] = attempts
        per_task[task.id] = {**{f"pass@{k}": pass_at_k([ranks], k) for k in PASS_AT}, "tests": tests}
    labelled = [r for r in records if r["exact"] is not None]
    seconds = {r["task_index"]: r["test_time_seconds"] for r in records if "test_time_seconds" in r}
    demo_fit = _demo_fit(records, augmented, per_task)
    summary = {
        **{f"pass@{k}": pass_at_k(ranks_per_task, k) for k in PASS_AT},
        "num_tasks": len(augmented.tasks),
        "num_test_inputs": sum(len(t.tests) for t in augmented.tasks),
        "num_predictions": len(records),
        "exact_match": float(np.mean([r["exact"] for r in labelled])) if labelled else None,
        "token_accuracy": float(np.mean([r["token_accuracy"] for r in labelled])) if labelled else None,
        "q_halt_accuracy": float(np.mean([(r["q_halt"] > 0) == r["exact"] for r in labelled])) if labelled else None,
        "mean_act_steps": float(np.mean([r["halt_step"] for r in labelled])) if labelled else None,
        "mean_steps_run": float(np.mean([r["steps_run"] for r in records])) if records else None,
        "halt_step_histogram": _halt_step_histogram(labelled),
        "steps_run": num_steps,
        # test-time training: seconds per task, adaptation and prediction (None without it)
        "test_time_seconds_per_task": float(np.mean(list(seconds.values()))) if seconds else None,
        **demo_fit,
        "per_task": per_task,
    }
    return summary, submission


def _demo_fit(records: list[dict[str, Any]], augmented: AugmentedTasks, per_task: dict[str, dict]) -> dict:
    """How well test-time training fitted the demos, beside how the tests came out: whether a
    miss is a task whose demos were never fitted or one whose fit did not carry to its tests.

    Each task's values (`etrm.eval.ttt.adapt`'s `demo_fit`) go into its `per_task` entry; the
    summary has their means over tasks, the tasks whose every demo episode of the last step was
    exactly right, and the pass@2 of those. Empty without test-time training.
    """
    keys = [k for k in (records[0] if records else {}) if k.startswith("ttt_demo_")]
    if not keys:
        return {}
    by_task = {r["task_index"]: {k: r[k] for k in keys} for r in records}
    for task_index, values in by_task.items():
        per_task[augmented.tasks[task_index].id].update(values)
    fitted = [augmented.tasks[t].id for t, values in by_task.items() if values.get("ttt_demo_exact_last") == 1.0]
    return {**{k: float(np.mean([values[k] for values in by_task.values()])) for k in keys},
            "ttt_demos_fitted_tasks": len(fitted),
            "ttt_pass@2_of_fitted": float(np.mean([per_task[t]["pass@2"] for t in fitted])) if fitted else None}


def _halt_step_histogram(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    # Per step at which q_halt first turned positive: how many samples, and how many exactly right.
    histogram: dict[str, dict[str, float]] = {}
    for step in sorted({r["halt_step"] for r in records}):
        group = [r for r in records if r["halt_step"] == step]
        histogram[str(step)] = {"count": len(group), "exact_match": float(np.mean([r["exact"] for r in group]))}
    return histogram


def evaluate(model: ACTModel, augmented: AugmentedTasks, *, canvas_side: int, max_demos: int, batch_size: int,
             runtime: Runtime, out_dir: str | Path | None = None, num_steps: int | None = None,
             ttt: TTTConfig | None = None, early_stop_confidence: float = 0.0,
             region_margin: int | None = None) -> dict | None:
    """Predict on every rank, vote and score on rank 0; write eval.json and submission.json there.

    Returns the summary on rank 0 and None on the other ranks.
    """
    num_steps = num_steps or model.config.halt_max_steps
    local = predict(model, augmented, canvas_side=canvas_side, max_demos=max_demos, batch_size=batch_size,
                    runtime=runtime, num_steps=num_steps, ttt=ttt, early_stop_confidence=early_stop_confidence,
                    region_margin=region_margin)
    gathered = gather_objects(local, runtime)
    if not runtime.is_main:
        return None
    summary, submission = score([r for part in gathered for r in part], augmented, num_steps)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(summary, indent=1))
        (out / "submission.json").write_text(json.dumps(submission))
    return summary


def load_for_eval(target: str | Path, overrides: list[str] | tuple[str, ...] = ()
                  ) -> tuple[RunConfig, ACTModel, AugmentedTasks, Path]:
    """A run directory or checkpoint, ready to evaluate with its own saved config + `overrides`:
    (config, model on the CPU with the EMA weights when there are some, the tasks to evaluate
    under their augmentation lists, the checkpoint file).
    """
    from etrm.core.checkpoint import CHECKPOINT_NAME, read_checkpoint
    from etrm.core.config import config_from_yaml
    from etrm.models.build import load_evaluation_weights
    from etrm.models.run_data import run_data

    target = Path(target)
    checkpoint = target / CHECKPOINT_NAME if target.is_dir() else target
    saved_config = checkpoint.parent / "config.yaml"
    if not (checkpoint.is_file() and saved_config.is_file()):
        raise EtrmError(f"{target}: not a run directory or checkpoint (needs {CHECKPOINT_NAME} and config.yaml)")
    config = config_from_yaml(saved_config, overrides)
    state = read_checkpoint(checkpoint)
    table = state["model"].get(PUZZLE_TABLE_PARAMETER)
    if config.model_type == "trm" and table is None:
        raise EtrmError(f"{checkpoint}: a TRM checkpoint without '{PUZZLE_TABLE_PARAMETER}'")
    data = run_data(config, table_rows=None if table is None else table.shape[0],
                    atom_keys=state["model"].get(ORACLE_KEYS_BUFFER))
    model = data.build_model()
    load_evaluation_weights(model, state)
    if config.eval.split == "train":
        augmented = data.training_test_pairs(config.eval.num_augmentations)
    elif config.eval.split == "validation":
        if not data.split.validation:
            raise EtrmError(f"{saved_config}: eval.split=validation, but the run has no validation tasks "
                            "(validation_sources is empty or nothing in it fits the canvas)")
        augmented = data.held_out(config.eval.num_augmentations, data.split.validation)
    else:
        augmented = data.held_out(config.eval.num_augmentations)
    return config, model, augmented, checkpoint


def evaluate_run(target: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict | None:
    """`etrm eval`: evaluate a run directory or checkpoint file with its own saved config.

    Uses the EMA weights when the checkpoint has them. `overrides` may change evaluation
    settings (`eval.num_augmentations=16`, `halt_max_steps=8`, `max_eval_groups=32`, ...).
    """
    from etrm.core import distributed

    config, model, augmented, checkpoint = load_for_eval(target, overrides)
    runtime = distributed.init_runtime(config.device)
    try:
        model.to(runtime.device)
        out_dir = Path(config.eval.out_dir) if config.eval.out_dir else checkpoint.parent
        summary = evaluate(model, augmented, canvas_side=config.canvas_side, max_demos=config.max_demos,
                           batch_size=config.eval.batch_size, runtime=runtime, out_dir=out_dir, ttt=config.ttt,
                           early_stop_confidence=config.eval.early_stop_confidence,
                           region_margin=canvas_region_margin(config))
        if summary is not None:
            print(f"{config.eval.split} tasks: {summary['num_tasks']}, pass@1 {summary['pass@1']:.3f}, "
                  f"pass@2 {summary['pass@2']:.3f}, exact match {summary['exact_match'] or 0:.3f}, "
                  f"token accuracy {summary['token_accuracy'] or 0:.3f}; wrote {out_dir / 'eval.json'}")
        return summary
    finally:
        distributed.shutdown(runtime)
