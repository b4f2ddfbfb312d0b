"""Shared fixtures: where the ConceptARC copy lives (the `shared` folder beside the repository),
the one rule for data missing from it, a small ARC source with three test inputs per task, the
overrides of a tiny training run, and single-threaded torch.

Files of ../shared are optional locally (their tests skip) but required in CI: `.ci/run` sets
ETRM_REQUIRE_SHARED=1, and `require_shared_files` then fails the test instead of skipping it.

Torch runs single-threaded in tests: on a shared two-core machine OpenMP spin-waiting makes two
threads far slower than one for matrices this small.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

# A run small enough for tests: 6x6 canvas, hidden 32, four training and three held-out tasks.
TINY_OVERRIDES = (
    "preset=cpu-demo", "canvas_side=6", "max_train_groups=4", "max_eval_groups=3", "global_batch_size=8",
    "max_steps=6", "log_every=1", "checkpoint_every=3", "model.hidden_size=32", "model.num_heads=2",
    "encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1", "halt_max_steps=3",
    "tracker=none", "progress=false", "eval.num_augmentations=2", "eval.batch_size=16", "device=cpu",
    "ttt.steps=0",  # the demo's test-time training is off unless a test turns it on
)


def tiny_overrides(run_dir: str | Path, *extra: str) -> list[str]:
    return [*TINY_OVERRIDES, f"run_dir={run_dir}", *extra]


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, with the reason, where no CUDA GPU is present."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m cuda` on one: benchmarks/gpu_check.sh)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny() -> Callable[..., list[str]]:
    """tiny(run_dir, "key=value", ...) -> the override list of a tiny run."""
    return tiny_overrides

# Set (to anything but "" or "0") in CI: a test whose ../shared data is missing fails instead of skipping.
REQUIRE_SHARED = "ETRM_REQUIRE_SHARED"


def require_shared_files(what: str, *paths: Path) -> None:
    """Skip the calling test when any of `paths` (files of ../shared) is missing, or fail it when
    ETRM_REQUIRE_SHARED is set. The one place that decides; use the `require_shared` fixture
    from test modules (conftest is not importable under --import-mode=importlib)."""
    missing = [str(path) for path in paths if not Path(path).exists()]
    if not missing:
        return
    message = f"{what} not found at {', '.join(missing)} (the shared data folder beside the repository is absent)"
    if os.environ.get(REQUIRE_SHARED, "") not in ("", "0"):
        pytest.fail(f"{message}; {REQUIRE_SHARED} is set, so missing shared data is a failure", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def require_shared() -> Callable[..., None]:
    """require_shared("what", path, ...): `require_shared_files`, for test modules."""
    return require_shared_files


# The TRM reference fixtures (../shared/fixtures/README.md says what each holds). ETRM_FIXTURES
# points elsewhere: the GPU check carries copies, since ../shared does not travel there.
FIXTURES = Path(os.environ.get("ETRM_FIXTURES") or Path(__file__).resolve().parents[1].parent / "shared/fixtures")


@pytest.fixture(scope="session")
def reference_fixture() -> Callable[[str], dict]:
    """reference_fixture("trm_reference_small.pt") -> the fixture's dict, read without executing
    code; skips (fails under ETRM_REQUIRE_SHARED) when the shared folder is absent."""
    def load(name: str) -> dict:
        require_shared_files(f"the TRM reference fixture {name}", FIXTURES / name)
        return torch.load(FIXTURES / name, weights_only=True)

    return load


# ConceptARC is never copied into the repository: it sits in ../shared/data/conceptarc/.
CONCEPTARC_PREFIX = Path(__file__).resolve().parents[1].parent / "shared/data/conceptarc/arc-agi_concept"


@pytest.fixture(scope="session")
def conceptarc_prefix() -> Path:
    """The Kaggle-layout prefix of ConceptARC; skips (fails under ETRM_REQUIRE_SHARED) when the
    shared data folder is absent. Only the data-layer tests of ConceptARC itself use it."""
    challenges = CONCEPTARC_PREFIX.with_name(CONCEPTARC_PREFIX.name + "_challenges.json")
    solutions = CONCEPTARC_PREFIX.with_name(CONCEPTARC_PREFIX.name + "_solutions.json")
    require_shared_files("ConceptARC", challenges, solutions)
    return CONCEPTARC_PREFIX


# Small ARC-AGI-1 training tasks (every grid at most 6x6, none overlapping ARC-AGI-1 evaluation)
# with their pairs re-split so that the last three are test inputs: ConceptARC's shape (three
# test inputs per task) at a fraction of its size. Demos per task: 2, 3, 3, 4, 3, 2 and one lone
# demo (never held out by leave-one-out).
THREE_TEST_SOURCE_TASKS = ("0d3d703e", "25ff71a9", "6e02f1e3", "dae9d2b5", "fafffa47", "3c9b0459", "1e0a9b12")


@pytest.fixture(scope="session")
def three_test_source(tmp_path_factory) -> str:
    """A `dir:` source of seven small tasks with exactly three test inputs each (all outputs known)."""
    from etrm.data import load_tasks

    folder = tmp_path_factory.mktemp("three-test-tasks")
    by_id = {task.id: task for task in load_tasks("arc1:training")}
    for task_id in THREE_TEST_SOURCE_TASKS:
        task = by_id[task_id]
        pairs = [{"input": i.tolist(), "output": o.tolist()} for i, o in [*task.demos, *task.tests]]
        (folder / f"{task_id}-3tests.json").write_text(json.dumps({"train": pairs[:-3], "test": pairs[-3:]}))
    return f"dir:{folder}"
