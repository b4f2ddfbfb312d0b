"""Loading TRM checkpoints, and the decoder against numbers from the TRM reference code."""

from pathlib import Path

import pytest
import torch

from etrm.core.errors import ConfigError
from etrm.models import ACTModel, DecoderConfig, PuzzleEmbedding, RecursiveDecoder, load_trm_checkpoint
from etrm.models.trm_checkpoint import CheckpointError, trm_name

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared/fixtures/trm_reference_small.pt"


@pytest.fixture(scope="module")
def reference(reference_fixture) -> dict:
    return reference_fixture(FIXTURE.name)


def test_decoder_reproduces_the_trm_reference_at_every_act_step(reference):
    config = reference["config"]
    model = load_trm_checkpoint(FIXTURE, **config).eval()
    batch = {
        "inputs": reference["inputs"],
        "puzzle_identifiers": reference["puzzle_identifiers"],
        "labels": torch.zeros_like(reference["inputs"]),
    }
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(config["halt_max_steps"]):
            carry, outputs = model(carry, batch)
            torch.testing.assert_close(outputs["logits"], reference["logits"][step], atol=1e-4, rtol=0)
            for key in ("q_halt_logits", "q_continue_logits"):
                torch.testing.assert_close(outputs[key], reference[key][step], atol=1e-4, rtol=0)
    assert carry.halted.all()


def tiny_trm_state_dict() -> dict[str, torch.Tensor]:
    """A state dict with official TRM key names, from a small model of this project."""
    config = DecoderConfig(hidden_size=16, num_heads=2, num_layers=2, seq_len=4, context_len=2)
    model = ACTModel(PuzzleEmbedding(3, 16, 2, 16), RecursiveDecoder(config))
    return {f"_orig_mod.model.inner.{trm_name(name)}": value for name, value in model.state_dict().items()}


TINY_ARCH = dict(hidden_size=16, num_heads=2, L_layers=2, H_cycles=2, L_cycles=2, seq_len=4, grid_side=2,
                 puzzle_emb_len=2)


def test_state_dict_round_trips_through_trm_names():
    state = tiny_trm_state_dict()
    model = load_trm_checkpoint(state, **TINY_ARCH)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[f"_orig_mod.model.inner.{trm_name(name)}"]), name
    assert model.context_source.table.weight.shape == (3, 16)


def test_unknown_architecture_key_is_rejected():
    with pytest.raises(ConfigError, match="H_layers"):
        load_trm_checkpoint(tiny_trm_state_dict(), **TINY_ARCH, H_layers=0)


def test_missing_and_unexpected_keys_are_named():
    state = tiny_trm_state_dict()
    del state["_orig_mod.model.inner.L_level.layers.1.mlp.down_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing checkpoint key 'L_level\.layers\.1\.mlp\.down_proj"):
        load_trm_checkpoint(state, **TINY_ARCH)

    state = tiny_trm_state_dict()
    state["_orig_mod.model.inner.extra_head.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected checkpoint key 'extra_head.weight'"):
        load_trm_checkpoint(state, **TINY_ARCH)

    with pytest.raises(CheckpointError, match="unexpected checkpoint key 'L_level.layers.1"):
        load_trm_checkpoint(tiny_trm_state_dict(), **{**TINY_ARCH, "L_layers": 1})

    with pytest.raises(CheckpointError, match="has shape"):
        load_trm_checkpoint(tiny_trm_state_dict(), **{**TINY_ARCH, "vocab_size": 10})
