"""Shared fixtures: where the ConceptARC copy lives (the `shared` folder beside the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
