"""Step accounting from the real episodes (facts section 6, bug 6: one query per task was
assumed, ConceptARC has three, and runs stopped early without a word).

The multi-query tasks are small ARC-AGI-1 tasks re-split to three test inputs each (ConceptARC's
shape, `three_test_source` in tests/conftest.py), so nothing here needs the shared data folder.
"""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from etrm.core import distributed
from etrm.core.checkpoint import read_checkpoint
from etrm.data import load_tasks
from etrm.data.episodes import TrainSampler
from etrm.train.loop import Trainer, train
from etrm.train.metrics import read_metrics


@pytest.fixture(scope="module")
def three_test_tasks(three_test_source):
    tasks = load_tasks(three_test_source)
    assert len(tasks) >= 5 and all(len(t.tests) == 3 for t in tasks)
    assert any(len(t.demos) < 2 for t in tasks)  # a lone demo, never held out by leave-one-out
    return tasks


def _expected_episodes(tasks, leave_one_out: bool) -> int:
    count = sum(sum(output is not None for _, output in task.tests) for task in tasks)
    if leave_one_out:
        count += sum(len(task.demos) for task in tasks if len(task.demos) >= 2)
    return count


@pytest.mark.parametrize("leave_one_out", [False, True])
@pytest.mark.parametrize("global_batch", [1, 7, 32, 256])
def test_steps_per_epoch_counts_every_test_input(three_test_tasks, leave_one_out, global_batch):
    sampler = TrainSampler(three_test_tasks, canvas_side=30, max_demos=10, leave_one_out=leave_one_out, seed=0)
    expected = _expected_episodes(three_test_tasks, leave_one_out)
    assert expected > len(three_test_tasks)  # several queries per task
    assert sampler.num_episodes == expected
    assert sampler.steps_per_epoch(global_batch) == math.ceil(expected / global_batch)


def test_one_epoch_of_batches_visits_every_test_input_of_multi_test_tasks(three_test_tasks):
    small = [t for t in three_test_tasks if t.fits(6)]
    sampler = TrainSampler(small, canvas_side=6, max_demos=10, leave_one_out=False, seed=3)
    batch_size = 4
    seen = []
    for step in range(sampler.steps_per_epoch(batch_size)):
        batch = sampler.batch(step, batch_size)
        seen += list(zip(batch["task_index"].tolist(), batch["query_index"].tolist(), strict=True))
    seen = seen[: sampler.num_episodes]  # the last batch may run into the next epoch
    expected = {(t, q) for t, task in enumerate(small) for q in range(len(task.tests))}
    assert sorted(seen) == sorted(expected)


def test_a_run_performs_exactly_max_steps_optimiser_steps(three_test_source, three_test_tasks, tiny_config, tmp_path,
                                                          capsys):
    max_steps = 7
    config = tiny_config(tmp_path / "run", f"train_sources={three_test_source}", "max_train_groups=null",
                         f"max_steps={max_steps}", "checkpoint_every=100", "final_eval=false")
    trainer = Trainer(config, distributed.Runtime(torch.device("cpu")))
    trainer.run()
    out = capsys.readouterr().out
    fitting = [t for t in three_test_tasks if t.fits(config.canvas_side)]
    episodes = _expected_episodes(fitting, config.leave_one_out)
    steps_per_epoch = math.ceil(episodes / config.global_batch_size)
    assert re.search(rf"training episodes: {episodes} \({steps_per_epoch} steps per epoch", out), out
    assert max_steps > steps_per_epoch  # the run goes past one epoch and still does not stop early

    records = read_metrics(config.run_dir, "train")
    assert [r["step"] for r in records] == list(range(1, max_steps + 1))
    state = read_checkpoint(trainer.checkpoint_path)
    assert state["step"] == max_steps
    adam_steps = {float(s["step"]) for s in state["optimizers"][0]["state"].values()}
    assert adam_steps == {float(max_steps)}  # every dense parameter was updated exactly max_steps times


def test_finished_run_logs_every_step_and_saves_the_last(finished_run):
    records = read_metrics(finished_run, "train")
    state = read_checkpoint(finished_run / "checkpoint.pt")
    assert [r["step"] for r in records] == list(range(1, 7))  # the tiny run: max_steps=6, log_every=1
    assert state["step"] == 6
    assert [h["step"] for h in state["history"]] == [r["step"] for r in records]


def test_train_function_returns_the_summary(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "run", "max_steps=2", "final_eval=false")
    summary = train(config)
    assert summary["steps"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2]
