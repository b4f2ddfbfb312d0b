"""Few-shot episodes: the training sampler's determinism, sharding, context, translation, augmentation."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from etrm.data.augment import Augmentation, dihedral
from etrm.data.encoding import IGNORE_LABEL, PAD, decode_grid, encode_grid
from etrm.data.episodes import AugmentedTasks, TrainSampler, encode_episodes, training_episodes
from etrm.data.tasks import Task
from etrm.data.tensors import to_torch

SIDE = 30


@pytest.fixture(scope="module")
def tasks(arc1_training):
    return arc1_training[:24]


@pytest.fixture(scope="module")
def small_tasks(arc1_training):
    """Tasks that fit a 12x12 canvas: room to translate."""
    return [t for t in arc1_training if t.fits(12)][:20]


def _sampler(tasks, **overrides) -> TrainSampler:
    options = dict(canvas_side=SIDE, max_demos=10, leave_one_out=True, seed=0)
    options.update(overrides)
    return TrainSampler(tasks, **options)


def _rows(batch) -> list[tuple[int, int]]:
    return list(zip(batch["task_index"].tolist(), batch["query_index"].tolist(), strict=True))


def _assert_batches_equal(first, second):
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def _query_and_context(task: Task, query: int, max_demos: int):
    """The expected episode, written from the module's contract (not its helpers)."""
    if query >= 0:
        return task.tests[query], list(task.demos[:max_demos])
    held_out = -query - 1
    return task.demos[held_out], [p for i, p in enumerate(task.demos) if i != held_out][:max_demos]


# --- determinism ---------------------------------------------------------------------------------


# A size-aware canvas (region_margin) reorders each epoch by size: every guarantee holds for both.
MARGINS = pytest.mark.parametrize("region_margin", [None, 1])


@MARGINS
def test_same_seed_and_step_give_identical_batches(tasks, region_margin):
    first, second = _sampler(tasks, seed=3, region_margin=region_margin), _sampler(tasks, seed=3,
                                                                                     region_margin=region_margin)
    for step in (0, 1, 7, 40):
        _assert_batches_equal(first.batch(step, 8), second.batch(step, 8))


def test_different_seeds_differ(tasks):
    a, b = _sampler(tasks, seed=0).batch(0, 16), _sampler(tasks, seed=1).batch(0, 16)
    assert _rows(a) != _rows(b)
    assert not np.array_equal(a["inputs"], b["inputs"])


@MARGINS
def test_a_batch_does_not_depend_on_earlier_draws(tasks, region_margin):
    direct = _sampler(tasks, seed=5, region_margin=region_margin).batch(5, 8)
    walked = _sampler(tasks, seed=5, region_margin=region_margin)
    for step in range(5):
        walked.batch(step, 8)
    _assert_batches_equal(direct, walked.batch(5, 8))
    jumped = _sampler(tasks, seed=5, region_margin=region_margin)
    jumped.batch(1000, 8)  # several epochs later, then back
    _assert_batches_equal(direct, jumped.batch(5, 8))


@MARGINS
def test_epoch_boundary_wraps_and_each_epoch_covers_every_episode_once(tasks, region_margin):
    sampler = _sampler(tasks, seed=11, region_margin=region_margin)
    n = sampler.num_episodes
    expected = Counter(map(tuple, training_episodes(tasks, leave_one_out=True).tolist()))
    assert sum(expected.values()) == n and max(expected.values()) == 1
    batch_size = 7
    assert n % batch_size  # the boundary falls inside a batch
    assert sampler.steps_per_epoch(batch_size) == math.ceil(n / batch_size)
    stream = []
    for step in range(math.ceil(2 * n / batch_size) + 1):
        batch = sampler.batch(step, batch_size)
        assert len(batch["inputs"]) == batch_size
        stream += _rows(batch)
    first, second = stream[:n], stream[n : 2 * n]
    assert Counter(first) == expected and Counter(second) == expected
    assert first != second  # each epoch has its own order


# --- ranks ---------------------------------------------------------------------------------------


