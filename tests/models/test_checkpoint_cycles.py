"""Cycle counts when loading a decoder: never from defaults for a file that does not say them.

The earlier implementation ran a decoder trained at L_cycles=4 with L_cycles=6. A bare official
TRM `.pt` carries no config, so both loaders (`load_trm_checkpoint`, `load_pretrained_decoder`)
must be told H_cycles and L_cycles; a file with a config refuses a mismatch.
"""

import pytest
import torch
import yaml

from etrm.core.errors import ConfigError
from etrm.models import ACTModel, DecoderConfig, PuzzleEmbedding, RecursiveDecoder, load_trm_checkpoint
from etrm.models.trm_checkpoint import trm_name

ARCH = dict(hidden_size=16, num_heads=2, L_layers=2, seq_len=4, grid_side=2, puzzle_emb_len=2)


def _bare_trm_file(tmp_path, h_cycles=2, l_cycles=3):
    config = DecoderConfig(hidden_size=16, num_heads=2, num_layers=2, seq_len=4, context_len=2,
                           h_cycles=h_cycles, l_cycles=l_cycles)
    model = ACTModel(PuzzleEmbedding(3, 16, 2, 16), RecursiveDecoder(config))
    state = {f"_orig_mod.model.inner.{trm_name(n)}": v for n, v in model.state_dict().items()}
    path = tmp_path / "official" / "step_1000.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path


def test_bare_trm_file_needs_both_cycle_counts(tmp_path):
    path = _bare_trm_file(tmp_path)
    for given in ({}, {"H_cycles": 2}, {"L_cycles": 3}):
        with pytest.raises(ConfigError) as caught:
            load_trm_checkpoint(path, **ARCH, **given)
        message = str(caught.value)
        missing = {"H_cycles", "L_cycles"} - set(given)  # each count not given is named
        assert "carries no config" in message and all(name in message for name in missing), message
        assert len(message.splitlines()) == 1
    model = load_trm_checkpoint(path, **ARCH, H_cycles=2, L_cycles=3)
    assert (model.config.h_cycles, model.config.l_cycles) == (2, 3)


def test_trm_file_with_a_config_beside_it_takes_and_checks_it(tmp_path):
    path = _bare_trm_file(tmp_path)
    (path.parent / "all_config.yaml").write_text(yaml.safe_dump({"arch": {"H_cycles": 2, "L_cycles": 3,
                                                                          "name": "recursive_reasoning"}}))
    model = load_trm_checkpoint(path, **ARCH)  # cycles from the file's config, not the defaults (3, 4)
    assert (model.config.h_cycles, model.config.l_cycles) == (2, 3)
    with pytest.raises(ConfigError, match="L_cycles=3, asked for L_cycles=6"):
        load_trm_checkpoint(path, **ARCH, L_cycles=6)


def test_pretrained_decoder_from_a_bare_file_needs_the_cycles(tmp_path, tiny):
    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.train.loop import Trainer

    # A decoder of the tiny run's shape (hidden 32, 2 layers, canvas 6, context 16), saved bare.
    probe = load_config(tiny(tmp_path / "probe", "model.h_cycles=2", "model.l_cycles=3"))
    donor = Trainer(probe, Runtime(torch.device("cpu"))).model
    state = {f"_orig_mod.model.inner.{trm_name(n)}": v for n, v in donor.state_dict().items()
             if n.startswith("decoder.")}
    path = tmp_path / "bare.pt"
    torch.save(state, path)

    def trainer(*extra):
        return Trainer(load_config(tiny(tmp_path / "run", f"load_pretrained_decoder={path}", *extra)),
                       Runtime(torch.device("cpu")))

    with pytest.raises(ConfigError, match="carries no config; give H_cycles and L_cycles"):
        trainer("model.h_cycles=2", "model.l_cycles=3")  # the model's own settings are not a statement
    with pytest.raises(ConfigError, match="pretrained decoder has l_cycles=3 but model.l_cycles=4"):
        trainer("pretrained_h_cycles=2", "pretrained_l_cycles=3", "model.h_cycles=2", "model.l_cycles=4")
    loaded = trainer("pretrained_h_cycles=2", "pretrained_l_cycles=3", "model.h_cycles=2", "model.l_cycles=3")
    for name, value in donor.decoder.state_dict().items():
        assert torch.equal(loaded.model.decoder.state_dict()[name], value), name
