"""Golden losses: two tiny seeded CPU runs (TRM, ETRM) must compute the losses stored in
tests/golden/losses.json, step by step, so a refactor that changes the numbers is caught.

The stored losses were written by `tests/golden/write_golden_losses.py` at commit b3c37c4, after
`tests/models/test_reference_training_step.py` had tied TRM's training step (carry, halting,
loss, every gradient, sign-SGD) to the TRM reference and `tests/train/test_train_optim.py` the
Adam-atan2 update to the reference formula. ETRM has no reference implementation: its numbers
are right in the sense that its decoder, loss, optimiser and loop are the same code the TRM
numbers tie to the reference, and its encoder's computation is pinned by the property tests of
tests/models/test_encoders.py (cropping equals masking, length groups exact, invariance to demo
order and padding, a gradient to every parameter); the golden values anchor them against drift.
Re-run the script, and name the new commit here, only for a change meant to alter the numbers.
"""

import importlib.util
import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"


def _writer():
    spec = importlib.util.spec_from_file_location("write_golden_losses", GOLDEN / "write_golden_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_tiny_run_reproduces_the_golden_losses(model_type, tmp_path):
    golden = json.loads((GOLDEN / "losses.json").read_text())
    writer = _writer()
    assert golden["overrides"] == list(writer.OVERRIDES)  # the same run as when they were written
    losses = writer.losses(model_type, str(tmp_path / "run"))
    expected = golden["losses"][model_type]
    assert len(losses) == len(expected) == writer.STEPS
    # Float32 on CPU: matmul kernels may differ slightly between machines, never by 1e-5 relative.
    assert losses == pytest.approx(expected, rel=1e-5)
    assert len(set(expected)) == len(expected)  # the steps differ: the run moved
