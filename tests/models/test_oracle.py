"""`model_type=oracle`: the decoder told each task's rule, as learned vectors of its atoms."""

import pytest
import torch

from etrm.core.config import load_config
from etrm.core.distributed import Runtime
from etrm.core.errors import ConfigError
from etrm.data.episodes import atom_key, encode_episodes
from etrm.data.synth import Rule, make_task, rule_atoms
from etrm.data.tensors import to_torch
from etrm.eval.evaluate import evaluate_run
from etrm.models.oracle import RuleOracle
from etrm.train.loop import train

SYNTH = ("train_sources=synth:iid:train:0:24:6", "test_sources=synth:iid:test:0:6:6", "augment=false",
         "translate=false", "eval.num_augmentations=1")


def _task(rule: Rule, seed: int):
    import numpy as np

    task = None
    while task is None:
        task = make_task(np.random.default_rng(seed), rule, f"t{seed}", 3, 6)
        seed += 1000
    return task


def _context(oracle: RuleOracle, tasks: list) -> torch.Tensor:
    import numpy as np

    episodes = np.array([[i, 0] for i in range(len(tasks))])
    from etrm.data.augment import Augmentation

    batch = to_torch(encode_episodes(tasks, episodes, [Augmentation()] * len(tasks), 6, 4))
    return oracle(batch)


def test_the_context_names_the_rule_atoms_in_order_whatever_the_demos():
    first, second = Rule((("dihedral", 2),)), Rule((("dihedral", 2), ("border", 5)))
    keys = torch.tensor([atom_key(a) for a in rule_atoms(second.steps)])
    oracle = RuleOracle(keys, hidden_size=8, context_len=4)
    a, b, c = _task(first, 0), _task(first, 1), _task(second, 2)
    context = _context(oracle, [a, b, c])
    torch.testing.assert_close(context[0], context[1], atol=0, rtol=0)  # same rule, other grids
    rows = {atom: oracle.atoms.weight[i] for i, atom in enumerate(sorted(rule_atoms(second.steps), key=atom_key))}
    torch.testing.assert_close(context[2, 0], rows["dihedral(2)"])  # the steps in order
    torch.testing.assert_close(context[2, 1], rows["border(5)"])
    assert not context[:, 2:].any() and not context[:2, 1:].any()  # padding positions are zero


def test_an_atom_never_seen_in_training_reads_the_zero_row():
    oracle = RuleOracle(torch.tensor([atom_key("dihedral(2)")]), hidden_size=8, context_len=4)
    context = _context(oracle, [_task(Rule((("dihedral", 5),)), 0)])
    assert not context.any()


def test_a_rule_longer_than_the_context_is_refused():
    oracle = RuleOracle(torch.tensor([1]), hidden_size=8, context_len=4)
    with pytest.raises(ValueError, match="context_len 4"):
        _context(oracle, [_task(Rule((("colour_permutation", (0, 2, 1, 3, 4, 5, 6, 7, 8, 9)),)), 0)])


def test_oracle_trains_and_evaluates_through_the_normal_path(tiny, tmp_path):
    run = tmp_path / "oracle"
    summary = train(load_config(tiny(run, "model_type=oracle", *SYNTH)))
    assert summary["steps"] == 6
    result = evaluate_run(run)
    assert result["num_tasks"] == 3 and 0.0 <= result["pass@2"] <= 1.0  # tiny: max_eval_groups=3
    # evaluated on another held-out set, the vocabulary is the checkpoint's own
    other = evaluate_run(run, ["test_sources=synth:compose:test:0:4:6"])
    assert other["num_tasks"] == 3


def test_the_oracle_context_reaches_the_decoder_and_trains(tiny, tmp_path):
    from etrm.train.loop import Trainer

    config = load_config(tiny(tmp_path / "run", "model_type=oracle", *SYNTH))
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    before = trainer.model.context_source.atoms.weight.detach().clone()
    trainer.train_step(to_torch(trainer.sampler.batch(0, config.global_batch_size)))
    after = trainer.model.context_source.atoms.weight.detach()
    assert not torch.equal(before[:-1], after[:-1]) and not after[-1].any()  # the unseen row stays zero


def test_oracle_needs_rule_labels_and_no_augmentation(tiny, tmp_path):
    with pytest.raises(ConfigError, match="augment=false"):
        load_config(tiny(tmp_path / "a", "model_type=oracle", *SYNTH[:2], "augment=true"))
    with pytest.raises(ConfigError, match="rule labels"):
        train(load_config(tiny(tmp_path / "b", "model_type=oracle", "augment=false", "eval.num_augmentations=1")))
