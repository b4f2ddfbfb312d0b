"""Build TRM or ETRM from a run config: one decoder, two context sources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml

from etrm.errors import ConfigError
from etrm.models.decoder import ACTModel, DecoderConfig, RecursiveDecoder
from etrm.models.encoders import EncoderContext, build_encoder
from etrm.models.puzzle_embedding import PuzzleEmbedding

VOCAB_SIZE = 12


def decoder_config(config: Any) -> DecoderConfig:
    """The decoder's config from a `RunConfig` (sizes from `model`, halting from the top level)."""
    model = config.model
    return DecoderConfig(
        hidden_size=model.hidden_size, num_heads=model.num_heads, expansion=model.expansion,
        num_layers=model.num_layers, h_cycles=model.h_cycles, l_cycles=model.l_cycles,
        seq_len=config.canvas_side**2, context_len=model.context_len, vocab_size=VOCAB_SIZE,
        rope_theta=model.rope_theta, halt_max_steps=config.halt_max_steps,
        halt_exploration_prob=config.halt_exploration_prob,
    )


def build_model(config: Any, num_puzzle_ids: int = 0) -> ACTModel:
    """TRM (`model_type=trm`: a learned embedding per (task, augmentation)) or ETRM (an encoder)."""
    decoder = RecursiveDecoder(decoder_config(config))
    hidden, context_len = config.model.hidden_size, config.model.context_len
    if config.model_type == "trm":
        if num_puzzle_ids < 1:
            raise ConfigError("model_type=trm needs at least one puzzle identifier")
        source = PuzzleEmbedding(num_puzzle_ids, hidden, context_len, hidden)
    else:
        source = EncoderContext(build_encoder(config.encoder, hidden, context_len, config.canvas_side**2,
                                              VOCAB_SIZE))
    return ACTModel(source, decoder)


def compile_model(model: ACTModel) -> ACTModel:
    """torch.compile for the training step. ETRM: the whole model. TRM: the decoder only, since
    inductor cannot compile the sparse puzzle embedding ("Cannot access storage of
    SparseTensorImpl"). Compiled in place, so parameter names and checkpoints are unchanged."""
    if isinstance(model.context_source, PuzzleEmbedding):
        model.decoder.compile()
    else:
        model.compile()
    return model


def _check_cycles(saved: dict, config: Any, where: str) -> None:
    # The earlier ETRM ran a decoder trained with L_cycles=4 at L_cycles=6: refuse such drift.
    for ours, theirs in (("h_cycles", "H_cycles"), ("l_cycles", "L_cycles"), ("num_layers", "L_layers"),
                         ("hidden_size", "hidden_size")):
        value = saved.get(ours, saved.get(theirs))
        if value is not None and value != getattr(config.model, ours):
            raise ConfigError(f"{where}: pretrained decoder has {ours}={value} but model.{ours}="
                              f"{getattr(config.model, ours)}; set model.{ours}={value}")


def load_pretrained_decoder(model: ACTModel, path: str | Path, config: Any) -> None:
    """Load decoder weights from one of our checkpoints or an official TRM checkpoint.

    Any puzzle embedding in the file is dropped. When the run's saved config (ours:
    `config.yaml` beside the checkpoint; TRM: `all_config.yaml`) is present, its cycle counts
    and sizes must match this model's.
    """
    from etrm.models.trm_checkpoint import convert_trm_state_dict
    from etrm.train.checkpoint import read_checkpoint

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    state = read_checkpoint(file)
    for name in ("config.yaml", "all_config.yaml"):
        saved_config = file.parent / name
        if saved_config.is_file():
            saved = yaml.safe_load(saved_config.read_text()) or {}
            _check_cycles({**saved.get("arch", {}), **saved.get("model", {})}, config, str(saved_config))
    if "model" in state:  # one of ours
        weights = {k.removeprefix("decoder."): v for k, v in state["model"].items() if k.startswith("decoder.")}
    else:
        weights = convert_trm_state_dict(state)
    missing, unexpected = model.decoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{file}: decoder weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        model.decoder.H_init.copy_(weights["H_init"])
