"""`etrm analyze RUN_DIR`: the figures of a run, as PNG files in RUN_DIR/figures/.

Everything is read from what the run wrote (config.yaml, metrics.jsonl, eval.json,
submission.json, checkpoint.pt); the t-SNE and prediction sheets rebuild the model or the tasks
from the saved config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from etrm.analysis.drawing import draw_grid  # noqa: E402
from etrm.core.errors import EtrmError  # noqa: E402
from etrm.train.metrics import read_metrics  # noqa: E402


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def training_curves(metrics: list[dict[str, Any]], out: Path) -> Path:
    """Loss, token accuracy, exact match, learning rate, gradient norm and the encoder's share."""
    train = [r for r in metrics if r["kind"] == "train"]
    panels = [("loss", "loss"), ("token_accuracy", "token accuracy (halted samples)"),
              ("exact_match", "exact match (halted samples)"), ("lr", "learning rate"),
              ("grad_norm", "global gradient norm"), ("encoder_grad_share", "encoder share of squared grad norm")]
    figure, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for axis, (key, title) in zip(axes.flat, panels, strict=True):
        steps, values = _series(train, key)
        axis.plot(steps, values, marker=".")
        axis.set_title(title)
        axis.set_xlabel("step")
    return _save(figure, out / "training_curves.png")


def halting(metrics: list[dict[str, Any]], eval_summary: dict[str, Any] | None, out: Path) -> Path:
    """ACT steps at halt (evaluation), accuracy by steps taken, and forced-exploration outcomes."""
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    histogram = (eval_summary or {}).get("halt_step_histogram", {})
    if histogram:
        steps = sorted(int(s) for s in histogram)
        axes[0].bar(steps, [histogram[str(s)]["count"] for s in steps])
        axes[1].bar(steps, [histogram[str(s)]["exact_match"] for s in steps])
    axes[0].set_title("step at which q_halt first > 0 (held-out)")
    axes[1].set_title("exact match by that step (held-out)")
    for axis in axes[:2]:
        axis.set_xlabel("ACT step")
    train = [r for r in metrics if r["kind"] == "train" and r.get("forced_samples") is not None]
    steps = [r["step"] for r in train]
    axes[2].plot(steps, [r["forced_exact_match"] for r in train], label="kept running by exploration")
    axes[2].plot(steps, [r["unforced_exact_match"] for r in train], label="halted on their own")
    axes[2].plot(steps, [r["forced_fraction"] for r in train], label="fraction kept running", linestyle="--")
    axes[2].set_title("exploration: exact match at halt (training)")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7)
    return _save(figure, out / "halting.png")


def diagnostics(metrics: list[dict[str, Any]], out: Path) -> Path:
    """The collapse diagnostics over training."""
    records = [r for r in metrics if r["kind"] == "diagnostics"]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    steps, retrieval = _series(records, "retrieval_accuracy")
    axes[0].plot(steps, retrieval, marker=".", label="retrieval")
    axes[0].plot(steps, [r["retrieval_chance"] for r in records], linestyle="--", label="chance")
    axes[0].set_title("task retrieval accuracy")
    axes[0].legend(fontsize=7)
    axes[1].plot(*_series(records, "cross_task_variance"), marker=".", label="cross-task")
    axes[1].plot(*_series(records, "within_task_variance"), marker=".", label="within-task")
    axes[1].set_yscale("log")
    axes[1].set_title("context variance")
    axes[1].legend(fontsize=7)
    axes[2].plot(*_series(records, "effective_rank"), marker=".")
    axes[2].set_title("effective rank of the contexts")
    for axis in axes:
        axis.set_xlabel("step")
    return _save(figure, out / "diagnostics.png")


def train_test_gap(metrics: list[dict[str, Any]], out: Path) -> Path:
    """Exact match on the training tasks and pass@1 on the held-out tasks over training."""
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(*_series([r for r in metrics if r["kind"] == "eval_train"], "exact_match"), marker="o",
              label="train exact match")
    axis.plot(*_series([r for r in metrics if r["kind"] == "eval_test"], "pass@1"), marker="o",
              label="held-out exact match (pass@1)")
    axis.plot(*_series([r for r in metrics if r["kind"] == "eval_test"], "pass@2"), marker="x",
              label="held-out pass@2")
    axis.set_xlabel("step")
    axis.set_title("train / test gap")
    axis.legend(fontsize=7)
    return _save(figure, out / "train_test_gap.png")


