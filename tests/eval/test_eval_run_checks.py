"""`etrm eval` on a finished run answers for the model that was trained: its own halting caps
test-time training, tasks it trained on are not scored as held-out, and a size-aware canvas is
refused for a model that never saw one."""

from __future__ import annotations

import pytest

from etrm.core.errors import DataError, EtrmError
from etrm.data import load_tasks
from etrm.eval.evaluate import evaluate_run, load_for_eval

CANVAS = 6


def test_evaluation_steps_do_not_change_the_trained_halting(finished_eval_run, tmp_path):
    # The tiny run trained with halt_max_steps=3: an evaluation at 8 steps runs 8, but the
    # model (and so test-time training's ACT-step cap) keeps the 3 it was trained with.
    _, model, _, _ = load_for_eval(finished_eval_run, ["halt_max_steps=8"])
    assert model.config.halt_max_steps == 3
    summary = evaluate_run(finished_eval_run, ["halt_max_steps=8", f"eval.out_dir={tmp_path}"])
    assert summary["steps_run"] == 8 and summary["mean_steps_run"] == 8


def _first_fitting(source: str, count: int) -> list[str]:
    return [t.id for t in load_tasks(source) if t.fits(CANVAS)][:count]


def test_evaluated_tasks_the_run_trained_on_are_left_out(finished_eval_run, capsys):
    # The tiny run trained on the first 4 ARC-AGI-1 training tasks that fit its canvas; scored
    # as held-out tasks, the first 6 would include those 4.
    trained, evaluated = _first_fitting("arc1:training", 4), _first_fitting("arc1:training", 6)
    overrides = ["test_sources=arc1:training", "max_eval_groups=6"]
    _, _, augmented, _ = load_for_eval(finished_eval_run, overrides)
    kept = [t.id for t in augmented.tasks]
    assert kept and not set(kept) & set(trained) and set(kept) <= set(evaluated)
    assert "evaluated tasks overlap the run's training tasks" in capsys.readouterr().out
    _, _, augmented, _ = load_for_eval(finished_eval_run, [*overrides, "leak_policy=warn"])
    assert [t.id for t in augmented.tasks] == evaluated
    with pytest.raises(DataError, match="tasks overlap"):
        load_for_eval(finished_eval_run, [*overrides, "leak_policy=error"])


def test_the_run_s_own_held_out_tasks_are_all_evaluated(finished_eval_run, capsys):
    _, _, augmented, _ = load_for_eval(finished_eval_run)
    assert [t.id for t in augmented.tasks] == _first_fitting("arc1:evaluation", 3)
    assert "none of the 3 evaluated tasks overlaps" in capsys.readouterr().out


def test_size_aware_canvas_is_refused_for_a_fixed_canvas_model(finished_eval_run):
    with pytest.raises(EtrmError, match="fixed canvas"):
        load_for_eval(finished_eval_run, ["dynamic_canvas=true"])
