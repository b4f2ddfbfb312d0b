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
from etrm.data.leaks import check_evaluated_tasks, evaluated_leak_summary
from etrm.data.tasks import Task
from etrm.data.tensors import to_torch
from etrm.eval.ttt import TASK_SLOT, adapt, task_groups
from etrm.eval.voting import pass_at_k, rank_of_truth, vote
from etrm.models.decoder import ACTModel
from etrm.models.flops import task_test_time_flops
from etrm.models.oracle import ORACLE_KEYS_BUFFER
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER
from etrm.models.run_data import RunData, run_data, split_of

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


def score(records: list[dict[str, Any]], augmented: AugmentedTasks, num_steps: int,
          config: RunConfig | None = None, ttt: TTTConfig | None = None) -> tuple[dict, dict]:
    """Vote and score gathered records -> (eval summary with per-task results, submission).

    With the run's `config` the summary has `test_time_flops_per_task`, the mean over tasks of
    `etrm.models.flops.task_test_time_flops` for the predictions the records hold (and the
    adaptation, when `ttt` adapted the tasks)."""
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
    floor = copy_input_floor(augmented.tasks)
    seconds = {r["task_index"]: r["test_time_seconds"] for r in records if "test_time_seconds" in r}
    demo_fit = _demo_fit(records, augmented, per_task)
    summary = {
        **{f"pass@{k}": pass_at_k(ranks_per_task, k) for k in PASS_AT},
        # what copying each test input solves on these tasks (any k): the floor a score is read against
        "copy_input_floor": floor,
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
        **({} if config is None else
           {"test_time_flops_per_task": mean_test_time_flops(config, augmented, records, ttt)}),
        **demo_fit,
        "per_task": per_task,
    }
    return summary, submission


def mean_test_time_flops(config: RunConfig, augmented: AugmentedTasks, records: list[dict[str, Any]],
                         ttt: TTTConfig | None = None) -> float:
    """Mean over the tasks of `etrm.models.flops.task_test_time_flops`: each task's predictions in
    `records` at the mean steps they ran, and its adaptation when `ttt` (steps > 0) adapted it."""
    steps: dict[int, list[int]] = {index: [] for index in range(len(augmented.tasks))}
    for record in records:
        steps[record["task_index"]].append(record["steps_run"])
    per_task = [task_test_time_flops(config, task, len(steps[index]), float(np.mean(steps[index] or [0])), ttt)
                for index, task in enumerate(augmented.tasks)]
    return float(np.mean(per_task)) if per_task else 0.0


