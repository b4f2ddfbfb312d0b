"""`etrm analyze`: every figure is produced from a real tiny CPU run."""

import json
import subprocess
import sys

import pytest

from etrm.analysis.figures import analyze
from etrm.core.config import load_config
from etrm.core.errors import EtrmError
from etrm.train.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny):
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    train(load_config(tiny(run_dir, "max_steps=8", "log_every=2", "eval_every=4", "diagnostics_every=2",
                           "halt_exploration_prob=0.5")))
    return run_dir


def test_every_figure_is_written(tiny_run):
    import matplotlib.image

    from etrm.data import load_tasks

    paths = analyze(tiny_run)
    names = {path.name for path in paths}
    for expected in ("training_curves.png", "halting.png", "diagnostics.png", "train_test_gap.png",
                     "context_tsne.png"):
        assert expected in names
    # One sheet per held-out task of the tiny run: the first 3 ARC-AGI-1 evaluation tasks fitting 6x6.
    held_out = [t.id for t in load_tasks("arc1:evaluation") if t.fits(6)][:3]
    assert {name for name in names if name.startswith("predictions_")} == {f"predictions_{i}.png" for i in held_out}
    for path in paths:
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, path
        pixels = matplotlib.image.imread(path)[..., :3]
        background = pixels[0, 0]
        drawn = (abs(pixels - background).sum(-1) > 0.1).mean()
        assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and 0.01 < drawn < 0.99, (path, drawn)


def test_halting_inputs_are_recorded(tiny_run):
    summary = json.loads((tiny_run / "eval.json").read_text())
    histogram = summary["halt_step_histogram"]
    assert histogram and set(histogram) <= {"1", "2", "3"}  # halt steps of the tiny run: halt_max_steps=3
    assert sum(bucket["count"] for bucket in histogram.values()) == summary["num_predictions"]
    weighted = sum(bucket["count"] * bucket["exact_match"] for bucket in histogram.values())
    assert weighted / summary["num_predictions"] == pytest.approx(summary["exact_match"])
    train_records = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in train_records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8]  # log_every=2
    for record in train_records:  # the forced share is the forced count over the halted samples
        assert 0 <= record["forced_samples"] <= record["halted_samples"]
        assert record["forced_fraction"] == pytest.approx(record["forced_samples"] / max(record["halted_samples"], 1))


def test_cli_and_bad_directory(tiny_run, tmp_path):
    result = subprocess.run([sys.executable, "-m", "etrm", "analyze", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.startswith("etrm: error:")
    with pytest.raises(EtrmError, match="not a run directory"):
        analyze(tmp_path)
