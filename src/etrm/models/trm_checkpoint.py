"""Build a TRM (`RecursiveDecoder` + `PuzzleEmbedding`) from an official TRM checkpoint.

Official keys look like ``_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight``;
both prefixes are stripped and the names mapped to this project's modules. The architecture is
given with TRM's own config names (``hidden_size``, ``L_layers``, ``H_cycles``, ...).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from etrm.core.errors import ConfigError, EtrmError
from etrm.models.decoder import ACTModel, DecoderConfig, RecursiveDecoder
from etrm.models.puzzle_embedding import PuzzleEmbedding


class CheckpointError(EtrmError):
    """A checkpoint's keys or shapes do not match the model; the message names the key."""


# TRM config name -> DecoderConfig field.
DECODER_ARCH_KEYS = {
    "hidden_size": "hidden_size",
    "num_heads": "num_heads",
    "expansion": "expansion",
    "L_layers": "num_layers",
    "H_cycles": "h_cycles",
    "L_cycles": "l_cycles",
    "seq_len": "seq_len",
    "puzzle_emb_len": "context_len",
    "vocab_size": "vocab_size",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "halt_max_steps": "halt_max_steps",
    "halt_exploration_prob": "halt_exploration_prob",
}
OTHER_ARCH_KEYS = {"grid_side", "puzzle_emb_ndim", "num_puzzle_identifiers"}
# An official TRM file is TRM's: where its architecture does not say, its exploration is TRM's
# (0.1), not this project's run default (0.5, the ETRM runs').
TRM_HALT_EXPLORATION_PROB = 0.1

PUZZLE_TABLE_KEY = "puzzle_emb.weights"
TOP_LEVEL_NAMES = {
    "H_init": "decoder.H_init",
    "L_init": "decoder.L_init",
    "embed_tokens.embedding_weight": "decoder.embed_tokens.weight",
    "lm_head.weight": "decoder.lm_head.weight",
    "q_head.weight": "decoder.q_head.weight",
    "q_head.bias": "decoder.q_head.bias",
    PUZZLE_TABLE_KEY: "context_source.table.weight",
}
LAYER_PARTS = {
    "self_attn.qkv_proj": "attention.qkv",
    "self_attn.o_proj": "attention.out",
    "mlp.gate_up_proj": "mlp.gate_up",
    "mlp.down_proj": "mlp.down",
}
LAYER_NAME = re.compile(r"L_level\.layers\.(\d+)\.(" + "|".join(map(re.escape, LAYER_PARTS)) + r")\.weight")


def strip_prefixes(name: str) -> str:
    for prefix in ("_orig_mod.", "model.inner."):
        name = name.removeprefix(prefix)
    return name


def project_name(trm_key: str) -> str:
    """This project's state-dict name for a (prefix-stripped) TRM name."""
    if trm_key in TOP_LEVEL_NAMES:
        return TOP_LEVEL_NAMES[trm_key]
    match = LAYER_NAME.fullmatch(trm_key)
    if match is None:
        raise CheckpointError(f"unexpected checkpoint key {trm_key!r}")
    return f"decoder.layers.{match[1]}.{LAYER_PARTS[match[2]]}.weight"


def trm_name(our_name: str) -> str:
    """The TRM name (without prefixes) of one of this project's state-dict names."""
    for trm, ours in TOP_LEVEL_NAMES.items():
        if ours == our_name:
            return trm
    for trm_part, our_part in LAYER_PARTS.items():
        match = re.fullmatch(rf"decoder\.layers\.(\d+)\.{re.escape(our_part)}\.weight", our_name)
        if match:
            return f"L_level.layers.{match[1]}.{trm_part}.weight"
    return our_name


# The cycle counts a decoder must run at: never taken from defaults when a file does not say.
CYCLE_KEYS = ("H_cycles", "L_cycles")
# This project's run-config names (`model.*`) -> TRM's, for the settings a loaded decoder must keep.
RECURSION_KEYS = {"h_cycles": "H_cycles", "l_cycles": "L_cycles", "num_layers": "L_layers",
                  "hidden_size": "hidden_size"}


def saved_architecture(state: dict[str, Any], file: Path | None = None) -> dict[str, Any] | None:
    """The architecture a checkpoint carries, under TRM's names, or None when it carries none.

    Looked for in the file itself (a "config" entry: TRM names as a dict, or this project's saved
    run config as YAML text) and beside it (`all_config.yaml` of a TRM run, whose `arch` section
    holds the names; `config.yaml` of one of our runs, whose `model` section does).
    """
    saved = state.get("config")
    if isinstance(saved, dict):
        return {k: v for k, v in saved.items() if k in DECODER_ARCH_KEYS or k in OTHER_ARCH_KEYS}
    if isinstance(saved, str):
        return _from_run_config(yaml.safe_load(saved) or {})
    if file is not None:
        if (file.parent / "all_config.yaml").is_file():
            arch = (yaml.safe_load((file.parent / "all_config.yaml").read_text()) or {}).get("arch", {})
            return {k: v for k, v in arch.items() if k in DECODER_ARCH_KEYS or k in OTHER_ARCH_KEYS}
        if (file.parent / "config.yaml").is_file():
            return _from_run_config(yaml.safe_load((file.parent / "config.yaml").read_text()) or {})
    return None


