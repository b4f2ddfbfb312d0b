"""The synthetic few-shot benchmark: determinism, valid grids, and split disjointness."""

import numpy as np
import pytest

from etrm.core.errors import DataError
from etrm.data import load_tasks
from etrm.data.synth import (
    COMPOSABLE,
    FAMILIES,
    Rule,
    compose_held_out_pairs,
    random_grid,
    rule_of,
    synth_tasks,
    write_kaggle,
)


def _steps(task):
    # "family(value)+family(value)" -> [(family, value text), ...]
    return [(part.split("(", 1)[0], part.split("(", 1)[1][:-1]) for part in rule_of(task).split("+")]


def test_same_seed_same_tasks_other_seed_other_tasks():
    first, again, other = (synth_tasks("iid", "train", 50, seed) for seed in (3, 3, 4))
    for a, b in zip(first, again, strict=True):
        assert a.id == b.id and rule_of(a) == rule_of(b)
        grids_a = [g for pair in a.demos for g in pair]
        grids_b = [g for pair in b.demos for g in pair]
        assert all(np.array_equal(x, y) for x, y in zip(grids_a, grids_b, strict=True))
    assert [rule_of(t) for t in first] != [rule_of(t) for t in other]


def test_at_least_ten_families_each_making_valid_grids_within_bounds():
    assert len(FAMILIES) >= 10
    rng = np.random.default_rng(0)
    for family in FAMILIES.values():
        for value in family.train_values + family.held_out_values:
            rule = Rule(((family.name, value),))
            side = max(1, 10 // rule.growth)
            for _ in range(20):
                grid = random_grid(rng, min(3, side), side, family.objects)
                out = rule(grid)
                assert out.dtype == np.uint8 and out.ndim == 2 and out.size > 0, family.name
                assert min(out.shape) >= 1 and max(out.shape) <= 10 and out.max() <= 9, family.name


@pytest.mark.parametrize("max_side", [6, 10])
def test_tasks_have_three_or_four_demos_one_or_two_tests_and_stay_within_max_side(max_side):
    for split in ("iid", "params", "compose"):
        for task in synth_tasks(split, "test", 60, max_side=max_side):
            assert 3 <= len(task.demos) <= 4 and 1 <= len(task.tests) <= 2
            assert task.max_side <= max_side
            assert all(output is not None for _, output in task.tests)
            assert not all(np.array_equal(i, o) for i, o in task.demos)  # the rule does something


def test_rule_families_behave_as_named():
    grid = np.array([[0, 1, 0], [2, 0, 0], [0, 0, 3]], dtype=np.uint8)
    assert np.array_equal(Rule((("gravity", "down"),))(grid), [[0, 0, 0], [0, 0, 0], [2, 1, 3]])
    assert Rule((("scale", 2),))(grid).shape == (6, 6)
    assert Rule((("tile", (1, 3)),))(grid).shape == (3, 9)
    assert np.array_equal(Rule((("translate", (0, 1)),))(grid), [[0, 0, 1], [0, 2, 0], [0, 0, 0]])
    ring = np.array([[4, 4, 4], [4, 0, 4], [4, 4, 4]], dtype=np.uint8)
    assert Rule((("fill_enclosed", 7),))(ring)[1, 1] == 7
    assert np.array_equal(Rule((("crop_object", None),))(np.pad(ring, 2)), ring)


def test_one_training_set_serves_every_split():
    trains = [synth_tasks(split, "train", 30) for split in ("iid", "params", "compose")]
    assert [t.id for t in trains[0]] == [t.id for t in trains[1]] == [t.id for t in trains[2]]


def test_params_split_holds_out_parameter_values():
    train = {step for task in synth_tasks("params", "train", 400) for step in _steps(task)}
    test = {step for task in synth_tasks("params", "test", 100) for step in _steps(task)}
    varying = {(f, v) for f, v in test if FAMILIES[f].held_out_values != (None,)}  # crop_object has no parameter
    assert varying and not (varying & train)  # no held-out (family, value) occurs in training


def test_compose_split_holds_out_pairs_and_iid_shares_the_distribution():
    held_out = set(compose_held_out_pairs())
    assert held_out and set(COMPOSABLE) - held_out
    train = synth_tasks("compose", "train", 400)
    train_pairs = {tuple(f for f, _ in _steps(t)) for t in train}
    test_pairs = {tuple(f for f, _ in _steps(t)) for t in synth_tasks("compose", "test", 100)}
    assert test_pairs <= held_out and not (train_pairs & held_out)
    iid_test = synth_tasks("iid", "test", 100)
    assert {step for t in iid_test for step in _steps(t)} <= {step for t in train for step in _steps(t)}
    assert not {tuple(f for f, _ in _steps(t)) for t in iid_test} & held_out
    assert not {t.id for t in train} & {t.id for t in iid_test}


def test_works_as_a_source_and_as_kaggle_files(tmp_path):
    tasks = load_tasks("synth:params:test:7:12")
    assert len(tasks) == 12
    write_kaggle(tasks, tmp_path / "synth_test")
    again = load_tasks(f"kaggle:{tmp_path / 'synth_test'}")
    assert [t.id for t in again] == sorted(t.id for t in tasks)
    assert max(t.max_side for t in load_tasks("synth:iid:test:0:20:6")) <= 6
    with pytest.raises(DataError, match="synth:SPLIT:PART"):
        load_tasks("synth:params")
    with pytest.raises(DataError, match="max_side"):
        load_tasks("synth:iid:test:0:5:31")
    with pytest.raises(DataError, match="not one of"):
        load_tasks("synth:nope:train")


# ------------------------------------------------------------------------- the ladder
def _golden_fingerprints():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "golden" / "write_synth_fingerprints.py"
    spec = importlib.util.spec_from_file_location("write_synth_fingerprints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_level_3_is_the_synth_cpu_data_unchanged():
    # tests/golden/synth_fingerprints.json was written at commit d20195e, before the ladder existed.
    import json

    golden = _golden_fingerprints()
    expected = json.loads((golden.HERE / "synth_fingerprints.json").read_text())
    for split, part, count, seed, max_side in golden.SETS:
        tasks = synth_tasks(split, part, count, seed, max_side=max_side, level=3)
        assert golden.fingerprint(tasks) == expected[f"{split}:{part}:{count}:{seed}:{max_side}"], (split, part)


@pytest.mark.parametrize("level", [1, 2])
def test_lower_levels_are_deterministic_single_rules_of_their_families(level):
    from etrm.data.synth import LEVELS

    first, again = (synth_tasks("iid", "train", 120, 5, max_side=8, level=level) for _ in range(2))
    assert [t.id for t in first] == [t.id for t in again]
    assert all(np.array_equal(a.tests[0][1], b.tests[0][1]) for a, b in zip(first, again, strict=True))
    assert all(len(t.rule) == 1 and t.rule[0][0] in LEVELS[level] for t in first)
    assert {t.rule[0][0] for t in first} == set(LEVELS[level])  # every family of the level occurs
    assert all(t.max_side <= 8 and 3 <= len(t.demos) <= 4 for t in first)
    other_level = synth_tasks("iid", "train", 120, 5, max_side=8, level=3 - level)
    assert {t.id for t in first}.isdisjoint({t.id for t in other_level})


def test_level_1_permutations_differ_per_task_and_are_readable_from_the_demos():
    tasks = synth_tasks("iid", "train", 300, 0, max_side=8, level=1)
    permutations = [t.rule[0][1] for t in tasks]
    assert len(set(permutations)) >= 295  # a fresh permutation per task (9! of them)
    for task, permutation in zip(tasks, permutations, strict=True):
        assert permutation[0] == 0 and sorted(permutation) == list(range(10))
        shown = set(np.concatenate([i.ravel() for i, _ in task.demos]).tolist())
        for grid_in, grid_out in task.demos + task.tests:
            assert np.array_equal(np.asarray(permutation)[grid_in], grid_out)
        assert all(set(i.ravel().tolist()) <= shown for i, _ in task.tests)


def test_lower_levels_have_only_the_iid_split_and_bad_levels_are_refused():
    with pytest.raises(DataError, match="level 1"):
        synth_tasks("params", "test", 5, level=1)
    with pytest.raises(DataError, match="level 4"):
        load_tasks("synth:iid:train:0:5:8:4")
    assert len(load_tasks("synth:iid:test:0:7:8:2")) == 7


def _same_up_to_transform_and_recolouring(a: tuple, b: tuple) -> bool:
    # Written apart from the leak finder's canonical keys: try each dihedral transform of pair a
    # and look for one colour bijection (0 fixed) mapping it cell by cell onto pair b.
    from etrm.data.augment import dihedral

    for t in range(8):
        grids = [dihedral(a[0], t), dihedral(a[1], t)]
        if [g.shape for g in grids] != [b[0].shape, b[1].shape]:
            continue
        source = np.concatenate([g.ravel() for g in grids])
        target = np.concatenate([b[0].ravel(), b[1].ravel()])
        mapping: dict[int, int] = {0: 0}
        if all(mapping.setdefault(int(x), int(y)) == y for x, y in zip(source, target, strict=True)) \
                and len(set(mapping.values())) == len(mapping):
            return True
    return False


def _tasks_sharing_a_pair(tasks: list, others: list) -> set[str]:
    def pairs(task):
        return [*task.demos, *[(i, o) for i, o in task.tests if o is not None]]

    def signature(pair):
        return tuple(sorted((*pair[0].shape, *pair[1].shape))), len(np.unique(np.concatenate(
            [pair[0].ravel(), pair[1].ravel()])))

    index: dict = {}
    for other in others:
        for pair in pairs(other):
            index.setdefault(signature(pair), []).append(pair)
    return {task.id for task in tasks for pair in pairs(task)
            if any(_same_up_to_transform_and_recolouring(pair, o) for o in index.get(signature(pair), []))}


@pytest.mark.parametrize("level", [1, 2])
def test_level_splits_hold_out_what_training_never_saw(level):
    # Counted apart from the leak finder: the training tasks that share a pair (up to a dihedral
    # transform and a recolouring) with a held-out task are exactly those the split drops, and
    # none is left.
    from etrm.data.splits import few_shot_split

    train, test = load_tasks(f"synth:iid:train:0:300:8:{level}"), load_tasks(f"synth:iid:test:0:40:8:{level}")
    overlapping = _tasks_sharing_a_pair(train, test)
    split = few_shot_split(f"synth:iid:train:0:300:8:{level}", f"synth:iid:test:0:40:8:{level}", 8,
                           leak_policy="drop")
    assert sorted(split.dropped_train_leaks) == sorted(overlapping)
    assert [t.id for t in split.train] == [t.id for t in train if t.id not in overlapping]
    assert len(split.test) == 40 and not _tasks_sharing_a_pair(split.train, split.test)


def test_compose_holds_out_compositions_never_trained_on():
    # Counted from the tasks' own rules: no held-out composition occurs among the training tasks,
    # and every held-out task of `compose` is a composition.
    trained = {tuple(family for family, _ in t.rule) for t in synth_tasks("iid", "train", 2000, 0, max_side=8)}
    held_out = [tuple(family for family, _ in t.rule) for t in synth_tasks("compose", "test", 100, 0, max_side=8)]
    assert all(len(steps) == 2 for steps in held_out)
    assert not set(held_out) & trained and any(len(steps) == 2 for steps in trained)


def test_oracle_atoms_of_iid_and_compose_are_seen_in_training_and_of_params_are_not():
    from etrm.data.synth import rule_atoms

    seen = {atom for t in synth_tasks("iid", "train", 2000, 0, max_side=8) for atom in rule_atoms(t.rule)}
    for split in ("iid", "compose"):
        held_out = synth_tasks(split, "test", 100, 0, max_side=8)
        assert all(set(rule_atoms(t.rule)) <= seen for t in held_out), split
    params = synth_tasks("params", "test", 100, 0, max_side=8)
    assert all(not set(rule_atoms(t.rule)) <= seen for t in params if t.rule[0][0] != "crop_object")
    level1 = {atom for t in synth_tasks("iid", "train", 2000, 0, max_side=8, level=1) for atom in rule_atoms(t.rule)}
    assert len(level1) == 81  # every (colour -> colour) mapping
    assert rule_atoms((("colour_permutation", tuple(range(10))),))[1] == "colour_permutation(2->2)"
    assert rule_atoms((("dihedral", 2), ("border", 5))) == ["dihedral(2)", "border(5)"]
