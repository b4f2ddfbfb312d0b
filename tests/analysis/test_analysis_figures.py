"""`etrm analyze`: every figure is produced from a real tiny CPU run."""

import json
import subprocess
import sys

import pytest

from etrm.analysis.figures import analyze
from etrm.errors import EtrmError
from etrm.train.config import load_config
from etrm.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    train(load_config(tiny(run_dir, "max_steps=8", "log_every=2", "eval_every=4", "diagnostics_every=2",
                           "halt_exploration_prob=0.5")))
    return run_dir


def test_every_figure_is_written(tiny_run):
    paths = analyze(tiny_run)
    names = {path.name for path in paths}
    for expected in ("training_curves.png", "halting.png", "diagnostics.png", "train_test_gap.png",
                     "context_tsne.png"):
        assert expected in names
    sheets = [name for name in names if name.startswith("predictions_")]
    assert len(sheets) == 3  # one per held-out task of the tiny run
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, path


def test_halting_inputs_are_recorded(tiny_run):
    summary = json.loads((tiny_run / "eval.json").read_text())
    histogram = summary["halt_step_histogram"]
    assert sum(bucket["count"] for bucket in histogram.values()) == summary["num_predictions"]
    train_records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in train_records if r["kind"] == "train"]
    assert all(0.0 <= r["forced_fraction"] <= 1.0 for r in train_records)


def test_cli_and_bad_directory(tiny_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "etrm", "analyze", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("etrm: error:")
    with pytest.raises(EtrmError, match="not a run directory"):
        analyze(tmp_path)
