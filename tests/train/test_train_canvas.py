"""A size-aware canvas in training and the final evaluation, for TRM and ETRM (the decoder's and
the data layer's own guarantees are tested in tests/models/test_decoder.py and tests/data)."""

from __future__ import annotations

import json

import pytest

from etrm.models.decoder import RecursiveDecoder
from etrm.train.loop import train

CANVAS = 6  # the tiny runs' canvas


@pytest.mark.parametrize("model", [["model_type=etrm"], ["model_type=trm", "augmentations_per_task=2"]])
def test_training_and_evaluation_run_on_the_regions(model, tiny_config, tmp_path, monkeypatch):
    squares = []
    original = RecursiveDecoder._forward_in_groups

    def recorded(self, latents, tokens, context, region_side, layout):
        squares.append(int(region_side.max()))
        return original(self, latents, tokens, context, region_side, layout)

    monkeypatch.setattr(RecursiveDecoder, "_forward_in_groups", recorded)
    summary = train(tiny_config(tmp_path, *model, "dynamic_canvas=true", "dynamic_canvas_margin=0"))
    assert squares and min(squares) < CANVAS  # some batches ran on less than the canvas
    assert summary["steps"] == 6
    assert json.loads((tmp_path / "eval.json").read_text())["num_tasks"] == 3


def test_the_fixed_canvas_is_the_default(tiny_config, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fixed-canvas run cropped a batch")

    monkeypatch.setattr(RecursiveDecoder, "_forward_on_square", refuse)
    assert train(tiny_config(tmp_path, "max_steps=2"))["steps"] == 2


@pytest.mark.parametrize("model", [["model_type=etrm"], ["model_type=trm", "augmentations_per_task=2"]])
def test_training_in_groups_of_regions_trains_what_one_square_does(model, tiny_config, tmp_path, monkeypatch):
    # The real training step over the persistent carry (samples of several ages and sizes in a
    # batch), in float64: with the region groups and with every batch on its largest square, the
    # same losses step by step and the same weights after the steps.
    import torch

    from etrm.core.distributed import Runtime
    from etrm.data.tensors import to_torch
    from etrm.train.loop import Trainer

    squares_per_step: list[list[int]] = []
    original = RecursiveDecoder._forward_on_square

    def recorded(self, *args, **kwargs):
        squares_per_step[-1].append(args[5])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RecursiveDecoder, "_forward_on_square", recorded)
    config = tiny_config(tmp_path / "run", *model, "dynamic_canvas=true", "dynamic_canvas_margin=0",
                         "halt_exploration_prob=0.5", "ema_rate=0")  # EMA: its shadow stays float32
    trainers = []
    for groups in (4, 1):
        torch.manual_seed(0)
        trainer = Trainer(config, Runtime(torch.device("cpu")))
        trainer.model.double()
        with torch.no_grad():  # q_halt > 0: slots halt after a step, or a few (exploration), so ages mix
            trainer.model.decoder.q_head.bias.fill_(1.0)
        trainer.model.decoder.config.region_groups = groups
        trainers.append(trainer)
    losses: list[list[float]] = [[], []]
    ages: set[int] = set()
    for step in range(6):
        batch = to_torch(trainers[0].sampler.batch(step, config.global_batch_size))
        for index, trainer in enumerate(trainers):
            squares_per_step.append([])
            torch.manual_seed(step)  # the halting's exploration draws the same in both
            losses[index].append(float(trainer.train_step(batch)["loss"]))
        ages.add(len(set(trainers[0].state.carry.steps.tolist())))
    assert max(ages) > 1  # some step ran samples of different ages
    grouped_steps = squares_per_step[0::2]
    assert max(len(squares) for squares in grouped_steps) > 1  # some steps ran several squares
    assert all(len(squares) == 1 for squares in squares_per_step[1::2])
    assert losses[0] == pytest.approx(losses[1], rel=1e-9)
    grouped, one_square = (dict(trainer.model.named_parameters()) for trainer in trainers)
    for name, weight in grouped.items():
        torch.testing.assert_close(weight.to_dense(), one_square[name].to_dense(), rtol=1e-9, atol=1e-9, msg=name)
    for a, b in zip(*(trainer.state.carry.current_data["region_side"] for trainer in trainers), strict=True):
        assert a == b  # the same samples ran in the same slots
