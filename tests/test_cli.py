"""The `etrm data ...` and `etrm train` command lines, run as a user would: a subprocess of `python -m etrm`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from etrm.cli import main, preset_purpose
from etrm.core.config import CONFIG_DIR, available_presets
from etrm.data import load_tasks


def _etrm(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "etrm", *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def _assert_one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("etrm: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def arc1_training():
    return load_tasks("arc1:training")


def test_stats_json_matches_load_tasks(arc1_training, tmp_path):
    result = _etrm("data", "stats", "--source", "arc1:training", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert stats["tasks"] == len(arc1_training) == 400
    assert stats["demos"] == sum(len(t.demos) for t in arc1_training) == 1302
    assert stats["test_inputs"] == sum(len(t.tests) for t in arc1_training) == 416
    assert stats["max_demos_per_task"] == max(len(t.demos) for t in arc1_training)


def test_stats_in_process_and_plain_text(capsys):
    assert main(["data", "stats", "--source", "arc1:evaluation", "--json", "--canvas", "10"]) == 0
    stats = json.loads(capsys.readouterr().out)
    tasks = load_tasks("arc1:evaluation")
    assert (stats["tasks"], stats["demos"], stats["test_inputs"]) == (400, 1363, 419)
    assert stats["tasks_fitting_canvas"] == sum(max(max(g.shape) for g in t.grids()) <= 10 for t in tasks)
    assert main(["data", "stats", "--source", "arc1:evaluation"]) == 0
    text = capsys.readouterr().out
    assert "1363" in text and "419" in text


def _write_bad_kaggle(folder: Path) -> Path:
    prefix = folder / "broken"
    good = [[1, 2], [3, 4]]
    task = {"train": [{"input": good, "output": [[1, 2], [3]]}], "test": [{"input": good}]}
    Path(f"{prefix}_challenges.json").write_text(json.dumps({"t0000001": task}))
    Path(f"{prefix}_solutions.json").write_text(json.dumps({"t0000001": [good]}))
    return prefix


def test_bad_kaggle_prefix_is_one_line_exit_2(tmp_path):
    line = _assert_one_line_error(_etrm("data", "stats", "--source", f"kaggle:{tmp_path / 'missing'}"))
    assert "missing_challenges.json" in line
    prefix = _write_bad_kaggle(tmp_path)
    line = _assert_one_line_error(_etrm("data", "stats", "--source", f"kaggle:{prefix}", "--json"))
    assert f"{prefix}_challenges.json" in line and "t0000001" in line and "ragged" in line


def test_bad_source_in_process(tmp_path, capsys):
    prefix = _write_bad_kaggle(tmp_path)
    assert main(["data", "stats", "--source", f"arc1:training,kaggle:{prefix}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("etrm: error: ") and "t0000001" in err


def test_show_writes_a_png(tmp_path):
    out = tmp_path / "figures" / "task.png"
    result = _etrm("data", "show", "--source", "arc1:training", "--task", "007bbfb7", "--out", str(out))
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert str(out) in result.stdout


def test_show_a_task_with_an_unknown_test_output(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    grid = [[1, 0], [0, 2]]
    (folder / "open.json").write_text(
        json.dumps({"train": [{"input": grid, "output": grid}], "test": [{"input": grid}]})
    )
    out = tmp_path / "open.png"
    assert main(["data", "show", "--source", f"dir:{folder}", "--task", "open", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_show_unknown_task_is_one_line_exit_2(tmp_path):
    out = tmp_path / "x.png"
    line = _assert_one_line_error(
        _etrm("data", "show", "--source", "arc1:training", "--task", "nosuchid", "--out", str(out))
    )
    assert "nosuchid" in line
    assert not out.exists()


def test_check_split_with_overlap_exits_1():
    result = _etrm("data", "check-split", "--train", "arc1:training", "--test", "arc1:evaluation", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["overlapping_tasks"] >= 1
    assert len(report["pairs"]) >= report["overlapping_tasks"]
    assert {p["held_out"] for p in report["pairs"]} and all(
        set(p) == {"held_out", "training"} for p in report["pairs"]
    )
    assert len({p["held_out"] for p in report["pairs"]}) == report["overlapping_tasks"]


def test_check_split_without_overlap_exits_0(tmp_path):
    # A pair can only match a pair of the same grid shapes, up to transposition (a dihedral
    # transform at most swaps height and width): training tasks made of 1x29 and 2x29 grids cannot
    # overlap a held-out set without a grid of those shapes, whatever their colours.
    shapes = {(1, 29), (29, 1), (2, 29), (29, 2)}
    assert not any(g.shape in shapes for t in load_tasks("arc1:evaluation") for g in t.grids())
    row = list(range(10)) * 2 + list(range(9))
    for name, grid_in, grid_out in (("thin", [row], [row[::-1]]), ("band", [row, row[::-1]], [row[::-1], row])):
        task = {"train": [{"input": grid_in, "output": grid_out}] * 2, "test": [{"input": grid_in, "output": grid_out}]}
        (tmp_path / f"{name}.json").write_text(json.dumps(task))
    result = _etrm("data", "check-split", "--train", f"dir:{tmp_path}", "--test", "arc1:evaluation", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["overlapping_tasks"] == 0 and report["pairs"] == []


def test_check_split_text_output(capsys):
    assert main(["data", "check-split", "--train", "arc1:training", "--test", "arc1:evaluation"]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith("held-out ") for line in lines[:-1])
    held_out = {line.split()[1] for line in lines[:-1]}
    assert int(lines[-1].split()[0]) == len(held_out)


def test_show_writes_exactly_the_path_given(tmp_path):
    out = tmp_path / "no_suffix"
    assert main(["data", "show", "--source", "arc1:training", "--task", "007bbfb7", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert not Path(f"{out}.png").exists()


def test_show_into_a_directory_is_one_line_exit_2(tmp_path):
    line = _assert_one_line_error(
        _etrm("data", "show", "--source", "arc1:training", "--task", "007bbfb7", "--out", str(tmp_path))
    )
    assert str(tmp_path) in line
    assert not Path(f"{tmp_path}.png").exists()


def test_console_script():
    script = Path(sys.executable).with_name("etrm")
    if not script.is_file():
        pytest.skip(f"no console script at {script} (package not installed in this environment)")
    result = subprocess.run(
        [str(script), "data", "stats", "--source", "arc1:evaluation", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["test_inputs"] == 419


def test_every_preset_yaml_is_global_with_a_purpose():
    paths = sorted((CONFIG_DIR / "preset").glob("*.yaml"), key=lambda p: p.stem)
    assert [p.stem for p in paths] == available_presets() and "overfit-cpu" in available_presets()
    for path in paths:
        assert path.read_text().splitlines()[0] == "# @package _global_", path.name
        purpose = preset_purpose(path)
        assert purpose and not purpose.startswith("#") and "\n" not in purpose, path.name
    assert preset_purpose(CONFIG_DIR / "preset" / "overfit-cpu.yaml") == (
        "Phase 1 at CPU size: can the model memorise 32 tasks?")


def test_train_help_lists_the_presets_with_their_purpose(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--print-config" in out
    listed = {line.split()[0] for line in out.split("presets (preset=NAME):", 1)[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")}
    assert listed == set(available_presets())
    flat = " ".join(out.split())  # the help wraps long purposes over several lines
    assert "overfit-cpu Phase 1 at CPU size: can the model memorise 32 tasks?" in flat
    assert "cpu-demo The main job at laptop size:" in flat


def test_print_config_resolves_without_running(tmp_path):
    result = _etrm("train", "--print-config", "preset=overfit-cpu", "lr=3e-4", "encoder.num_layers=3",
                   f"run_dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = OmegaConf.create(result.stdout)
    assert (config.preset, config.phase, config.lr, config.encoder.num_layers) == ("overfit-cpu", "overfit", 3e-4, 3)
    assert config.run_dir == str(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []  # no run directory, no runs/, nothing written


def test_print_config_reports_a_bad_key_as_one_line(tmp_path):
    line = _assert_one_line_error(_etrm("train", "--print-config", "preset=overfit-cpu", "nosuchkey=1", cwd=tmp_path))
    assert "nosuchkey" in line
    assert list(tmp_path.iterdir()) == []
