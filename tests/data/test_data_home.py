"""The data home: where `data:` sources (ConceptARC, which no package ships) are read from, and a
one-line error that says where it looked and how to fix it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from etrm.core.config import load_config
from etrm.core.errors import DataError
from etrm.data import load_tasks
from etrm.data.sources import DATA_DIR_VARIABLE, data_home
from etrm.models.run_data import split_of

REPO = Path(__file__).resolve().parents[2]


def test_the_data_home_is_data_dir_then_the_variable_then_the_checkout_then_a_user_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path / "from-env"))
    assert data_home(tmp_path / "given") == tmp_path / "given"
    assert data_home() == tmp_path / "from-env"
    monkeypatch.delenv(DATA_DIR_VARIABLE)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    beside = REPO.parent / "shared" / "data"
    assert data_home() == (beside if beside.is_dir() else tmp_path / "xdg" / "etrm")


def test_a_missing_data_source_names_the_variable_where_it_looked_and_where_the_files_come_from(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    with pytest.raises(DataError) as caught:
        load_tasks("arc1:training,data:conceptarc/arc-agi_concept")
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert str(tmp_path / "conceptarc" / "arc-agi_concept_challenges.json") in message
    assert DATA_DIR_VARIABLE in message and "data_dir" in message and "ConceptARC" in message
    assert "github.com/victorvikram/ConceptARC" in message


def test_a_conceptarc_preset_reads_the_data_home_given_by_data_dir(conceptarc_prefix, tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "conceptarc").mkdir(parents=True)
    for part in ("challenges", "solutions"):
        shutil.copy(f"{conceptarc_prefix}_{part}.json", home / "conceptarc" / f"arc-agi_concept_{part}.json")
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path / "elsewhere"))  # data_dir wins over the variable
    monkeypatch.chdir(tmp_path)
    split = split_of(load_config(["preset=arc10-cpu", f"data_dir={home}"]))
    assert any(task.origin.startswith(str(home)) for task in split.train)
