"""The run config: unknown keys and bad values are one-line errors, the guide's knobs exist,
every preset loads, and config values reach the model (facts section 6, bug 7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from etrm.core.config import CONFIG_DIR, ModelConfig, RunConfig, available_presets, load_config
from etrm.core.errors import ConfigError
from etrm.models.build import build_model, decoder_config


@pytest.mark.parametrize(("override", "key"), [("lrr=1", "lrr"), ("encoder.poolin=mean", "encoder.poolin"),
                                               ("+lrr=1", "lrr"), ("model.hiden_size=64", "model.hiden_size")])
def test_unknown_key_is_a_one_line_config_error_naming_the_key(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config(["preset=cpu-demo", override])
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert f"'{key}'" in message


@pytest.mark.parametrize(("override", "key"), [("lrr=1", "lrr"), ("encoder.poolin=mean", "encoder.poolin")])
def test_cli_unknown_key_exits_2_with_one_error_line(etrm_cli, tmp_path, override, key):
    result = etrm_cli("train", "preset=cpu-demo", f"run_dir={tmp_path / 'run'}", override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("etrm: error:")
    assert key in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "key"), [
    ("encoder.pooling=median", "encoder.pooling"), ("model_type=hrm", "model_type"),
    ("optimizer=sgd", "optimizer"), ("lr_schedule=linear", "lr_schedule"), ("eval.split=valid", "eval.split"),
    ("device=tpu", "device"), ("tracker=mlflow", "tracker"),
])
def test_bad_enum_value_names_the_key_and_the_choices(override, key):
    with pytest.raises(ConfigError) as caught:
        load_config([override])
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(key)
    assert "not one of" in message


@pytest.mark.parametrize("override", ["lr=abc", "max_steps=0", "canvas_side=31", "halt_exploration_prob=1.5",
                                      "grad_clip_norm=0", "dynamic_canvas_margin=-1",
                                      "context_includes_query_decay_steps=-1",
                                      "global_batch_size", "preset=nonexistent"])
def test_other_bad_values_are_one_line_config_errors(override):
    with pytest.raises(ConfigError) as caught:
        load_config([override])
    assert len(str(caught.value).splitlines()) == 1


def test_plus_prefix_is_accepted_as_a_plain_override():
    assert load_config(["+project_name=x"]).project_name == "x"
    assert load_config(["+encoder.num_layers=3"]).encoder.num_layers == 3


def test_defaults_of_the_guide():
    config = load_config([])
    assert config.halt_loss_weight == 0.5
    assert config.grad_clip_norm == 1.0  # facts section 6, bug 4: ETRM collapsed without clipping
    assert config.run_name == "default"  # run_name defaults to the preset's name


def test_every_knob_of_the_guide_exists_and_is_applied(tmp_path):
    values = {
        "max_train_groups": 7, "max_eval_groups": 5, "project_name": "proj", "run_name": "named",
        "halt_max_steps": 5, "halt_exploration_prob": 0.25, "halt_loss_weight": 0.75, "lr": 0.003,
        "grad_clip_norm": 2.5, "global_batch_size": 12, "encoder.num_layers": 3, "encoder.hidden_size": 48,
        "encoder.pooling": "attention", "load_pretrained_decoder": str(tmp_path / "somewhere"),
        "freeze_decoder_steps": 9, "max_steps": 11, "checkpoint_every": 4, "run_dir": str(tmp_path / "r"),
        "seed": 13,
    }
    config = load_config([f"{key}={value}" for key, value in values.items()])
    for key, value in values.items():
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == value, key


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_loads(preset):
    config = load_config([f"preset={preset}"])
    assert isinstance(config, RunConfig)
    assert config.preset == preset and config.run_name == preset


def test_the_preset_files_are_the_ones_listed():
    files = sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))
    assert files == available_presets()
    assert {"default", "cpu-demo"} <= set(files)  # the default, and the one these tests build on


def test_every_model_key_reaches_the_decoder():
    # Bug 7: config keys the model did not know were silently dropped.
    changed = {"hidden_size": 48, "num_heads": 3, "expansion": 3.0, "num_layers": 3, "h_cycles": 5,
               "l_cycles": 7, "context_len": 5, "rope_theta": 500.0,
               "place_embedding": True, "place_grid_edges": True}
    assert set(changed) == {f.name for f in dataclasses.fields(ModelConfig)}
    config = load_config(["canvas_side=7", "halt_max_steps=9", "halt_exploration_prob=0.3",
                          *[f"model.{k}={v}" for k, v in changed.items()]])
    built = decoder_config(config)
    for key, value in changed.items():
        assert getattr(built, key) == value, key
    assert (built.seq_len, built.halt_max_steps, built.halt_exploration_prob) == (49, 9, 0.3)


def _parameter_count(overrides: list[str]) -> int:
    torch.manual_seed(0)
    config = load_config(["canvas_side=5", "model.hidden_size=32", "model.num_heads=2", *overrides])
    return sum(p.numel() for p in build_model(config).context_source.encoder.parameters())


@pytest.mark.parametrize(("base", "changed"), [
    (["encoder.num_layers=1"], ["encoder.num_layers=2"]),
    (["encoder.hidden_size=32", "encoder.num_heads=2"], ["encoder.hidden_size=64", "encoder.num_heads=2"]),
    (["encoder.pooling=mean"], ["encoder.pooling=attention"]),
    (["encoder.expansion=2.0"], ["encoder.expansion=16.0"]),  # inner size rounds up to 256
])
def test_encoder_keys_change_the_built_encoder(base, changed):
    fixed = ["encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1"]
    assert _parameter_count([*fixed, *base]) != _parameter_count([*fixed, *changed])


@pytest.mark.parametrize(("overrides", "names"), [
    (["ttt.grad_clip=0"], "ttt.grad_clip"), (["ttt.grad_clip=-1"], "ttt.grad_clip"),
    (["ttt.lr=0"], "ttt.lr"), (["ttt.lr=-0.01"], "ttt.lr"), (["ttt.lr=inf"], "ttt.lr"),
    (["eval.periodic_splits=tst"], "eval.periodic_splits"), (["eval.periodic_splits=train,train"], "periodic_splits"),
    (["eval.periodic_splits=test,validation"], "eval.periodic_splits"),
    (["dynamic_canvas=true", "dynamic_canvas_keys=square", "ttt.steps=4", "ttt.tasks_per_batch=2"], "tasks_per_batch"),
    (["dynamic_canvas=true", "load_pretrained_decoder=some/run"], "load_pretrained_decoder"),
    (["encoder.type=demo_cells", "model.context_len=16"], "model.context_len"),
])
def test_settings_that_would_silently_give_wrong_answers_are_refused(overrides, names):
    with pytest.raises(ConfigError) as caught:
        load_config(["preset=cpu-demo", *overrides])
    assert len(str(caught.value).splitlines()) == 1 and names in str(caught.value)


@pytest.mark.parametrize("overrides", [
    ["dynamic_canvas=true", "dynamic_canvas_keys=square", "ttt.steps=4", "ttt.tasks_per_batch=1"],
    ["dynamic_canvas=true", "dynamic_canvas_keys=region", "ttt.steps=4", "ttt.tasks_per_batch=16"],
    ["eval.periodic_splits=test"], ["eval.periodic_splits='test,train'"],
    ["encoder.type=demo_cells", "model.context_len=360", "max_demos=10", "canvas_side=6"],
])
def test_their_safe_neighbours_load(overrides):
    load_config(["preset=cpu-demo", *overrides])


@pytest.mark.parametrize(("overrides", "expected"), [
    (["encoder.type=demo_cells", "max_demos=10", "canvas_side=6"], 360),  # a position per demo cell
    (["encoder.type=demo_cells", "max_demos=10", "canvas_side=6", "model_type=trm", "augmentations_per_task=2"],
     16),  # the rows of its puzzle embedding
    (["encoder.type=standard"], 16),
    (["encoder.type=demo_cells", "max_demos=4", "canvas_side=8", "model.context_len=256"], 256),  # given: kept
])
def test_a_null_context_length_is_the_context_sources_own(overrides, expected, tmp_path):
    from etrm.core.config import config_from_yaml, to_yaml

    config = load_config(["preset=cpu-demo", "model.context_len=null", *overrides])
    assert config.model.context_len == expected
    # A run saves the resolved length, and loading it keeps it.
    (tmp_path / "config.yaml").write_text(to_yaml(config))
    assert config_from_yaml(tmp_path / "config.yaml").model.context_len == expected


def test_a_run_saved_with_the_removed_eval_checkpoint_key_still_loads(tmp_path):
    from etrm.core.config import config_from_yaml, to_yaml

    saved = to_yaml(load_config(["preset=cpu-demo"])).replace("eval:\n", "eval:\n  checkpoint: ''\n", 1)
    (tmp_path / "config.yaml").write_text(saved)
    assert config_from_yaml(tmp_path / "config.yaml").preset == "cpu-demo"
