"""The TRM baseline trains through the same loop, and a pretrained decoder loads into a new run
only when its recursion settings match (facts section 6, bug 10)."""

from __future__ import annotations

import json

import pytest
import torch

from etrm.core import distributed
from etrm.core.checkpoint import read_checkpoint
from etrm.core.errors import ConfigError
from etrm.eval.evaluate import evaluate_run
from etrm.train.loop import Trainer, train
from etrm.train.metrics import read_metrics

CPU = distributed.Runtime(torch.device("cpu"))


def test_trm_baseline_trains_and_updates_only_the_rows_it_used(tiny_config, tmp_path):
    config = tiny_config(tmp_path / "trm", "model_type=trm", "augmentations_per_task=4", "halt_exploration_prob=0")
    trainer = Trainer(config, CPU)
    table_rows = trainer.model.context_source.table.weight.shape[0]
    assert table_rows == trainer.data.enumerated.num_ids + 1  # one row per (task, augmentation) + the blank row
    used, offered = set(), set()
    original_step = trainer.train_step

    def recording_step(batch):
        offered.update(batch["puzzle_identifiers"].tolist())
        metrics = original_step(batch)
        used.update(trainer.state.carry.current_data["puzzle_identifiers"].tolist())  # the samples actually run
        return metrics

    trainer.train_step = recording_step
    trainer.run()

    records = read_metrics(config.run_dir, "train")
    assert [r["step"] for r in records] == list(range(1, config.max_steps + 1))
    assert all(r["loss"] == r["loss"] for r in records)
    assert json.loads((tmp_path / "trm" / "eval.json").read_text())["num_tasks"] == 3

    table = read_checkpoint(trainer.checkpoint_path)["model"]["context_source.table.weight"]
    changed = set(torch.nonzero(table.abs().sum(1)).flatten().tolist())  # the table starts at zero
    assert changed == used  # sign-SGD moved exactly the rows of the samples run
    assert offered - used  # rows offered by batches that found no free slot stayed zero
    blank = table_rows - 1
    assert blank not in offered and not bool(table[blank].any())  # the held-out tasks' blank row stays zero

    summary = evaluate_run(trainer.run_dir, ["eval.num_augmentations=1", f"eval.out_dir={tmp_path / 'again'}"])
    assert summary["num_tasks"] == 3 and summary["num_predictions"] == summary["num_test_inputs"]


def _decoder_weights(state_dict: dict) -> dict:
    return {k.removeprefix("decoder."): v for k, v in state_dict.items() if k.startswith("decoder.")}


def test_pretrained_decoder_is_loaded_before_the_first_step(finished_run, tiny_config, tmp_path):
    source = _decoder_weights(read_checkpoint(finished_run / "checkpoint.pt")["model"])
    fresh = Trainer(tiny_config(tmp_path / "fresh", "seed=1"), CPU)
    loaded = Trainer(tiny_config(tmp_path / "loaded", "seed=1", f"load_pretrained_decoder={finished_run}"), CPU)
    fresh_weights = fresh.model.decoder.state_dict()
    weights = loaded.model.decoder.state_dict()
    assert weights.keys() == source.keys()
    assert any(not torch.equal(fresh_weights[k], source[k]) for k in source)  # the load is what made them equal
    for key, value in source.items():
        assert torch.equal(weights[key], value), key
    if loaded.ema is not None:  # evaluation weights (the EMA of the parameters) start from the loaded decoder too
        parameters = {name for name, _ in loaded.model.decoder.named_parameters()}
        assert parameters and parameters < source.keys()
        for key in parameters:
            assert torch.equal(loaded.ema.state_dict()[f"decoder.{key}"], source[key]), key
    # the encoder is not touched by the load
    for (name, a), (_, b) in zip(fresh.model.context_source.named_parameters(),
                                 loaded.model.context_source.named_parameters(), strict=True):
        assert torch.equal(a, b), name


def test_pretrained_decoder_from_a_checkpoint_file(finished_run, tiny_config, tmp_path):
    file = finished_run / "checkpoint.pt"
    loaded = Trainer(tiny_config(tmp_path / "loaded", f"load_pretrained_decoder={file}"), CPU)
    source = _decoder_weights(read_checkpoint(file)["model"])
    assert all(torch.equal(loaded.model.decoder.state_dict()[k], v) for k, v in source.items())


