"""`model_type=oracle`: the decoder told each task's rule, as learned vectors of its atoms."""

import pytest
import torch

from etrm.core.config import load_config
from etrm.core.distributed import Runtime
from etrm.core.errors import ConfigError
from etrm.data.episodes import atom_key, encode_episodes, task_atom_keys
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
    # The steps in order, each the vector its atom has alone (whatever order the rows are stored in):
    # dihedral(2) is the first rule's only step, border(5) that of a one-step border rule.
    alone = _context(oracle, [_task(Rule((("border", 5),)), 3)])[0]
    torch.testing.assert_close(context[2, 0], context[0, 0])
    torch.testing.assert_close(context[2, 1], alone[0])
    assert not torch.equal(context[2, 0], context[2, 1])  # two atoms, two vectors
    assert not context[:, 2:].any() and not context[:2, 1:].any() and not alone[1:].any()  # padding is zero


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


def test_the_rule_probe_reads_the_rule_off_oracle_contexts_and_not_off_shuffled_labels():
    # An oracle's context is a function of the rule alone, so a linear probe reads a level-1
    # task's image of colour 1 from it (nine classes) almost perfectly; the same contexts with the
    # labels shuffled across tasks carry nothing, so the probe falls to about chance there.
    import numpy as np

    from etrm.analysis.probe import probe_rules, rule_labels, rule_probe
    from etrm.data import load_tasks
    from etrm.eval.diagnostics import probe_contexts

    tasks = load_tasks("synth:iid:test:0:200:8:1")
    keys = torch.tensor(sorted({key for task in tasks for key in task_atom_keys(task)}))
    torch.manual_seed(0)
    oracle = RuleOracle(keys, hidden_size=16, context_len=10)
    probes = probe_rules(oracle, tasks, 8, 4, torch.device("cpu"))
    assert probes["parameter"]["classes"] == 9 and probes["parameter"]["accuracy"] >= 0.95
    contexts = probe_contexts(oracle, tasks, 1, 8, 4, torch.device("cpu"))[:, 0].numpy()
    labels = rule_labels(tasks)[1]
    shuffled = list(np.random.default_rng(0).permutation(np.asarray(labels, dtype=object)))
    result = rule_probe(contexts, shuffled)
    assert result["accuracy"] < result["chance"] + 0.15 < probes["parameter"]["accuracy"]


def test_the_oracle_context_beats_the_zero_context_on_what_it_is_told(tiny, tmp_path):
    # Level 1: each task recolours by its own permutation, which the query alone cannot reveal.
    # Trained side by side for the same steps on the same episodes, the decoder told the rule
    # fits the training episodes better than the decoder given a zero context.
    from etrm.train.loop import Trainer

    level1 = ("train_sources=synth:iid:train:0:24:6:1", "test_sources=synth:iid:test:0:6:6:1", *SYNTH[2:])
    losses = {}
    for name, overrides in (("oracle", ["model_type=oracle"]), ("none", ["encoder.type=none"])):
        config = load_config(tiny(tmp_path / name, *level1, *overrides, "lr=3e-3", "lr_warmup_steps=1",
                                  "halt_max_steps=1", "model.context_len=10"))
        trainer = Trainer(config, Runtime(torch.device("cpu")))
        per_step = []
        for step in range(200):
            metrics = trainer.train_step(to_torch(trainer.sampler.batch(step, config.global_batch_size)))
            trainer.state.add(metrics)
            per_step.append(float(metrics["lm_loss"] / metrics["count"]))
        losses[name] = sum(per_step[-30:]) / 30
    assert losses["oracle"] < 0.8 * losses["none"], losses
