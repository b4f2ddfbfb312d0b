"""Checkpoints written before the encoders were refactored (commit a1e7923 and earlier) still load.

The standard encoder then held its pair transformer and pooling itself (`encoder.pair.*`,
`encoder.pool.*`, now `encoder.demos.*`), and the set cross-attention its attention and MLP
(`aggregate.attention.*`, `aggregate.mlp.*`, now `aggregate.block.*`). The old names below
are copied from a checkpoint that commit wrote.
"""

import pytest
import torch

from etrm.core.config import load_config
from etrm.models.build import build_model, load_evaluation_weights

OLD_NAMES = (  # as they stand in a checkpoint of commit a1e7923 (hidden 16, one encoder layer)
    "context_source.encoder.pair.input_embed.weight",
    "context_source.encoder.pair.layers.0.attention.qkv.weight",
    "context_source.encoder.pair.layers.0.mlp.gate_up.weight",
    "context_source.encoder.aggregate.queries",
    "context_source.encoder.aggregate.attention.q_proj.weight",
    "context_source.encoder.aggregate.attention.kv_proj.weight",
    "context_source.encoder.aggregate.mlp.down.weight",
    "context_source.encoder.project.weight",
)


def _to_old_names(state: dict) -> dict:
    old = {}
    for key, value in state.items():
        key = key.replace("encoder.demos.", "encoder.").replace("aggregate.block.", "aggregate.")
        old[key] = value
    return old


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_an_old_standard_encoder_checkpoint_loads_under_the_new_names(tiny, tmp_path, pooling):
    config = load_config(tiny(tmp_path, "encoder.num_layers=1", f"encoder.pooling={pooling}"))
    torch.manual_seed(0)
    trained = build_model(config)
    old = _to_old_names(trained.state_dict())
    assert set(OLD_NAMES) <= old.keys()
    assert not any(".demos." in key or ".block." in key for key in old)
    ema = {k: v + 1.0 for k, v in old.items() if k.endswith(".weight")}
    torch.manual_seed(1)
    fresh = build_model(config)
    load_evaluation_weights(fresh, {"model": old, "ema": ema})
    for name, value in fresh.state_dict().items():
        expected = trained.state_dict()[name]
        if _to_old_names({name: None}).popitem()[0] in ema:
            expected = expected + 1.0  # the EMA's weights win, under the new name too
        assert torch.equal(value, expected), name


def test_an_old_checkpoint_resumes_with_its_ema_under_the_new_names(tiny, tmp_path):
    # The resume path: model and EMA under the old names, plus the entries older EMAs also held
    # (the fixed buffers), must restore exactly; an unknown EMA entry is an error, not skipped.
    from etrm.core.checkpoint import read_checkpoint, write_checkpoint
    from etrm.train.loop import train

    run_dir = tmp_path / "run"
    train(load_config(tiny(run_dir, "encoder.num_layers=1", "max_steps=3", "final_eval=false")))
    path = run_dir / "checkpoint.pt"
    state = read_checkpoint(path)
    state["model"], state["ema"] = _to_old_names(state["model"]), _to_old_names(state["ema"])
    state["ema"]["decoder.H_init"] = state["model"]["decoder.H_init"]
    assert set(OLD_NAMES) <= state["ema"].keys()
    write_checkpoint(path, state)

    from etrm.core.distributed import Runtime
    from etrm.train.loop import Trainer

    config = load_config(tiny(run_dir, "encoder.num_layers=1", "max_steps=3", "resume=true"))
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    trainer.restore()
    for name, value in trainer.ema.state_dict().items():
        assert torch.equal(value, state["ema"][_to_old_names({name: None}).popitem()[0]]), name
    state["ema"]["context_source.encoder.no_such.weight"] = torch.zeros(1)
    write_checkpoint(path, state)
    with pytest.raises(KeyError, match="no_such"):
        Trainer(config, Runtime(torch.device("cpu"))).restore()