@pytest.mark.parametrize(("override", "key"), [("model.l_cycles=3", "l_cycles"), ("model.h_cycles=3", "h_cycles"),
                                               ("model.num_layers=3", "num_layers")])
def test_pretrained_decoder_with_other_recursion_settings_is_refused(finished_run, tiny_config, tmp_path,
                                                                     override, key):
    config = tiny_config(tmp_path / "run", override, f"load_pretrained_decoder={finished_run}")
    with pytest.raises(ConfigError) as caught:
        train(config)
    message = str(caught.value)
    assert key in message and len(message.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("optimizer", ["adamw", "adam_atan2"])
def test_frozen_decoder_stays_unchanged_while_the_encoder_learns(finished_run, tiny_config, tmp_path, optimizer):
    config = tiny_config(tmp_path / "run", "freeze_decoder_steps=2", f"optimizer={optimizer}", "lr_warmup_steps=1",
                         f"load_pretrained_decoder={finished_run}")
    trainer = Trainer(config, CPU)
    from etrm.data.tensors import to_torch

    def snapshot(module):
        return {k: v.detach().clone() for k, v in module.named_parameters()}

    decoder_start, encoder_before = snapshot(trainer.model.decoder), snapshot(trainer.model.context_source)
    for step in range(3):
        trainer.train_step(to_torch(trainer.sampler.batch(step, config.global_batch_size)))
        trainer.state.step += 1
        decoder_now, encoder_now = snapshot(trainer.model.decoder), snapshot(trainer.model.context_source)
        decoder_same = all(torch.equal(decoder_now[k], decoder_start[k]) for k in decoder_start)
        assert decoder_same == (trainer.state.step <= 2), trainer.state.step
        assert any(not torch.equal(encoder_now[k], encoder_before[k]) for k in encoder_now), trainer.state.step
        encoder_before = encoder_now


def test_init_weights_from_starts_a_new_run_from_every_weight_of_a_finished_one(finished_run, tiny_config, tmp_path):
    state = read_checkpoint(finished_run / "checkpoint.pt")
    source = {**state["model"], **state["ema"]}  # the weights the finished run evaluates with
    fresh = Trainer(tiny_config(tmp_path / "fresh", "seed=1"), CPU)
    loaded = Trainer(tiny_config(tmp_path / "loaded", "seed=1", f"init_weights_from={finished_run}"), CPU)
    weights = loaded.model.state_dict()
    assert weights.keys() == source.keys()
    assert any(name.startswith("context_source.encoder") and not torch.equal(fresh.model.state_dict()[name], value)
               for name, value in source.items())  # the encoder too, not only the decoder
    for name, value in source.items():
        assert torch.equal(weights[name], value), name
    for name, value in loaded.ema.state_dict().items():  # the new run's evaluation weights start there too
        assert torch.equal(value, source[name]), name
    # A new run, not a resumed one: step 0 and an optimiser with no moments yet.
    assert loaded.state.step == 0 and all(not optimizer.state for optimizer in loaded.optimizers)


@pytest.mark.parametrize(("override", "named"), [
    ("model.hidden_size=48", "model.hidden_size=32"),
    ("model.l_cycles=3", "model.l_cycles=2"),  # the same shapes, another computation
    ("encoder.num_layers=2", "encoder.num_layers=1"),
    ("dynamic_canvas=true", "fixed canvas"),
])
def test_init_weights_from_a_run_of_another_model_is_refused(finished_run, tiny_config, tmp_path, override, named):
    config = tiny_config(tmp_path / "run", override, f"init_weights_from={finished_run}")
    with pytest.raises(ConfigError) as caught:
        train(config)
    message = str(caught.value)
    assert named in message and "init_weights_from" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_init_weights_from_nothing_or_with_a_pretrained_decoder_is_refused(finished_run, tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="not a finished run"):
        Trainer(tiny_config(tmp_path / "run", f"init_weights_from={tmp_path / 'missing'}"), CPU)
    with pytest.raises(ConfigError, match="both set"):
        tiny_config(tmp_path / "run", f"init_weights_from={finished_run}", f"load_pretrained_decoder={finished_run}")
