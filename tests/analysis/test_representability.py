"""Representability: the rule labels it trains on, its scores, and one tiny run end to end."""

import numpy as np
import pytest

from etrm.analysis.representability import IGNORE, _score, representability, rule_targets
from etrm.core.config import load_config
from etrm.data import load_tasks
from etrm.data.tasks import Task

GRID = np.array([[0, 1], [2, 0]], dtype=np.uint8)


def test_targets_are_the_images_of_the_shown_colours_and_the_class_indices():
    permutation = (0, 4, 3, 2, 1, 5, 6, 7, 8, 9)
    shown = Task("p", [(GRID, np.asarray(permutation, dtype=np.uint8)[GRID])], [(GRID, GRID)],
                 rule=(("colour_permutation", permutation),))
    other = Task("d", [(GRID, GRID.T)], [(GRID, GRID.T)], rule=(("dihedral", 4),))
    targets = rule_targets([shown, other], ["colour_permutation", "dihedral"], ["dihedral=4"])
    # colours 1 and 2 are shown (images 4 and 3); the others are not scored
    assert targets["colour_image"][0].tolist() == [4, 3] + [IGNORE] * 7
    assert (targets["colour_image"][1] == IGNORE).all()
    assert targets["family"].tolist() == [0, 1]
    assert targets["parameter"].tolist() == [IGNORE, 0]  # colour_permutation=1->4 is not a class given


def test_scores_count_only_known_labels_and_whole_tasks():
    target = np.array([[1, 2, IGNORE], [3, IGNORE, IGNORE], [IGNORE, IGNORE, IGNORE]])
    predicted = np.array([[1, 2, 0], [4, 0, 0], [0, 0, 0]])
    score = _score(predicted, target)
    assert score["accuracy"] == pytest.approx(2 / 3) and score["labels"] == 3
    assert score["tasks_all_right"] == pytest.approx(1 / 2)  # the third task has no scored colour
    assert _score(np.zeros(2), np.full(2, IGNORE))["accuracy"] is None


@pytest.mark.parametrize("encoder", [[], ["encoder.type=demo_cells", "model.context_len=256"]])
def test_a_tiny_run_scores_every_target(encoder):
    config = load_config(["preset=synth-level1", "model.hidden_size=16", "encoder.hidden_size=16", *encoder])
    train, test = load_tasks("synth:iid:train:0:12:8:1"), load_tasks("synth:iid:test:0:6:8:1")
    result = representability(config, train, test, steps=2, batch_size=4)
    assert result["test_tasks"] == 6 and result["colour_image"]["labels"] > 6
    assert 0 <= result["colour_image"]["accuracy"] <= 1 and result["family"]["classes"] == 1
