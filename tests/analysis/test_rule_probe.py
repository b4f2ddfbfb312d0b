"""The rule probe: known answers on synthetic contexts, the labels of rules, and `etrm analyze`
on a tiny trained synthetic ETRM run."""

import json
import math
import shutil

import numpy as np
import pytest

from etrm.analysis.probe import PROBE_FILE, probe_run, rule_labels, rule_probe
from etrm.analysis.report import write_report
from etrm.cli import main
from etrm.core.config import load_config
from etrm.data.tasks import Task
from etrm.train.loop import train

GRID = np.zeros((2, 2), dtype=np.uint8)


def _task(rule, shows_colour_1=False):
    demo = GRID + 1 if shows_colour_1 else GRID
    return Task("t", [(demo, demo)], [(GRID, GRID)], rule=rule)


def test_separable_contexts_are_told_apart():
    # Five Gaussian clusters, centres ~3 sigma apart in each of 32 dimensions: linearly separable.
    rng = np.random.default_rng(0)
    centres = 3 * rng.normal(size=(5, 32))
    contexts = np.concatenate([centre + rng.normal(size=(20, 32)) for centre in centres])
    labels = [f"class{k}" for k in range(5) for _ in range(20)]
    result = rule_probe(contexts, labels)
    assert result["accuracy"] > 0.95 and result["chance"] == pytest.approx(0.2)
    assert (result["classes"], result["tasks"], result["folds"]) == (5, 100, 5)


def test_random_contexts_are_at_chance():
    # Labels independent of the contexts: each held-out prediction is right with probability about
    # p = 1/K (no classifier beats the class frequencies without signal), so the accuracy over N
    # tasks is near p within a few binomial standard errors sqrt(p (1 - p) / N); 4 of them here.
    rng = np.random.default_rng(1)
    num_tasks, num_classes = 400, 4
    contexts = rng.normal(size=(num_tasks, 64))
    labels = [f"class{k}" for k in rng.integers(0, num_classes, num_tasks)]
    result = rule_probe(contexts, labels)
    p = 1 / num_classes
    tolerance = 4 * math.sqrt(p * (1 - p) / num_tasks)
    assert abs(result["accuracy"] - p) < tolerance
    assert result["accuracy"] < result["chance"] + tolerance
    assert result["chance"] == pytest.approx(max(labels.count(f"class{k}") for k in range(num_classes)) / num_tasks)


def test_small_classes_and_unlabelled_rows_are_left_out():
    rng = np.random.default_rng(2)
    labels = ["a"] * 6 + ["b"] * 5 + ["c"] * 4 + ["d"] + [None] * 3
    result = rule_probe(rng.normal(size=(len(labels), 8)), labels, min_per_class=5)
    assert (result["classes"], result["tasks"]) == (2, 11)
    assert (result["classes_dropped"], result["tasks_dropped"]) == (2, 5)
    assert result["chance"] == pytest.approx(6 / 11)
    lone = rule_probe(rng.normal(size=(len(labels), 8)), labels, min_per_class=6)
    assert lone["accuracy"] is None and lone["chance"] is None and lone["classes"] == 1
    assert "fewer than 2 classes" in lone["note"]
    with pytest.raises(ValueError, match="contexts but"):
        rule_probe(np.zeros((3, 2)), ["a", "b"])


def test_labels_of_single_rules_compositions_and_unlabelled_tasks():
    tasks = [_task((("colour_map", 3),)), _task((("dihedral", 2), ("border", 5))), _task((("crop_object", None),)),
             _task((("translate", (0, 1)),)), _task((("colour_permutation", tuple(range(10))),), shows_colour_1=True),
             _task(None)]
    families, parameters = rule_labels(tasks)
    assert families == ["colour_map", "dihedral+border", "crop_object", "translate", "colour_permutation", None]
    assert parameters == ["colour_map=3", "dihedral=2", None, "translate=(0, 1)",
                          "colour_permutation=1->1", None]  # a permutation: the image of colour 1
    # ... only where colour 1 is shown in a demo input: elsewhere no encoder could know it
    unshown = Task("u", [(GRID + 2, GRID + 3)], [(GRID, GRID)],
                   rule=(("colour_permutation", (0, 1, 3, 2, 4, 5, 6, 7, 8, 9)),))
    assert rule_labels([unshown]) == (["colour_permutation"], [None])


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory, tiny):
    run_dir = tmp_path_factory.mktemp("rule-probe") / "run"
    train(load_config(tiny(run_dir, "train_sources=synth:iid:train:0:16:6", "test_sources=synth:iid:test:0:3:6",
                           "augment=false", "translate=false", "max_steps=2", "diagnostics_every=0",
                           "run_name=probe_run")))
    return run_dir


def test_analyze_writes_the_rule_probe(synth_run, capsys):
    assert main(["analyze", str(synth_run), "--probe-sources", "synth:iid:test:1:200:6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    probes = json.loads((synth_run / PROBE_FILE).read_text())
    # tasks sharing a pair with the run's 16 training tasks are left out by the leak check
    leak_line = [line for line in lines if line.startswith("leak check:") and "evaluated tasks" in line][-1]
    left_out = 0 if "none of" in leak_line else int(leak_line.split()[2])
    assert probes["tasks_given"] == probes["tasks_labelled"] == 200 - left_out
    assert probes["tasks_from"] == "the tasks of synth:iid:test:1:200:6"
    for name in ("family", "parameter"):
        probe = probes[name]
        assert probe["classes"] >= 2 and 0 <= probe["accuracy"] <= 1 and 0 < probe["chance"] < 1
        assert probe["tasks"] + probe["tasks_dropped"] <= 200
        assert any(line.startswith(f"rule probe ({name}): accuracy {probe['accuracy']:.3f}") for line in lines)
    assert lines[-1] == f"wrote {synth_run / PROBE_FILE}"
    page = write_report(synth_run).read_text()
    assert 'id="rule-probe"' in page and f"<td>{probes['family']['accuracy']:.3f}</td>" in page


def test_the_probe_does_not_apply_without_rules_or_to_trm(synth_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(synth_run, copy)
    (copy / PROBE_FILE).unlink(missing_ok=True)
    outcome = probe_run(copy, "arc1:evaluation")  # what `etrm analyze --probe-sources` prints: its lines
    assert outcome.probes is None and not (copy / PROBE_FILE).exists()
    assert outcome.lines()[0].startswith("rule probe: does not apply (none of the tasks of arc1:evaluation")
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("model_type: etrm", "model_type: trm")
                      .replace("augmentations_per_task: 0", "augmentations_per_task: 1"))
    outcome = probe_run(copy)
    assert outcome.probes is None and "TRM" in outcome.reason and not (copy / PROBE_FILE).exists()


def test_equal_contexts_can_only_guess_the_majority_class():
    labels = ["a"] * 12 + ["b"] * 8
    result = rule_probe(np.zeros((20, 6)), labels)
    assert result["accuracy"] == pytest.approx(0.6) and result["chance"] == pytest.approx(0.6)
    assert "same" in result["note"]
