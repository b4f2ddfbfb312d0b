"""The experiment record: every field of the guide's template is filled from real tiny runs."""

import re

import pytest

from etrm.core.config import load_config
from etrm.core.errors import EtrmError
from etrm.train.loop import train
from etrm.workflow.record import write_record

TEMPLATE_FIELDS = ["### Experiment:", "**Date**:", "**Goal**:", "**Changes from baseline**:", "**Configuration**:",
                   "- Encoder:", "- Pre-trained decoder:", "- halt_max_steps:", "- halt_exploration_prob:",
                   "- Other hyperparams:", "**Phase 1 Results (Overfit -", "- Train accuracy:",
                   "- Steps to converge:", "- Issues encountered:", "- Status:", "**Phase 2 Results (Full dataset)**:",
                   "- Train EM:", "- Test EM:", "- Pass@2:", "- Avg steps:", "**Analysis**:", "**WandB Run**:"]


# Template lines whose content follows on the next lines.
HEADINGS = {"**Configuration**:", "**Phase 2 Results (Full dataset)**:", "**Analysis**:"}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny):
    root = tmp_path_factory.mktemp("record")
    phase1, phase2 = root / "overfit", root / "full"
    train(load_config(tiny(phase1, "phase=overfit", "run_name=tiny_overfit", "eval_every=3",
                           "eval.periodic_splits=train", "diagnostics_every=2", "halt_exploration_prob=0.3")))
    train(load_config(tiny(phase2, "phase=generalisation", "run_name=tiny_full")))
    return phase1, phase2


def test_every_template_field_is_filled_from_the_runs(two_runs):
    phase1, phase2 = two_runs
    text = write_record(phase1, phase2).read_text()
    for field in TEMPLATE_FIELDS:
        line = next((line for line in text.splitlines() if line.startswith(field)), None)
        assert line is not None, field
        if field not in HEADINGS:
            assert line.rstrip() != field.rstrip(), f"{field} left empty"
        assert "<" not in line, f"{field} still holds a template placeholder: {line}"
    assert "### Experiment: tiny_overfit" in text
    assert "- halt_exploration_prob: 0.3" in text
    assert re.search(r"- Train accuracy: \d+\.\d%", text)
    assert re.search(r"- Test EM: \d+\.\d% \(pass@1 after voting, 3 held-out tasks", text)
    assert "halt_exploration_prob=0.3" in text.split("**Changes from baseline**:")[1].splitlines()[0]


def test_figures_in_the_record_match_the_run_summary(two_runs):
    import json

    phase1, phase2 = two_runs
    text = write_record(phase1, phase2).read_text()
    accuracy = json.loads((phase1 / "summary.json").read_text())["train_eval"]["token_accuracy"]
    assert f"- Train accuracy: {100 * accuracy:.1f}%" in text
    pass2 = json.loads((phase2 / "summary.json").read_text())["test_eval"]["pass@2"]
    assert f"- Pass@2: {100 * pass2:.1f}%" in text


def test_a_run_directory_without_summary_is_refused(tmp_path):
    with pytest.raises(EtrmError, match="not a finished run"):
        write_record(tmp_path)