@MARGINS
@pytest.mark.parametrize("step", [0, 3, 12])
def test_ranks_split_the_global_batch(tasks, step, region_margin):
    whole = _sampler(tasks, seed=2, region_margin=region_margin).batch(step, 8)
    parts = [_sampler(tasks, seed=2, rank=r, world_size=2, region_margin=region_margin).batch(step, 8)
             for r in range(2)]
    rows = [_rows(p) for p in parts]
    assert len(rows[0]) == len(rows[1]) == 4
    assert not set(rows[0]) & set(rows[1])
    assert Counter(rows[0] + rows[1]) == Counter(_rows(whole))
    # Same episodes, same augmentation and placement: rank 0 then rank 1 is the whole batch.
    for key in ("inputs", "labels", "task_index", "query_index", *(["region_side"] if region_margin else [])):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key], err_msg=key)
    offset = 0
    for part in parts:
        for b in range(len(part["inputs"])):
            real = int(part["demo_mask"][b].sum())
            assert real == int(whole["demo_mask"][offset + b].sum())
            np.testing.assert_array_equal(
                part["demo_inputs"][b, :real], whole["demo_inputs"][offset + b, :real]
            )
        offset += len(part["inputs"])


def test_global_batch_must_divide_among_ranks(tasks):
    with pytest.raises(ValueError):
        _sampler(tasks, rank=0, world_size=3).batch(0, 8)


def test_no_trainable_episodes_is_an_error():
    grid = np.ones((2, 2), dtype=np.uint8)
    with pytest.raises(ValueError):
        _sampler([Task("x", [(grid, grid)], [(grid, None)])], leave_one_out=True)


# --- episode contents ----------------------------------------------------------------------------


def test_training_episodes_listing():
    grid = np.ones((2, 2), dtype=np.uint8)
    one_demo = Task("a", [(grid, grid)], [(grid, grid), (grid, None)])
    three_demos = Task("b", [(grid, grid)] * 3, [(grid, grid)])
    rows = training_episodes([one_demo, three_demos], leave_one_out=True).tolist()
    # Unknown test outputs are skipped; a lone demo is never held out.
    assert sorted(map(tuple, rows)) == sorted([(0, 0), (1, 0), (1, -1), (1, -2), (1, -3)])
    assert sorted(map(tuple, training_episodes([one_demo, three_demos], False).tolist())) == [(0, 0), (1, 0)]


@pytest.mark.parametrize("max_demos", [10, 3])
def test_demos_padded_to_the_batch_maximum_with_a_matching_mask(tasks, max_demos):
    sampler = _sampler(tasks, max_demos=max_demos, augment=False, translate=False, seed=4)
    widths = set()
    for step in range(sampler.steps_per_epoch(6)):
        batch = sampler.batch(step, 6)
        sizes = [len(_query_and_context(tasks[t], q, max_demos)[1]) for t, q in _rows(batch)]
        assert batch["demo_inputs"].shape == (6, max(sizes), SIDE * SIDE)
        assert batch["demo_outputs"].shape == batch["demo_inputs"].shape
        assert batch["demo_mask"].shape == (6, max(sizes)) and batch["demo_mask"].dtype == bool
        for b, size in enumerate(sizes):
            assert batch["demo_mask"][b].tolist() == [True] * size + [False] * (max(sizes) - size)
            assert not batch["demo_inputs"][b, size:].any() and not batch["demo_outputs"][b, size:].any()
            assert batch["demo_inputs"][b, :size].any(axis=1).all()
        widths.add(max(sizes))
    assert max(widths) <= max_demos and len(widths) > 1  # the width follows the batch


