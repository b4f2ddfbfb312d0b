"""ACT training over the persistent carry, with the real model, data and train step.

Facts section 6: bug 1 (the encoder got gradients only from just-reset samples), bug 2 (an
encoder that detached its output got none), bug 3 (carried samples trained against the new
batch's labels) and bug 8 (padded demos took part in the encoding).

The tasks are small ARC-AGI-1 tasks re-split to three test inputs each (ConceptARC's shape,
`three_test_source` in tests/conftest.py), so nothing here needs the shared data folder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from etrm.core import distributed
from etrm.data import load_tasks
from etrm.data.augment import Augmentation
from etrm.data.episodes import AugmentedTasks, TrainSampler, encode_episodes
from etrm.data.tensors import to_torch
from etrm.models.build import build_model
from etrm.models.encoders import ENCODERS
from etrm.models.losses import act_loss
from etrm.train import loop
from etrm.train.loop import Trainer

CANVAS = 6


@pytest.fixture(scope="module")
def three_test_tasks(three_test_source):
    tasks = [t for t in load_tasks(three_test_source) if t.fits(CANVAS)]
    assert len(tasks) >= 2 and all(len(t.tests) == 3 for t in tasks)
    return tasks


# The no-context floor (`none`) has no parameters to reach: the encoders that learn.
LEARNING_ENCODERS = sorted(set(ENCODERS) - {"none"})


def encoder_overrides(encoder_type: str) -> list[str]:
    """`encoder.type=TYPE` and what it needs: the demos as the context take one context position
    per demo cell (the tiny runs' max_demos, 10, of the 6x6 canvas)."""
    extra = [f"model.context_len={10 * CANVAS**2}"] if encoder_type == "demo_cells" else []
    return [f"encoder.type={encoder_type}", *extra]


@pytest.mark.parametrize("encoder_type", LEARNING_ENCODERS)
def test_every_encoder_parameter_gets_a_gradient_at_every_act_step(encoder_type, three_test_tasks, tiny_config,
                                                                    tmp_path):
    config = tiny_config(tmp_path, *encoder_overrides(encoder_type), "halt_max_steps=4", "halt_exploration_prob=0")
    torch.manual_seed(0)
    model = build_model(config).train()
    encoder = model.context_source.encoder
    named = list(encoder.named_parameters())
    assert named
    sampler = TrainSampler(three_test_tasks, canvas_side=CANVAS, max_demos=config.max_demos, leave_one_out=True,
                           seed=0)
    carry, steps_without_reset = None, 0
    for step in range(7):
        batch = to_torch(sampler.batch(step, 6))
        if carry is None:
            carry = model.initial_carry(batch)
        carry, outputs = model(carry, batch)
        loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, config.halt_loss_weight)
        model.zero_grad(set_to_none=True)
        loss.backward()
        starved = [name for name, p in named if p.grad is None or not bool(p.grad.abs().sum() > 0)]
        assert not starved, f"step {step + 1}: encoder parameters without gradient: {starved}"
        if bool((carry.steps > 1).all()):  # no slot was (re)started at this step
            steps_without_reset += 1
    assert steps_without_reset >= 3


def _trainer(tiny_config, tmp_path, *extra) -> Trainer:
    config = tiny_config(tmp_path / "run", "halt_exploration_prob=0", *extra)
    return Trainer(config, distributed.Runtime(torch.device("cpu")))


def _spy_on_loss_labels(monkeypatch) -> list[torch.Tensor]:
    seen = []

    def spying_act_loss(outputs, labels, *args, **kwargs):
        seen.append(labels.clone())
        return act_loss(outputs, labels, *args, **kwargs)

    monkeypatch.setattr(loop, "act_loss", spying_act_loss)
    return seen