def _from_run_config(run_config: dict[str, Any]) -> dict[str, Any]:
    model = run_config.get("model", {})
    return {theirs: model[ours] for ours, theirs in RECURSION_KEYS.items() if ours in model}


def resolve_architecture(saved: dict[str, Any] | None, given: dict[str, Any], where: str) -> dict[str, Any]:
    """The architecture to build: what the file says, with `given` (TRM names) agreeing with it.

    A file without a config must be told H_cycles and L_cycles explicitly: a decoder run at other
    cycle counts than it was trained with computes something else (the earlier implementation ran
    an L_cycles=4 decoder at 6), and no default can know them. A conflict with the file's config
    is refused.
    """
    if saved is None:
        missing = [key for key in CYCLE_KEYS if given.get(key) is None]
        if missing:
            raise ConfigError(f"{where}: the checkpoint carries no config; give {' and '.join(missing)} "
                              "explicitly (the cycle counts it was trained with)")
        return dict(given)
    for key, value in given.items():
        if key in saved and value is not None and value != saved[key]:
            raise ConfigError(f"{where}: the checkpoint's config has {key}={saved[key]}, asked for {key}={value}")
    return {**saved, **{k: v for k, v in given.items() if v is not None}}


def decoder_config_from_arch(arch: dict[str, Any], puzzle_emb_ndim: int) -> DecoderConfig:
    """Map TRM config names to a DecoderConfig; unknown names raise ConfigError."""
    unknown = sorted(set(arch) - set(DECODER_ARCH_KEYS) - OTHER_ARCH_KEYS)
    if unknown:
        known = sorted(set(DECODER_ARCH_KEYS) | OTHER_ARCH_KEYS)
        raise ConfigError(f"unknown TRM architecture key(s) {unknown}; known keys: {known}")
    fields = {DECODER_ARCH_KEYS[key]: value for key, value in arch.items() if key in DECODER_ARCH_KEYS}
    config = DecoderConfig(**{"halt_exploration_prob": TRM_HALT_EXPLORATION_PROB, **fields})
    if "expansion" in fields:
        config.expansion = float(config.expansion)
    if arch.get("puzzle_emb_len") == 0:  # TRM's 0 means "as many positions as the embedding needs"
        config.context_len = math.ceil(puzzle_emb_ndim / config.hidden_size)
    if "grid_side" in arch and arch["grid_side"] ** 2 != config.seq_len:
        raise ConfigError(f"grid_side {arch['grid_side']} does not match seq_len {config.seq_len}")
    return config


def convert_trm_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """An official TRM checkpoint's decoder weights under this project's `RecursiveDecoder` names
    (the puzzle embedding dropped)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    converted = {}
    for key, tensor in state.items():
        stripped = strip_prefixes(key)
        if stripped != PUZZLE_TABLE_KEY:
            converted[project_name(stripped).removeprefix("decoder.")] = tensor
    return converted


def load_trm_checkpoint(path_or_state_dict: str | Path | dict[str, Tensor], **arch: Any) -> ACTModel:
    """Build an `ACTModel` (PuzzleEmbedding + RecursiveDecoder) holding a TRM checkpoint's weights.

    `path_or_state_dict`: a state dict, or a file loaded with ``torch.load(weights_only=True)``
    holding a state dict or a dict with the state dict under "state_dict". `arch`: TRM config
    keys (hidden_size, num_heads, expansion, L_layers, H_cycles, L_cycles, seq_len, grid_side,
    puzzle_emb_len, puzzle_emb_ndim, num_puzzle_identifiers, vocab_size, rope_theta,
    rms_norm_eps, halt_max_steps, halt_exploration_prob). When the file carries its config (a
    "config" entry, or `all_config.yaml` beside it), `arch` must agree with it; when it carries
    none, H_cycles and L_cycles must be given (see `resolve_architecture`). Other keys missing
    from both take DecoderConfig defaults; the puzzle table's size defaults to the checkpoint's.
    """
    state, file = path_or_state_dict, None
    if isinstance(state, str | Path):
        file = Path(state)
        state = torch.load(file, map_location="cpu", weights_only=True)
    arch = resolve_architecture(saved_architecture(state, file), arch, str(file or "state dict"))
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    trm_state = {strip_prefixes(name): tensor for name, tensor in state.items()}
    if PUZZLE_TABLE_KEY not in trm_state:
        raise CheckpointError(f"missing checkpoint key {PUZZLE_TABLE_KEY!r}")

    num_ids, emb_ndim = trm_state[PUZZLE_TABLE_KEY].shape
    num_ids = arch.get("num_puzzle_identifiers", num_ids)
    emb_ndim = arch.get("puzzle_emb_ndim", emb_ndim)
    config = decoder_config_from_arch(arch, emb_ndim)
    model = ACTModel(
        PuzzleEmbedding(num_ids, emb_ndim, config.context_len, config.hidden_size), RecursiveDecoder(config)
    )

    expected = model.state_dict()
    loaded = {}
    for key, tensor in trm_state.items():
        name = project_name(key)
        if name not in expected:
            raise CheckpointError(f"unexpected checkpoint key {key!r} (the model has no {name!r})")
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint key {key!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
        loaded[name] = tensor
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(
            f"missing checkpoint key {trm_name(missing[0])!r} ({len(missing)} missing in all)"
        )
    model.load_state_dict(loaded)
    return model
