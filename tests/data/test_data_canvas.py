"""The size-aware canvas: each sample's region, what is written inside it, batches grouped by size."""

from __future__ import annotations

import numpy as np
import pytest

from etrm.data.augment import augmentation_list
from etrm.data.canvas import output_cut_off, region_side
from etrm.data.encoding import PAD
from etrm.data.episodes import TrainSampler, encode_episodes
from etrm.data.tasks import Task

SIDE = 30


def _grid(height: int, width: int, colour: int = 3) -> np.ndarray:
    return np.full((height, width), colour, dtype=np.uint8)


@pytest.mark.parametrize("source", ["arc1_training", "arc1_evaluation"])
def test_no_arc1_test_output_is_cut_off(source, request):
    cut = [task.id for task in request.getfixturevalue(source) for query, output in task.tests
           if output_cut_off(output, region_side(task.demos, query, SIDE), SIDE)]
    assert cut == []


def test_the_region_bounds_the_grids_seen_and_a_demo_scaling_of_the_query():
    same_size = [(_grid(3, 4), _grid(3, 4)), (_grid(5, 2), _grid(5, 2))]
    assert region_side(same_size, _grid(2, 2), SIDE, margin=0) == 5 + 1
    assert region_side(same_size, _grid(7, 1), SIDE, margin=2) == 7 + 1 + 2
    tripled = [(_grid(2, 2), _grid(6, 6)), (_grid(3, 3), _grid(9, 9))]  # outputs of one shape rule
    assert region_side(tripled, _grid(4, 4), SIDE, margin=0) == 12 + 1
    assert region_side(tripled, _grid(20, 20), SIDE) == SIDE  # capped at the canvas
    # Outputs larger than their inputs by ratios that differ: the whole canvas.
    growing = [(_grid(1, 5), _grid(5, 5)), (_grid(1, 5), _grid(10, 10))]
    assert region_side(growing, _grid(1, 5), SIDE) == SIDE


def test_the_region_reads_neither_the_augmentation_nor_the_query_output(arc1_training):
    task = next(t for t in arc1_training if t.fits(12) and t.demos[0][0].shape[0] != t.demos[0][0].shape[1])
    other_output = Task(task.id, task.demos, [(task.tests[0][0], _grid(1, 1))])
    episodes = np.array([[0, 0]] * 8)
    regions = {int(r) for tasks in ([task], [other_output]) for r in encode_episodes(
        tasks, episodes, augmentation_list(task, 8, seed=0), SIDE, 10, region_margin=1)["region_side"]}
    assert regions == {region_side(task.demos, task.tests[0][0], SIDE)}


def test_grids_translate_inside_their_region_and_the_eos_border_stops_at_its_edge(arc1_training):
    tasks = [t for t in arc1_training if t.fits(12)][:20]
    sampler = TrainSampler(tasks, canvas_side=SIDE, max_demos=10, leave_one_out=True, seed=0, translate=True,
                           region_margin=1)
    moved = 0
    for step in range(6):
        batch = sampler.batch(step, 16)
        for b, side in enumerate(batch["region_side"]):
            label = batch["labels"][b].reshape(SIDE, SIDE)
            query = batch["inputs"][b].reshape(SIDE, SIDE)
            demos = batch["demo_inputs"][b].reshape(-1, SIDE, SIDE)
            for canvas in (query, label, *demos):
                assert (canvas[side:] == PAD).all() and (canvas[:, side:] == PAD).all()
            moved += query[0, 0] == PAD
    assert moved > 0  # translation happened, inside the regions


def test_batches_group_episodes_of_similar_size(arc1_training):
    tasks = arc1_training[:120]
    grouped = TrainSampler(tasks, canvas_side=SIDE, max_demos=10, leave_one_out=True, seed=0, region_margin=1)
    plain = TrainSampler(tasks, canvas_side=SIDE, max_demos=10, leave_one_out=True, seed=0)
    regions = dict(zip(map(tuple, grouped.episodes.tolist()), grouped.episode_regions.tolist(), strict=True))

    def mean_square_run(sampler: TrainSampler) -> float:
        # Cells the decoder runs per sample: the square of the batch's largest region.
        sides = [max(regions[row] for row in zip(batch["task_index"].tolist(), batch["query_index"].tolist(),
                                                   strict=True))
                 for batch in (sampler.batch(step, 32) for step in range(grouped.steps_per_epoch(32)))]
        return float(np.mean(np.square(sides)))

    ideal = float(np.mean(np.square(grouped.episode_regions)))
    assert mean_square_run(grouped) < 0.75 * mean_square_run(plain)
    assert mean_square_run(grouped) < 1.3 * ideal
