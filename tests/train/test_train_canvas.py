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
    original = RecursiveDecoder._forward_on_regions

    def recorded(self, latents, tokens, context, region_side, layout):
        squares.append(int(region_side.max()))
        return original(self, latents, tokens, context, region_side, layout)

    monkeypatch.setattr(RecursiveDecoder, "_forward_on_regions", recorded)
    summary = train(tiny_config(tmp_path, *model, "dynamic_canvas=true", "dynamic_canvas_margin=0"))
    assert squares and min(squares) < CANVAS  # some batches ran on less than the canvas
    assert summary["steps"] == 6
    assert json.loads((tmp_path / "eval.json").read_text())["num_tasks"] == 3


def test_the_fixed_canvas_is_the_default(tiny_config, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a fixed-canvas run cropped a batch")

    monkeypatch.setattr(RecursiveDecoder, "_forward_on_regions", refuse)
    assert train(tiny_config(tmp_path, "max_steps=2"))["steps"] == 2
