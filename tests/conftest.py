"""Shared fixtures: where the ConceptARC copy lives (the `shared` folder beside the repository),
the overrides of a tiny training run, and single-threaded torch.

Torch runs single-threaded in tests: on a shared two-core machine OpenMP spin-waiting makes two
threads far slower than one for matrices this small.
"""

from __future__ import annotations

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
)


def tiny_overrides(run_dir: str | Path, *extra: str) -> list[str]:
    return [*TINY_OVERRIDES, f"run_dir={run_dir}", *extra]


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

# ConceptARC is never copied into the repository: it sits in ../shared/data/conceptarc/.
CONCEPTARC_PREFIX = Path(__file__).resolve().parents[1].parent / "shared/data/conceptarc/arc-agi_concept"


@pytest.fixture(scope="session")
def conceptarc_prefix() -> Path:
    """The Kaggle-layout prefix of ConceptARC; skips when the shared data folder is absent."""
    challenges = CONCEPTARC_PREFIX.with_name(CONCEPTARC_PREFIX.name + "_challenges.json")
    solutions = CONCEPTARC_PREFIX.with_name(CONCEPTARC_PREFIX.name + "_solutions.json")
    if not (challenges.is_file() and solutions.is_file()):
        pytest.skip(
            f"ConceptARC not found at {CONCEPTARC_PREFIX}_{{challenges,solutions}}.json "
            "(the shared data folder beside the repository is absent)"
        )
    return CONCEPTARC_PREFIX