def copy_input_floor(tasks: list[Task]) -> float | None:
    """The ARC Prize score (task mean of its tests' mean) of the trivial predictor that answers
    each test input with itself, over the tests with known outputs; None when none is known."""
    scores = []
    for task in tasks:
        known = [(grid_in, grid_out) for grid_in, grid_out in task.tests if grid_out is not None]
        if known:
            scores.append(float(np.mean([np.array_equal(grid_in, grid_out) for grid_in, grid_out in known])))
    return float(np.mean(scores)) if scores else None


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
             region_margin: int | None = None, config: RunConfig | None = None) -> dict | None:
    """Predict on every rank, vote and score on rank 0; write eval.json and submission.json there.

    Returns the summary on rank 0 and None on the other ranks. With the run's `config` the
    summary has the test-time FLOPs per task (`score`).
    """
    num_steps = num_steps or model.config.halt_max_steps
    local = predict(model, augmented, canvas_side=canvas_side, max_demos=max_demos, batch_size=batch_size,
                    runtime=runtime, num_steps=num_steps, ttt=ttt, early_stop_confidence=early_stop_confidence,
                    region_margin=region_margin)
    gathered = gather_objects(local, runtime)
    if not runtime.is_main:
        return None
    summary, submission = score([r for part in gathered for r in part], augmented, num_steps, config, ttt)
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
    from etrm.core.checkpoint import read_checkpoint
    from etrm.core.config import config_from_yaml
    from etrm.models.build import load_evaluation_weights, run_files

    checkpoint, saved_config = run_files(target, str(target))
    trained = config_from_yaml(saved_config)
    config = config_from_yaml(saved_config, overrides)
    if config.dynamic_canvas and not trained.dynamic_canvas:
        raise EtrmError(f"{checkpoint}: dynamic_canvas=true on a model trained on the fixed canvas (its attention "
                        "saw the PAD keys that the size-aware canvas masks); evaluate it with dynamic_canvas=false")
    state = read_checkpoint(checkpoint)
    table = state["model"].get(PUZZLE_TABLE_PARAMETER)
    if config.model_type == "trm" and table is None:
        raise EtrmError(f"{checkpoint}: a TRM checkpoint without '{PUZZLE_TABLE_PARAMETER}'")
    data = run_data(config, table_rows=None if table is None else table.shape[0],
                    atom_keys=state["model"].get(ORACLE_KEYS_BUFFER))
    model = data.build_model()
    load_evaluation_weights(model, state)
    # The model halts as it was trained (test-time training caps its objective there); an
    # evaluation's `halt_max_steps` only sets how many steps prediction runs (`evaluate_run`).
    model.decoder.config.halt_max_steps = trained.halt_max_steps
    if config.eval.split == "train":
        return config, model, data.training_test_pairs(config.eval.num_augmentations), checkpoint
    if config.eval.split == "validation" and not data.split.validation:
        raise EtrmError(f"{saved_config}: eval.split=validation, but the run has no validation tasks "
                        "(validation_sources is empty or nothing in it fits the canvas)")
    evaluated = data.split.validation if config.eval.split == "validation" else data.split.test
    evaluated = _without_trained_tasks(evaluated, trained, config, data)
    return config, model, data.held_out(config.eval.num_augmentations, evaluated), checkpoint


def _without_trained_tasks(evaluated: list[Task], trained: RunConfig, config: RunConfig, data: RunData) -> list[Task]:
    # The tasks the run trained on are those of its own split (its sources and leak policy); with
    # other held-out sources the split recomputed here would drop other training tasks, so the
    # evaluated tasks are checked against the trained ones, the policy as in training.
    same_split = all(getattr(trained, key) == getattr(config, key) for key in _SPLIT_KEYS)
    trained_tasks = data.split.train if same_split else split_of(trained).train
    kept, report = check_evaluated_tasks(trained_tasks, evaluated, config.leak_policy)
    print(evaluated_leak_summary(report, config.leak_policy, len(evaluated)))
    if not kept:
        raise EtrmError("every evaluated task overlaps the run's training tasks: nothing left to evaluate")
    return kept


# The config keys that decide a run's split (`etrm.models.run_data.split_of`).
_SPLIT_KEYS = ("train_sources", "test_sources", "canvas_side", "max_train_groups", "max_eval_groups", "leak_policy",
               "validation_sources", "max_validation_groups")


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
                           batch_size=config.eval.batch_size, runtime=runtime, out_dir=out_dir,
                           num_steps=config.halt_max_steps, ttt=config.ttt,
                           early_stop_confidence=config.eval.early_stop_confidence,
                           region_margin=canvas_region_margin(config), config=config)
        if summary is not None:
            print(f"{config.eval.split} tasks: {summary['num_tasks']}, pass@1 {summary['pass@1']:.3f}, "
                  f"pass@2 {summary['pass@2']:.3f}, exact match {summary['exact_match'] or 0:.3f}, "
                  f"token accuracy {summary['token_accuracy'] or 0:.3f}, "
                  f"{summary['test_time_flops_per_task'] / 1e9:.3g} test-time GFLOPs per task; "
                  f"wrote {out_dir / 'eval.json'}")
        return summary
    finally:
        distributed.shutdown(runtime)
