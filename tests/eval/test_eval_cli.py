"""`etrm eval RUN_DIR ...` on a finished run, as a user runs it."""

from __future__ import annotations

import json

import pytest

from etrm.core.errors import EtrmError
from etrm.data import load_tasks
from etrm.eval.evaluate import load_for_eval


def test_etrm_eval_writes_eval_and_submission(finished_eval_run, etrm_cli, tmp_path):
    for name in ("eval.json", "submission.json"):
        (finished_eval_run / name).unlink(missing_ok=True)
    result = etrm_cli("eval", str(finished_eval_run), "eval.num_augmentations=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((finished_eval_run / "eval.json").read_text())
    submission = json.loads((finished_eval_run / "submission.json").read_text())
    assert summary["num_tasks"] == 3 == len(submission)
    assert summary["num_predictions"] == summary["num_test_inputs"]  # one augmentation each
    assert sum(len(entries) for entries in submission.values()) == summary["num_test_inputs"]
    assert "pass@2" in result.stdout


def test_etrm_eval_out_dir_and_train_split(finished_eval_run, etrm_cli, tmp_path):
    out = tmp_path / "elsewhere"
    result = etrm_cli("eval", str(finished_eval_run / "checkpoint.pt"), "eval.num_augmentations=1", "eval.split=train",
                      f"eval.out_dir={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "eval.json").read_text())
    assert summary["num_tasks"] == 4  # the run's max_train_groups
    # The training split: the first ARC-AGI-1 training tasks that fit the 6x6 canvas (none of the
    # small ones overlaps the evaluation set), each answered once per test input.
    training = [t for t in load_tasks("arc1:training") if t.fits(6)][:4]
    submission = json.loads((out / "submission.json").read_text())
    assert {task_id: len(entries) for task_id, entries in submission.items()} == {t.id: len(t.tests) for t in training}


def test_etrm_eval_of_a_missing_run_is_one_line(etrm_cli, tmp_path):
    result = etrm_cli("eval", str(tmp_path / "nothing"), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etrm: error:"), result.stderr


def test_etrm_eval_with_a_misspelt_key_is_one_line(finished_eval_run, etrm_cli, tmp_path):
    result = etrm_cli("eval", str(finished_eval_run), "eval.num_augmentation=1", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("etrm: error:"), result.stderr
    assert "num_augmentation" in lines[0]


def test_etrm_eval_on_validation_tasks(finished_eval_run):
    # The run trained on the first 4 fitting ARC-AGI-1 training tasks: of the first 6 as validation
    # tasks, those 4 are left out by the evaluation's leak check, the other 2 evaluated.
    _, _, augmented, _ = load_for_eval(finished_eval_run, ["eval.split=validation", "validation_sources=arc1:training",
                                                           "max_validation_groups=6"])
    assert [t.id for t in augmented.tasks] == [t.id for t in load_tasks("arc1:training") if t.fits(6)][4:6]
    with pytest.raises(EtrmError, match="no validation tasks"):
        load_for_eval(finished_eval_run, ["eval.split=validation"])