@pytest.mark.parametrize("max_demos", [10, 2])
def test_context_is_the_other_demos_and_never_the_held_out_one(tasks, max_demos):
    sampler = _sampler(tasks, max_demos=max_demos, augment=False, translate=False, seed=9)
    seen_kinds = Counter()
    for step in range(sampler.steps_per_epoch(8)):
        batch = sampler.batch(step, 8)
        for b, (t, q) in enumerate(_rows(batch)):
            task = tasks[t]
            query_in, query_out = decode_grid(batch["inputs"][b]), decode_grid(batch["labels"][b])
            context = [
                (decode_grid(batch["demo_inputs"][b, d]), decode_grid(batch["demo_outputs"][b, d]))
                for d in range(int(batch["demo_mask"][b].sum()))
            ]
            if q >= 0:
                seen_kinds["test"] += 1
                expected_query, expected_context = task.tests[q], task.demos[:max_demos]
            else:
                seen_kinds["held out"] += 1
                held = -q - 1
                expected_query = task.demos[held]
                expected_context = [p for i, p in enumerate(task.demos) if i != held][:max_demos]
                held_bytes = (task.demos[held][0].tobytes(), task.demos[held][1].tobytes())
                assert held_bytes not in {(i.tobytes(), o.tobytes()) for i, o in context}
            assert np.array_equal(query_in, expected_query[0]) and np.array_equal(
                query_out, expected_query[1]
            )
            assert len(context) == len(expected_context)
            for (got_in, got_out), (want_in, want_out) in zip(context, expected_context, strict=True):
                assert np.array_equal(got_in, want_in) and np.array_equal(got_out, want_out)
    assert seen_kinds["test"] > 10 and seen_kinds["held out"] > 30


@pytest.mark.parametrize("probability", [0.0, 0.3, 1.0])
def test_context_includes_the_held_out_demo_with_the_given_probability(tasks, probability):
    # A held-out demo stays in its own context (LPN's reconstruction) in about that share of the
    # leave-one-out episodes; test-pair episodes and the rest of the batch are unchanged.
    sampler = _sampler(tasks, augment=False, translate=False, seed=3, context_includes_query_prob=probability)
    plain = _sampler(tasks, augment=False, translate=False, seed=3)
    included = held_out = 0
    for step in range(sampler.steps_per_epoch(8)):
        batch, reference = sampler.batch(step, 8), plain.batch(step, 8)
        for key in ("inputs", "labels", "task_index", "query_index"):
            np.testing.assert_array_equal(batch[key], reference[key])
        for b, (t, q) in enumerate(_rows(batch)):
            context = {(decode_grid(batch["demo_inputs"][b, d]).tobytes(),
                        decode_grid(batch["demo_outputs"][b, d]).tobytes())
                       for d in range(int(batch["demo_mask"][b].sum()))}
            if q >= 0:
                assert int(batch["demo_mask"][b].sum()) == len(tasks[t].demos[:10])
                continue
            held_out += 1
            held = tasks[t].demos[-q - 1]
            inside = (held[0].tobytes(), held[1].tobytes()) in context
            included += inside
            assert int(batch["demo_mask"][b].sum()) == len(tasks[t].demos) - (not inside)
    assert held_out > 50
    assert abs(included / held_out - probability) < 0.15, (included, held_out)


def test_the_held_out_demo_stays_in_the_context_less_often_as_the_schedule_runs(tasks):
    # context_includes_query_decay_steps: the probability falls linearly to 0, so the end of
    # training is pure leave-one-out; without it the probability is constant.
    decaying = _sampler(tasks, augment=False, translate=False, seed=3, context_includes_query_prob=1.0,
                        context_includes_query_decay_steps=100)
    constant = _sampler(tasks, augment=False, translate=False, seed=3, context_includes_query_prob=1.0)
    assert [decaying.includes_query_prob(s) for s in (0, 25, 100, 500)] == [1.0, 0.75, 0.0, 0.0]
    assert constant.includes_query_prob(500) == 1.0

    def included_share(sampler: TrainSampler, step: int) -> float:
        batch = sampler.batch(step, 64)
        held_out = [b for b, (_, q) in enumerate(_rows(batch)) if q < 0]
        full = [int(batch["demo_mask"][b].sum()) == len(tasks[t].demos[:10])
                for b, (t, _) in enumerate(_rows(batch)) if b in held_out]
        return sum(full) / len(full)

    assert included_share(decaying, 0) == 1.0 and included_share(constant, 100) == 1.0
    assert included_share(decaying, 100) == 0.0


