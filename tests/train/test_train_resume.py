"""Checkpoints hold the whole train state, so a killed run resumes exactly (facts section 6,
bug 9); they load without executing code, and a failed write never damages the last one."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch

from etrm.core import checkpoint as checkpoint_module
from etrm.core.checkpoint import CheckpointReadError, read_checkpoint, write_checkpoint
from etrm.models import run_data
from etrm.models.build import build_model
from etrm.train.loop import train
from etrm.train.metrics import read_metrics

COMPARED = ("loss", "lm_loss", "q_halt_loss", "token_accuracy", "exact_match", "q_halt_accuracy",
            "mean_act_steps", "halted_samples", "grad_norm", "encoder_grad_share", "lr")


def _assert_same_training(a_dir, b_dir, from_step: int = 0) -> None:
    a, b = read_metrics(a_dir, "train"), read_metrics(b_dir, "train")
    assert [r["step"] for r in a] == [r["step"] for r in b]
    compared = 0
    for ra, rb in zip(a, b, strict=True):
        if ra["step"] <= from_step:
            continue
        compared += 1
        for key in COMPARED:
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-6), (ra["step"], key)
    assert compared > 0
    state_a, state_b = read_checkpoint(a_dir / "checkpoint.pt"), read_checkpoint(b_dir / "checkpoint.pt")
    assert state_a["step"] == state_b["step"]
    for part in ("model", "ema"):
        assert state_a[part].keys() == state_b[part].keys()
        for key in state_a[part]:
            torch.testing.assert_close(state_a[part][key], state_b[part][key], rtol=1e-6, atol=1e-6)
    eval_a = json.loads((a_dir / "eval.json").read_text())
    eval_b = json.loads((b_dir / "eval.json").read_text())
    assert eval_a == eval_b


def _eager_to_halt(monkeypatch) -> None:
    # q_halt > 0 from the start, so only the random exploration (a drawn minimum step count)
    # keeps slots running: halting, and with it the whole run, depends on the torch RNG.
    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        with torch.no_grad():
            model.decoder.q_head.bias[0] = 2.0
        return model

    monkeypatch.setattr(run_data, "build_model", build)  # what Trainer builds its model with


@pytest.mark.parametrize("canvas", ["dynamic_canvas=false", "dynamic_canvas=true"])
def test_resume_mid_log_window_is_exact(canvas, tiny_config, tmp_path, monkeypatch, killed_then_resumed):
    # log_every=3, checkpoint_every=2, killed during step 6: the resume starts at step 4, in the
    # middle of the window 4..6, so the saved metric sums and window count matter too. With a
    # size-aware canvas the carry also holds each slot's region.
    _eager_to_halt(monkeypatch)
    extra = ("max_steps=8", "log_every=3", "checkpoint_every=2", "halt_exploration_prob=0.5", "halt_max_steps=4",
             canvas)
    train(tiny_config(tmp_path / "whole", *extra))
    halted = [r["halted_samples"] for r in read_metrics(tmp_path / "whole", "train")]
    assert any(count % 8 for count in halted)  # slots halted at different steps: the RNG mattered
    killed_then_resumed(tmp_path / "killed", *extra)
    _assert_same_training(tmp_path / "whole", tmp_path / "killed")


def _wait_for_steps(process: subprocess.Popen, run_dir, min_step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the run ended before it could be killed; raise max_steps"
        records = read_metrics(run_dir, "train") if (run_dir / "metrics.jsonl").is_file() else []
        if (run_dir / "checkpoint.pt").is_file() and records and records[-1]["step"] >= min_step:
            return
        time.sleep(0.02)
    raise AssertionError("the run did not reach its first checkpoints in time")


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(etrm_cli, tiny, tmp_path):
    max_steps = 40
    extra = (f"max_steps={max_steps}", "checkpoint_every=2", "log_every=1", "halt_exploration_prob=0.5")
    killed_dir, whole_dir = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "etrm", "train", *tiny(killed_dir, *extra)], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_steps(process, killed_dir, min_step=5)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    kept = read_checkpoint(killed_dir / "checkpoint.pt")["step"]
    logged = read_metrics(killed_dir, "train")[-1]["step"]
    assert 2 <= kept <= logged < max_steps

    resumed = etrm_cli("train", *tiny(killed_dir, *extra), "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {kept}" in resumed.stdout
    whole = etrm_cli("train", *tiny(whole_dir, *extra), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    records = read_metrics(killed_dir, "train")
    assert [r["step"] for r in records] == list(range(1, max_steps + 1))  # no step logged twice
    _assert_same_training(whole_dir, killed_dir)
    leftovers = [p.name for p in killed_dir.iterdir() if p.name.startswith(".checkpoint")]
    assert not leftovers or all(p.endswith(".tmp") for p in leftovers)


def test_checkpoint_holds_only_plain_data(finished_run):
    state = torch.load(finished_run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"step", "model", "ema", "optimizers", "carry", "rng", "sums", "history", "config"} <= set(state)
    assert state["carry"] is not None and state["carry"]["z_H"].shape[0] == 8


class Payload:
    """A class instance: unpickling it means running code from the file."""

    def __init__(self):
        self.value = 1


def test_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 1, "model": {}, "extra": Payload()}, path)
    with pytest.raises(CheckpointReadError) as caught:
        read_checkpoint(path)
    assert str(path) in str(caught.value)


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"step": 1, "x": Exploit()}, protocol=2))
    with pytest.raises(CheckpointReadError):
        read_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0.5, 0.1, 0.0])
def test_a_truncated_checkpoint_is_a_read_error(finished_run, tmp_path, keep):
    data = (finished_run / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointReadError) as caught:
        read_checkpoint(path)
    assert len(str(caught.value).splitlines()) == 1


def test_a_missing_checkpoint_is_a_read_error(tmp_path):
    with pytest.raises(CheckpointReadError):
        read_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_an_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch, error):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, {"step": 1, "weights": torch.ones(3)})
    real_save = torch.save

    def failing_save(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)  # bytes reach the temporary file, then the write dies
        raise error

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(type(error)):
        write_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = read_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_a_partial_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    write_checkpoint(path, {"step": 1})

    def half_save(obj, file, *args, **kwargs):
        file.write(b"PK\x03\x04 partial")
        raise OSError("killed mid-write")

    monkeypatch.setattr(checkpoint_module.torch, "save", half_save)
    with pytest.raises(OSError):
        write_checkpoint(path, {"step": 2})
    monkeypatch.undo()
    assert read_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_resume_trains_what_the_original_run_trained(finished_run, capsys):
    # The tiny run was made from preset=cpu-demo with overrides; resuming it by its directory
    # alone gives that configuration back, and another preset is refused, not silently dropped.
    from etrm.cli import main

    original = (finished_run / "config.yaml").read_text()
    assert main(["train", f"run_dir={finished_run}", "resume=true", "--print-config"]) == 0
    assert capsys.readouterr().out == original.replace("resume: false", "resume: true", 1)
    assert main(["train", f"run_dir={finished_run}", "resume=true", "preset=overfit-cpu", "--print-config"]) == 2
    error = capsys.readouterr().err
    assert "preset=cpu-demo" in error and "preset=overfit-cpu" in error and len(error.strip().splitlines()) == 1
