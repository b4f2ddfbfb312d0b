"""A 2-process torchrun job on CPU (gloo) trains exactly like one process with the same global
batch: the gradient is summed over ranks before clipping (facts section 6, bug 11), the loss is
divided by the global batch, and the evaluation splits its items over the ranks without losing
or repeating any."""

from __future__ import annotations

import json
import socket

import pytest

from etrm.train.metrics import read_metrics


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_torchrun_two_ranks_matches_one_process(etrm_cli, tiny, tmp_path):
    steps = 4
    overrides = ["halt_exploration_prob=0", f"max_steps={steps}", "grad_clip_norm=1.0"]
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port()), "-m", "etrm")
    ranks = etrm_cli("train", *tiny(tmp_path / "A", *overrides), launcher=launcher, cwd=tmp_path)
    assert ranks.returncode == 0, (
        "torchrun with 2 gloo ranks on CPU failed (if the sandbox cannot start gloo, this is the "
        f"place that says so):\n{ranks.stdout[-3000:]}\n{ranks.stderr[-5000:]}")
    single = etrm_cli("train", *tiny(tmp_path / "B", *overrides), cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-5000:]

    a, b = read_metrics(tmp_path / "A", "train"), read_metrics(tmp_path / "B", "train")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, steps + 1))
    for ra, rb in zip(a, b, strict=True):
        for key in ("loss", "lm_loss", "q_halt_loss", "token_accuracy", "grad_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-5), (ra["step"], key)
    # clipping was active (grad norm above 1), so per-rank clipping would have changed the losses
    assert max(r["grad_norm"] for r in b) > 1.0

    eval_a = json.loads((tmp_path / "A" / "eval.json").read_text())
    eval_b = json.loads((tmp_path / "B" / "eval.json").read_text())
    for key in ("num_tasks", "num_test_inputs", "num_predictions"):
        assert eval_a[key] == eval_b[key], key
    assert eval_a["num_tasks"] == 3
    assert set(eval_a["per_task"]) == set(eval_b["per_task"])
    submission_a = json.loads((tmp_path / "A" / "submission.json").read_text())
    submission_b = json.loads((tmp_path / "B" / "submission.json").read_text())
    assert {k: len(v) for k, v in submission_a.items()} == {k: len(v) for k, v in submission_b.items()}