def context_tsne(run_dir: Path, out: Path, num_tasks: int = 12, num_augmentations: int = 6) -> Path | None:
    """t-SNE of encoder contexts for probe tasks under several augmentations, coloured by task."""
    import torch
    from sklearn.manifold import TSNE

    from etrm.eval.diagnostics import probe_contexts
    from etrm.eval.evaluate import load_for_eval
    from etrm.models.run_data import split_of

    config, model, _, _ = load_for_eval(run_dir, ["leak_policy=warn"])
    if config.model_type == "trm":
        return None
    contexts = probe_contexts(model.context_source, split_of(config).train[:num_tasks], num_augmentations,
                              config.canvas_side, config.max_demos, torch.device("cpu"), config.seed)
    tasks, augs = contexts.shape[:2]
    points = TSNE(n_components=2, perplexity=min(10, tasks * augs - 1), init="pca", random_state=0)
    embedded = points.fit_transform(contexts.reshape(tasks * augs, -1).numpy())
    figure, axis = plt.subplots(figsize=(6, 5))
    colours = plt.get_cmap("tab20")(np.repeat(np.arange(tasks) % 20, augs))
    axis.scatter(embedded[:, 0], embedded[:, 1], c=colours, s=30)
    axis.set_title(f"t-SNE of encoder contexts: {tasks} training tasks x {augs} augmentations\n"
                   "(one colour per task; tight clusters = the encoder tells tasks apart)", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    return _save(figure, out / "context_tsne.png")


def prediction_sheets(run_dir: Path, out: Path, max_tasks: int = 6) -> list[Path]:
    """For held-out tasks: demos, test input, truth and the two voted attempts, marked right/wrong."""
    from etrm.core.config import config_from_yaml
    from etrm.models.run_data import split_of

    submission_path = run_dir / "submission.json"
    if not submission_path.is_file():
        return []
    submission = json.loads(submission_path.read_text())
    config = config_from_yaml(run_dir / "config.yaml")
    tasks = {task.id: task for task in split_of(config, "warn").test if task.id in submission}
    ranked = sorted(tasks, key=lambda task_id: not _solved(tasks[task_id], submission[task_id]))
    paths = []
    for task_id in ranked[:max_tasks]:
        task = tasks[task_id]
        rows = len(task.demos) + len(task.tests)
        figure, axes = plt.subplots(rows, 4, figsize=(9, 2.2 * rows), squeeze=False)
        for axis in axes.flat:
            axis.axis("off")
        for row, (grid_in, grid_out) in enumerate(task.demos):
            draw_grid(axes[row][0], grid_in, f"demo {row} input")
            draw_grid(axes[row][1], grid_out, f"demo {row} output")
        for index, ((grid_in, truth), attempts) in enumerate(zip(task.tests, submission[task_id], strict=False)):
            row = len(task.demos) + index
            draw_grid(axes[row][0], grid_in, f"test {index} input")
            draw_grid(axes[row][1], truth, "truth")
            for column, key in ((2, "attempt_1"), (3, "attempt_2")):
                guess = np.array(attempts[key])
                right = truth is not None and guess.shape == truth.shape and np.array_equal(guess, truth)
                draw_grid(axes[row][column], guess, f"{key}: {'right' if right else 'wrong'}")
                axes[row][column].title.set_color("green" if right else "red")
        figure.suptitle(f"held-out task {task_id}")
        paths.append(_save(figure, out / f"predictions_{task_id}.png"))
    return paths


def _solved(task: Any, attempts: list[dict[str, Any]]) -> bool:
    return any(truth is not None and any(np.array_equal(np.array(a[k]), truth) for k in ("attempt_1", "attempt_2"))
               for (_, truth), a in zip(task.tests, attempts, strict=False))


def analyze(run_dir: str | Path) -> list[Path]:
    """Write every figure of a run into RUN_DIR/figures/; returns their paths."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise EtrmError(f"{run_dir}: not a run directory (no metrics.jsonl)")
    out = run_dir / "figures"
    out.mkdir(exist_ok=True)
    metrics = read_metrics(run_dir)
    eval_path = run_dir / "eval.json"
    eval_summary = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    paths = [training_curves(metrics, out), halting(metrics, eval_summary, out), diagnostics(metrics, out),
             train_test_gap(metrics, out)]
    if (run_dir / "checkpoint.pt").is_file():
        tsne = context_tsne(run_dir, out)
        paths += [tsne] if tsne else []
    paths += prediction_sheets(run_dir, out)
    return paths
