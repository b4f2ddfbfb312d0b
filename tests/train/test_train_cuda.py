"""What only a CUDA GPU can check (marked `cuda`: skipped with the reason elsewhere, run by
`pytest -m cuda`, which `benchmarks/gpu_check.sh` does on a GPU machine): bf16 autocast against
the float32 TRM reference, the pinned-memory batch path, torchrun with NCCL, and a checkpoint
written on CUDA resumed on the CPU. torch.compile against eager on CUDA is
test_train_act.py's compile test, whose CUDA setups carry the same mark.
"""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch

from etrm.core.checkpoint import read_checkpoint
from etrm.core.distributed import autocast_for
from etrm.data.tensors import to_torch
from etrm.models import load_trm_checkpoint
from etrm.train.metrics import read_metrics

pytestmark = pytest.mark.cuda
CUDA = torch.device("cuda")
# bf16 keeps 8 bits of mantissa: through the recursion's cycles the logits move by a few percent
# of their range; the answer (the argmax) stays.
BF16_LOGIT_TOLERANCE = 0.05
BF16_ARGMAX_AGREEMENT = 0.99


def _reference_run(reference: dict, autocast: bool) -> list[torch.Tensor]:
    config = reference["config"]
    model = load_trm_checkpoint(reference["state_dict"], **config).eval().to(CUDA)
    batch = {"inputs": reference["inputs"].to(CUDA), "puzzle_identifiers": reference["puzzle_identifiers"].to(CUDA),
             "labels": torch.zeros_like(reference["inputs"]).to(CUDA)}
    carry, logits = model.initial_carry(batch), []
    with torch.no_grad(), autocast_for(CUDA) if autocast else torch.autocast("cuda", enabled=False):
        for _ in range(config["halt_max_steps"]):
            carry, outputs = model(carry, batch)
            logits.append(outputs["logits"].float())
    return logits


def test_float32_on_cuda_reproduces_the_reference(reference_fixture):
    reference = reference_fixture("trm_reference_small.pt")
    for step, logits in enumerate(_reference_run(reference, autocast=False)):
        torch.testing.assert_close(logits.cpu(), reference["logits"][step], atol=1e-3, rtol=0)


def test_bf16_autocast_stays_within_its_tolerance_of_the_float32_reference(reference_fixture):
    reference = reference_fixture("trm_reference_small.pt")
    for step, logits in enumerate(_reference_run(reference, autocast=True)):
        expected = reference["logits"][step].to(CUDA)
        spread = expected.max() - expected.min()
        assert (logits - expected).abs().max() <= BF16_LOGIT_TOLERANCE * spread, f"ACT step {step}"
        agreement = (logits.argmax(-1) == expected.argmax(-1)).float().mean()
        assert agreement >= BF16_ARGMAX_AGREEMENT, f"ACT step {step}: argmax agreement {agreement:.3f}"


def test_pinned_non_blocking_batches_equal_plain_copies():
    generator = np.random.default_rng(0)
    batch = {"inputs": generator.integers(0, 12, (4, 36), dtype=np.uint8),
             "labels": generator.integers(0, 12, (4, 36), dtype=np.uint8),
             "demo_mask": generator.random((4, 3)) > 0.5, "region_side": np.array([3, 6, 2, 5])}
    pinned, plain = to_torch(batch, CUDA, pin_memory=True), to_torch(batch, CUDA)
    torch.cuda.synchronize()
    for key in batch:
        assert pinned[key].device.type == "cuda" and torch.equal(pinned[key], plain[key]), key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_with_nccl_trains_and_evaluates(etrm_cli, tiny, tmp_path):
    # One process: the NCCL group is joined and left (a GPU machine with one GPU can check no more).
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "1", "--master-addr", "127.0.0.1",
                "--master-port", str(_free_port()), "-m", "etrm")
    result = etrm_cli("train", *tiny(tmp_path / "run", "device=cuda", "max_steps=4"), launcher=launcher, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-5000:]
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["num_tasks"] == 3


def test_a_checkpoint_written_on_cuda_resumes_on_the_cpu(etrm_cli, tiny, tmp_path):
    run = tmp_path / "run"
    first = etrm_cli("train", *tiny(run, "device=cuda", "max_steps=3", "checkpoint_every=3", "final_eval=false"))
    assert first.returncode == 0, first.stderr[-5000:]
    assert read_checkpoint(run / "checkpoint.pt")["step"] == 3
    resumed = etrm_cli("train", *tiny(run, "device=cpu", "max_steps=6", "checkpoint_every=3", "resume=true"))
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert [r["step"] for r in read_metrics(run, "train")] == list(range(1, 7))
    state = read_checkpoint(run / "checkpoint.pt")
    assert state["step"] == 6 and all(v.device.type == "cpu" for v in state["model"].values())