def test_carried_slots_keep_their_labels_and_halted_slots_take_the_new_ones(tiny_config, tmp_path, monkeypatch):
    # Bug 3: some slots continue, others take the next batch; the loss must use each slot's own labels.
    trainer = _trainer(tiny_config, tmp_path, "halt_max_steps=8")
    size = trainer.config.global_batch_size
    seen = _spy_on_loss_labels(monkeypatch)
    first, second = (to_torch(trainer.sampler.batch(step, size)) for step in (0, 1))
    trainer.train_step(first)
    trainer.state.step += 1
    torch.testing.assert_close(trainer.state.carry.current_data["labels"], first["labels"])
    previous = {k: v.clone() for k, v in trainer.state.carry.current_data.items()}
    halted = torch.arange(size) % 3 == 0  # slots 0, 3, 6 halted; the others continue
    trainer.state.carry.halted = halted.clone()
    trainer.train_step(second)
    labels = trainer.state.carry.current_data["labels"]
    continuing = ~halted
    assert torch.equal(labels[continuing], previous["labels"][continuing])
    assert torch.equal(labels[halted], second["labels"][halted])
    assert torch.equal(trainer.state.carry.current_data["inputs"][continuing], previous["inputs"][continuing])
    assert torch.equal(trainer.state.carry.current_data["inputs"][halted], second["inputs"][halted])
    # the test means something: the new batch's labels differ from the carried ones somewhere
    assert not torch.equal(second["labels"][continuing], previous["labels"][continuing])
    assert torch.equal(seen[-1], labels)  # the loss was computed against the carried labels
    assert trainer.state.carry.steps[continuing].tolist() == [2] * int(continuing.sum())
    assert trainer.state.carry.steps[halted].tolist() == [1] * int(halted.sum())


