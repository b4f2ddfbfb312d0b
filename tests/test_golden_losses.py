"""Golden losses: tiny seeded CPU runs, one per training path, must compute the losses stored in
tests/golden/losses.json, step by step, so a refactor that changes the numbers is caught.

The cases (`CASES` of tests/golden/write_golden_losses.py): trm and etrm (the persistent carry on
the fixed canvas), etrm-per-batch and etrm-per-batch-encode-once (`train_mode`), etrm-size-aware
and trm-size-aware (`dynamic_canvas=true`), oracle (`model_type=oracle` on synthetic tasks labelled
with their rules). Each starts from the run schema's defaults (`preset=default`) and writes out
every setting its training steps read, so retuning a preset or a schema default moves nothing;
the stored case definitions (the overrides and the resolved values) must equal the script's.

The stored losses were written by `tests/golden/write_golden_losses.py` at commit b8dbeed (c1880b6,
0debe57 and a611b14 each wrote out one new key, at its default, b8dbeed two, `init_weights_from` and
`encoder.place_drop_prob`, its numbers a611b14's bit for bit; the numbers are those of 2bec4a0
within 2.3e-7 relative: since 5b64c17 the logits come from the canvas positions alone, a matmul of
another shape, and at 0debe57 they were 2bec4a0's bit for bit). Its
trm and etrm runs are those of the earlier two-case script (the cpu-demo preset plus overrides),
now spelt out: at 2bec4a0 both definitions compute the same numbers bit for bit, within 6e-8
relative of those that script stored at b3c37c4. TRM's persistent step is tied to the
TRM reference by tests/models/test_reference_training_step.py (carry, halting, loss, every
gradient, sign-SGD) and the Adam-atan2 update to its formula by tests/train/test_train_optim.py.
The other paths have no reference implementation: their numbers are right in the sense that they
run the same decoder, loss, optimiser and loop, and their own properties are tested elsewhere
(the encoder's in tests/models/test_encoders.py, the training modes' in
tests/train/test_train_modes.py, the size-aware canvas's in tests/models/test_decoder.py and
tests/train/test_train_canvas.py, the oracle's in tests/models/test_oracle.py); the golden values
anchor them against drift. Re-run the script (committed first), and name its commit here, only
for a change meant to alter the numbers.
"""

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from etrm.core.config import RunConfig

GOLDEN = Path(__file__).resolve().parent / "golden"


def _writer():
    spec = importlib.util.spec_from_file_location("write_golden_losses", GOLDEN / "write_golden_losses.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


WRITER = _writer()
GOLDEN_LOSSES = json.loads((GOLDEN / "losses.json").read_text())


def _schema_keys(schema: type, prefix: str = "") -> set[str]:
    keys = set()
    for field in dataclasses.fields(schema):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            keys |= _schema_keys(type(default), f"{prefix}{field.name}.")
        else:
            keys.add(f"{prefix}{field.name}")
    return keys


def test_the_stored_numbers_name_the_script_commit_and_every_case():
    assert GOLDEN_LOSSES["commit"] in __doc__
    assert list(GOLDEN_LOSSES["cases"]) == list(WRITER.CASES)
    assert GOLDEN_LOSSES["steps"] == WRITER.STEPS


def test_every_schema_key_is_written_out_or_never_read_by_the_steps():
    # A new key of the run schema must be placed: in SETTINGS (then rewrite the numbers) if the
    # training steps read it, else in NOT_READ.
    pinned, not_read = set(WRITER.SETTINGS), set(WRITER.NOT_READ)
    assert not pinned & not_read
    assert pinned | not_read == _schema_keys(RunConfig)


@pytest.mark.parametrize("case", list(WRITER.CASES))
def test_tiny_run_reproduces_the_golden_losses(case, tmp_path):
    stored = GOLDEN_LOSSES["cases"][case]
    # The same run as when they were written: the same command line, resolved to the same values.
    assert stored["overrides"] == WRITER.overrides(case)
    assert stored["config"] == WRITER.resolved(case)
    run = WRITER.losses(case, str(tmp_path / "run"))
    expected = stored["losses"]
    assert len(run["losses"]) == len(expected) == WRITER.STEPS
    assert run["optimizer_steps"] == stored["optimizer_steps"]
    # Float32 on CPU: matmul kernels may differ slightly between machines, never by 1e-5 relative.
    assert run["losses"] == pytest.approx(expected, rel=1e-5)
    assert len(set(expected)) == len(expected)  # the steps differ: the run moved