def _placed(tokens: np.ndarray, side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The grid in a translated canvas and its offset; the canvas must be exactly its encoding."""
    canvas = tokens.reshape(side, side)
    rows, cols = np.nonzero(canvas >= 2)
    assert len(rows), "no grid in the canvas"
    top, left = int(rows.min()), int(cols.min())
    grid = canvas[top : rows.max() + 1, left : cols.max() + 1].astype(np.int64) - 2
    assert (grid >= 0).all(), "colour cells do not form a rectangle"
    grid = grid.astype(np.uint8)
    np.testing.assert_array_equal(tokens, encode_grid(grid, side, top, left))
    return grid, (top, left)


def test_translation_keeps_grids_inside_and_pairs_share_an_offset(small_tasks):
    side = 12
    sampler = _sampler(small_tasks, canvas_side=side, augment=False, translate=True, seed=1)
    offsets = set()
    for step in range(sampler.steps_per_epoch(8)):
        batch = sampler.batch(step, 8)
        for b, (t, q) in enumerate(_rows(batch)):
            query, context = _query_and_context(small_tasks[t], q, 10)
            examples = [(batch["inputs"][b], batch["labels"][b], query)]
            examples += [
                (batch["demo_inputs"][b, d], batch["demo_outputs"][b, d], pair)
                for d, pair in enumerate(context)
            ]
            assert len(context) == int(batch["demo_mask"][b].sum())
            for tokens_in, tokens_out, (grid_in, grid_out) in examples:
                got_in, at_in = _placed(tokens_in, side)
                got_out, at_out = _placed(tokens_out, side)
                assert np.array_equal(got_in, grid_in) and np.array_equal(got_out, grid_out)
                assert at_in == at_out
                offsets.add(at_in)
    assert len(offsets) > 10 and max(max(o) for o in offsets) > 3


def test_translation_leaves_one_in_n_examples_at_the_top_left(small_tasks):
    # The reference leaves one of a task's n examples (demos + tests) untranslated, at the
    # evaluation placement. Expected chance of the top-left for an example of a task with n
    # examples, with h x w the larger of its input and output: 1/n + (1 - 1/n) / ((S-h+1)(S-w+1))
    # (a translated grid can land there too). The query and the demos are checked separately;
    # the measured count must be within 4 binomial standard deviations of the expectation.
    side = 12
    sampler = _sampler(small_tasks, canvas_side=side, augment=False, translate=True, seed=5)
    tallies = {"query": [0, 0.0, 0.0], "demo": [0, 0.0, 0.0]}  # at corner, expected, variance
    for step in range(4 * sampler.steps_per_epoch(16)):
        batch = sampler.batch(step, 16)
        for b, (t, q) in enumerate(_rows(batch)):
            task = small_tasks[t]
            query, context = _query_and_context(task, q, 10)
            n = len(task.demos) + len(task.tests)
            examples = [("query", batch["inputs"][b], query)]
            examples += [("demo", batch["demo_inputs"][b, d], pair) for d, pair in enumerate(context)]
            for kind, tokens, (grid_in, grid_out) in examples:
                height = max(grid_in.shape[0], grid_out.shape[0])
                width = max(grid_in.shape[1], grid_out.shape[1])
                chance = 1 / n + (1 - 1 / n) / ((side - height + 1) * (side - width + 1))
                tally = tallies[kind]
                tally[0] += _placed(tokens, side)[1] == (0, 0)
                tally[1] += chance
                tally[2] += chance * (1 - chance)
    for kind, (count, expected, variance) in tallies.items():
        assert expected > 50, kind
        assert abs(count - expected) < 4 * math.sqrt(variance), (kind, count, expected)


def _recover_augmentation(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Augmentation | None:
    """Find one dihedral + colour permutation (0 fixed) taking every original grid to its seen grid."""
    for transform_id in range(8):
        moved = [dihedral(original, transform_id) for original, _ in pairs]
        if any(m.shape != seen.shape for m, (_, seen) in zip(moved, pairs, strict=True)):
            continue
        source = np.concatenate([m.ravel() for m in moved]).astype(np.int64)
        target = np.concatenate([seen.ravel() for _, seen in pairs]).astype(np.int64)
        links = np.unique(source * 16 + target)
        sources, targets = links // 16, links % 16
        if len(np.unique(sources)) != len(links) or len(np.unique(targets)) != len(links):
            continue  # not a function, or not one-to-one
        mapping = dict(zip(sources.tolist(), targets.tolist(), strict=True))
        if mapping.get(0, 0) != 0:
            continue
        mapping[0] = 0
        spare = iter(c for c in range(10) if c not in mapping.values())
        return Augmentation(
            transform_id, tuple(mapping[c] if c in mapping else next(spare) for c in range(10))
        )
    return None


def _episode_grids(batch, b, task, q, max_demos=10):
    query, context = _query_and_context(task, q, max_demos)
    pairs = [(query[0], decode_grid(batch["inputs"][b])), (query[1], decode_grid(batch["labels"][b]))]
    for d, (grid_in, grid_out) in enumerate(context):
        pairs += [
            (grid_in, decode_grid(batch["demo_inputs"][b, d])),
            (grid_out, decode_grid(batch["demo_outputs"][b, d])),
        ]
    return pairs


def test_one_augmentation_per_episode(tasks):
    sampler = _sampler(tasks, augment=True, translate=False, seed=6)
    rotated = recoloured = 0
    for step in range(4):
        batch = sampler.batch(step, 16)
        for b, (t, q) in enumerate(_rows(batch)):
            pairs = _episode_grids(batch, b, tasks[t], q)
            augmentation = _recover_augmentation(pairs)
            assert augmentation is not None, f"episode {b} of step {step} mixes augmentations"
            for original, seen in pairs:
                assert np.array_equal(augmentation.invert(seen), original)
            rotated += any(o.shape != s.shape or not np.array_equal(o, s) for o, s in pairs)
            recoloured += not set(np.unique(pairs[0][1])) <= set(
                np.unique(pairs[0][0])
            ) or not np.array_equal(np.unique(pairs[0][1]), np.unique(pairs[0][0]))
    assert rotated > 40 and recoloured > 30


def test_recover_augmentation_rejects_mixed_augmentations():
    # Guard for the test above: grids under two different augmentations are not explained by one.
    rng = np.random.default_rng(0)
    grids = [rng.integers(0, 10, size=(4, 5)).astype(np.uint8) for _ in range(3)]
    one, two = Augmentation(1, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1)), Augmentation(4)
    assert _recover_augmentation([(g, one.apply(g)) for g in grids]) is not None
    assert (
        _recover_augmentation([(g, one.apply(g)) for g in grids[:2]] + [(grids[2], two.apply(grids[2]))])
        is None
    )


def test_enumerated_sampler_uses_the_fixed_lists(tasks):
    enumerated = AugmentedTasks(tasks, num_augmentations=6, seed=0)
    sampler = _sampler(tasks, augment=True, translate=False, seed=2, enumerated=enumerated)
    used = set()
    for step in range(3):
        batch = sampler.batch(step, 16)
        for b, (t, q) in enumerate(_rows(batch)):
            a = int(batch["augmentation_index"][b])
            assert 0 <= a < len(enumerated.lists[t])
            assert batch["puzzle_identifiers"][b] == enumerated.first_id[t] + a
            augmentation = enumerated.lists[t][a]
            for original, seen in _episode_grids(batch, b, tasks[t], q):
                assert np.array_equal(augmentation.invert(seen), original)
            used.add(a)
    assert len(used) > 3
    ids = [enumerated.puzzle_id(t, a) for t in range(len(tasks)) for a in range(len(enumerated.lists[t]))]
    assert ids == list(range(enumerated.num_ids))


def test_to_torch():
    grid = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    task = Task("t", [(grid, grid), (grid, grid.T)], [(grid, grid)])
    batch = encode_episodes(
        [task], np.array([[0, 0], [0, -1]]), [Augmentation()] * 2, canvas_side=6, max_demos=5
    )
    tensors = to_torch(batch)
    for key in ("inputs", "labels", "demo_inputs", "demo_outputs"):
        assert tensors[key].dtype == torch.int64
        assert tensors[key].shape == batch[key].shape
    labels = tensors["labels"].numpy()
    assert (labels[batch["labels"] == PAD] == IGNORE_LABEL).all()
    assert (labels[batch["labels"] != PAD] == batch["labels"][batch["labels"] != PAD]).all()
    np.testing.assert_array_equal(tensors["inputs"].numpy(), batch["inputs"])  # inputs keep PAD = 0
    assert tensors["demo_mask"].dtype == torch.bool and tensors["demo_mask"].tolist() == [
        [True, True],
        [True, False],
    ]