def test_labels_follow_samples_through_natural_halting(tiny_config, tmp_path, monkeypatch):
    # halt_max_steps=3, no exploration, q_halt starts at -5: every slot runs exactly 3 steps, so
    # the batches of steps 1 and 2 are ignored and step 3's batch is loaded at the 4th step.
    trainer = _trainer(tiny_config, tmp_path)
    size, max_steps = trainer.config.global_batch_size, trainer.config.halt_max_steps
    seen = _spy_on_loss_labels(monkeypatch)
    batches = [to_torch(trainer.sampler.batch(step, size)) for step in range(2 * max_steps)]
    for step, batch in enumerate(batches):
        trainer.train_step(batch)
        trainer.state.step += 1
        loaded = batches[(step // max_steps) * max_steps]
        assert torch.equal(trainer.state.carry.current_data["labels"], loaded["labels"]), step
        assert torch.equal(seen[-1], loaded["labels"]), step
        assert bool(trainer.state.carry.halted.all()) == ((step + 1) % max_steps == 0)
    assert not torch.equal(batches[1]["labels"], batches[0]["labels"])


@pytest.mark.parametrize("encoder_type", sorted(ENCODERS))
def test_context_ignores_padded_demos_and_other_samples(encoder_type, tiny_config, tmp_path):
    # Bug 8: demos were padded to 10 without a mask. A sample's context must not depend on how
    # many demos its batch-mates have, and a batch is padded only to its own largest demo count.
    config = tiny_config(tmp_path, *encoder_overrides(encoder_type))
    tasks = [t for t in load_tasks("arc1:evaluation") if t.fits(CANVAS)]
    few = next(t for t in tasks if len(t.demos) == 2)
    many = next(t for t in tasks if len(t.demos) >= 4)
    torch.manual_seed(0)
    model = build_model(config).eval()

    def batch_of(task_list):
        episodes = np.array([[i, 0] for i in range(len(task_list))])
        augs = [Augmentation()] * len(task_list)
        return to_torch(encode_episodes(task_list, episodes, augs, CANVAS, config.max_demos))

    together, alone = batch_of([few, many]), batch_of([few])
    assert together["demo_inputs"].shape[1] == len(many.demos) < config.max_demos
    assert alone["demo_inputs"].shape[1] == 2
    with torch.no_grad():
        torch.testing.assert_close(model.context_source(together)[:1], model.context_source(alone),
                                   atol=1e-5, rtol=1e-4)
        logits_together = model.run_fixed_steps(together)["logits"][:1]
        logits_alone = model.run_fixed_steps(alone)["logits"]
    torch.testing.assert_close(logits_together, logits_alone, atol=1e-4, rtol=1e-4)


def test_samples_kept_running_by_exploration_are_marked_forced(tiny_config, tmp_path, three_test_tasks):
    config = tiny_config(tmp_path, "halt_exploration_prob=1.0", "halt_max_steps=4")
    model = build_model(config)
    with torch.no_grad():
        model.decoder.q_head.bias.fill_(5.0)  # every sample wants to halt at once
    sampler = TrainSampler(three_test_tasks, canvas_side=CANVAS, max_demos=config.max_demos, leave_one_out=True,
                           seed=0)
    batch = to_torch(sampler.batch(0, 8))
    torch.manual_seed(0)
    carry = model.initial_carry(batch)
    carry, _ = model(carry, batch)
    # Exploration draws a minimum of at least 2 steps: nobody halts at step 1, everybody was forced.
    assert not carry.halted.any() and carry.forced.all()
    model.decoder.config.halt_exploration_prob = 0.0
    carry, _ = model(carry, batch)  # now every sample halts; the flag stays with the sample it marks
    assert carry.halted.all() and carry.forced.all()
    carry, _ = model(carry, batch)  # new samples halt at once on their own: the flag restarted
    assert carry.halted.all() and not carry.forced.any()
    model.eval()  # no exploration at evaluation: nothing is forced
    carry, _ = model(model.initial_carry(batch), batch)
    assert not carry.halted.any() and not carry.forced.any()


@pytest.mark.parametrize("encoder_type", ["standard", "recurrent"])
def test_early_stopping_at_evaluation_is_off_by_default_and_stops_once_all_are_confident(
        encoder_type, three_test_tasks, tiny_config, tmp_path):
    config = tiny_config(tmp_path, f"encoder.type={encoder_type}", "halt_max_steps=4")
    torch.manual_seed(0)
    model = build_model(config).eval()
    episodes = np.array([[i, 0] for i in range(2)])
    batch = to_torch(encode_episodes(three_test_tasks[:2], episodes, [Augmentation()] * 2, CANVAS, config.max_demos))
    with torch.no_grad():
        # The fresh q-head says "continue" (bias -5): nothing stops early, with or without the switch.
        assert model.run_fixed_steps(batch)["steps_run"].tolist() == [4, 4]
        assert model.run_fixed_steps(batch, early_stop_confidence=0.9)["steps_run"].tolist() == [4, 4]
        model.decoder.q_head.bias[0] = 5.0  # every sample now halts confidently at step 1
        off = model.run_fixed_steps(batch)
        on = model.run_fixed_steps(batch, early_stop_confidence=0.9)
        one_step = model.run_fixed_steps(batch, num_steps=1)
    assert off["steps_run"].tolist() == [4, 4] and on["steps_run"].tolist() == [1, 1]
    assert on["halt_step"].tolist() == [1, 1]
    torch.testing.assert_close(on["logits"], one_step["logits"])


# On CUDA, the size-aware canvas too (two batches on squares of different sides: a recompilation);
# on the CPU, where compiling costs tens of seconds, the fixed canvas only.
COMPILED_SETUPS = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda),
                   pytest.param("cuda-size-aware", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("setup", COMPILED_SETUPS)
@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_compiled_training_step_matches_eager(model_type, setup, three_test_tasks, tiny_config, tmp_path):
    # torch.compile of the TRM's whole model fails on its sparse embedding: compile_model compiles
    # the decoder only there. Same losses and gradients as eager, parameter names unchanged.
    from etrm.models.build import compile_model

    config = tiny_config(tmp_path, f"model_type={model_type}", "halt_exploration_prob=0", "augmentations_per_task=2")
    enumerated = AugmentedTasks(three_test_tasks, 2)
    device, size_aware = setup.split("-")[0], setup.endswith("size-aware")
    sampler = TrainSampler(three_test_tasks, canvas_side=CANVAS, max_demos=config.max_demos, leave_one_out=True,
                           seed=0, enumerated=enumerated, region_margin=0 if size_aware else None)
    batches = [to_torch(sampler.batch(step, 4), device) for step in range(2 if size_aware else 1)]
    if size_aware:
        assert len({int(b["region_side"].max()) for b in batches}) > 1
    results = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(config, num_puzzle_ids=enumerated.num_ids + 1).to(device).train()
        names = [name for name, _ in model.named_parameters()]
        if compiled:
            compile_model(model)
            assert [name for name, _ in model.named_parameters()] == names
        for batch in batches:
            model.zero_grad(set_to_none=True)
            carry, outputs = model(model.initial_carry(batch), batch)
            loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, config.halt_loss_weight)
            loss.backward()
            results.append((compiled, loss.detach(), model.decoder.lm_head.weight.grad.clone()))
    eager, compiled = [r for r in results if not r[0]], [r for r in results if r[0]]
    for (_, loss_e, grad_e), (_, loss_c, grad_c) in zip(eager, compiled, strict=True):
        torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(grad_c, grad_e, atol=1e-4, rtol=1e-3)
