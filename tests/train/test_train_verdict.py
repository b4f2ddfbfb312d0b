"""The Phase 2 verdict is read against the floor a trivial predictor reaches on the same tasks:
copying each test input (the earlier verdict passed a model that solved only that)."""

from __future__ import annotations

import json

import numpy as np

from etrm.core.config import load_config
from etrm.data.tasks import Task
from etrm.eval.evaluate import copy_input_floor
from etrm.train.verdict import verdict


def _task(name: str, same: list[bool]) -> Task:
    grid = np.arange(4, dtype=np.uint8).reshape(2, 2)
    tests = [(grid, grid.copy() if keep else grid + 1) for keep in same]
    return Task(name, [(grid, grid)], tests)


def test_copy_input_floor_is_the_task_mean_of_tests_answered_by_their_input():
    tasks = [_task("a", [True, False]), _task("b", [False]), _task("c", [True])]
    assert copy_input_floor(tasks) == (0.5 + 0.0 + 1.0) / 3
    unknown = Task("d", [], [(np.zeros((1, 1), dtype=np.uint8), None)])
    assert copy_input_floor([*tasks, unknown]) == (0.5 + 0.0 + 1.0) / 3 and copy_input_floor([unknown]) is None


def _phase2(tmp_path, pass_at_1: float, floor: float) -> dict:
    config = load_config(["preset=synth-level1", f"run_dir={tmp_path}"])
    test = {"pass@1": pass_at_1, "pass@2": pass_at_1, "exact_match": pass_at_1, "token_accuracy": 0.8,
            "num_tasks": 100, "copy_input_floor": floor}
    return verdict(config, [], {"test": test}, tmp_path)


def test_phase2_passes_only_above_the_copy_input_floor(tmp_path, capsys):
    # 6% clears the 5% bar; where copying the input already solves 6% it is no generalisation.
    assert _phase2(tmp_path, 0.06, floor=0.06)["verdict"] == "FAIL"
    out = capsys.readouterr().out
    assert "FAIL" in out and "copy-input floor 6.0%" in out
    assert _phase2(tmp_path, 0.06, floor=0.02)["verdict"] == "PASS"
    assert json.loads((tmp_path / "summary.json").read_text())["copy_input_floor"] == 0.02
    assert _phase2(tmp_path, 0.04, floor=0.0)["verdict"] == "FAIL"  # the bar still holds
