"""Build TRM, ETRM or the rule oracle from a run config: one decoder, three context sources."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from etrm.core.config import RunConfig
from etrm.core.errors import ConfigError
from etrm.data.encoding import VOCAB_SIZE
from etrm.models.decoder import ACTModel, DecoderConfig, RecursiveDecoder
from etrm.models.encoders import EncoderContext, build_encoder, rename_legacy_keys
from etrm.models.oracle import RuleOracle
from etrm.models.puzzle_embedding import PUZZLE_TABLE_PARAMETER, PuzzleEmbedding


def decoder_config(config: RunConfig) -> DecoderConfig:
    """The decoder's config from a `RunConfig` (sizes from `model`, halting from the top level)."""
    return DecoderConfig(**dataclasses.asdict(config.model), seq_len=config.canvas_side**2,
                         halt_max_steps=config.halt_max_steps, halt_exploration_prob=config.halt_exploration_prob,
                         region_keys_only=config.dynamic_canvas_keys == "region")


def build_model(config: RunConfig, num_puzzle_ids: int = 0, atom_keys: torch.Tensor | None = None) -> ACTModel:
    """TRM (`model_type=trm`: a learned embedding per (task, augmentation)), ETRM (an encoder),
    or the oracle (`model_type=oracle`: one learned vector per rule atom of `atom_keys`)."""
    decoder = RecursiveDecoder(decoder_config(config))
    hidden, context_len = config.model.hidden_size, config.model.context_len
    if config.model_type == "trm":
        if num_puzzle_ids < 1:
            raise ConfigError("model_type=trm needs at least one puzzle identifier")
        source = PuzzleEmbedding(num_puzzle_ids, hidden, context_len, hidden)
    elif config.model_type == "oracle":
        if atom_keys is None or atom_keys.numel() == 0:
            raise ConfigError("model_type=oracle needs training tasks with rule labels (synth: sources); "
                              f"train_sources={config.train_sources} have none")
        source = RuleOracle(atom_keys, hidden, context_len)
    else:
        source = EncoderContext(build_encoder(config.encoder, hidden, context_len, config.canvas_side**2,
                                              VOCAB_SIZE))
    return ACTModel(source, decoder)


def load_evaluation_weights(model: ACTModel, state: dict[str, Any]) -> None:
    """Load a checkpoint's weights for evaluation: its EMA over the trained weights where it has
    one (the puzzle table as trained: older checkpoints also averaged it), names written before
    a module renamed its parameters mapped to today's."""
    ema = {k: v for k, v in state.get("ema", {}).items() if k != PUZZLE_TABLE_PARAMETER}
    model.load_state_dict(rename_legacy_keys(model, {**state["model"], **ema}))


def compile_model(model: ACTModel) -> ACTModel:
    """torch.compile for the training step. ETRM: the whole model. TRM: the decoder only, since
    inductor cannot compile the sparse puzzle embedding ("Cannot access storage of
    SparseTensorImpl"). Compiled in place, so parameter names and checkpoints are unchanged."""
    if isinstance(model.context_source, PuzzleEmbedding):
        model.decoder.compile()
    else:
        model.compile()
    return model


def load_pretrained_decoder(model: ACTModel, path: str | Path, config: RunConfig) -> None:
    """Load decoder weights from one of our checkpoints or an official TRM checkpoint.

    Any puzzle embedding in the file is dropped. The file's recursion settings (from its own
    config, or the run's `config.yaml` / TRM's `all_config.yaml` beside it) must equal this
    model's; a bare file carries none, so the run must state the cycle counts it was trained with
    (`pretrained_h_cycles`, `pretrained_l_cycles`), and those must equal the model's too.
    """
    from etrm.core.checkpoint import read_checkpoint
    from etrm.models.trm_checkpoint import (
        RECURSION_KEYS,
        convert_trm_state_dict,
        resolve_architecture,
        saved_architecture,
    )

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"load_pretrained_decoder={path}: no checkpoint at {file.resolve()} (a run directory or "
                          "checkpoint file; a preset that names a run there, e.g. enc-standard, needs that run "
                          "trained first: its comment says which)")
    state = read_checkpoint(file)
    declared = {"H_cycles": config.pretrained_h_cycles, "L_cycles": config.pretrained_l_cycles}
    arch = resolve_architecture(saved_architecture(state, file), declared, str(file))
    for ours, theirs in RECURSION_KEYS.items():
        value = arch.get(theirs)
        if value is not None and value != getattr(config.model, ours):
            raise ConfigError(f"{file}: pretrained decoder has {ours}={value} but model.{ours}="
                              f"{getattr(config.model, ours)}; set model.{ours}={value}")
    if "model" in state:  # one of ours
        weights = {k.removeprefix("decoder."): v for k, v in state["model"].items() if k.startswith("decoder.")}
    else:
        weights = convert_trm_state_dict(state)
    missing, unexpected = model.decoder.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{file}: decoder weights do not match (missing {missing[:3]}, unexpected {unexpected[:3]})")
    with torch.no_grad():
        model.decoder.H_init.copy_(weights["H_init"])


def run_files(target: str | Path, asked_by: str) -> tuple[Path, Path]:
    """(checkpoint, saved config.yaml) of one of our runs, `target` its directory or checkpoint
    file; a one-line error led by `asked_by` (what named it) when either is missing."""
    from etrm.core.checkpoint import CHECKPOINT_NAME

    target = Path(target)
    checkpoint = target / CHECKPOINT_NAME if target.is_dir() else target
    saved_config = checkpoint.parent / "config.yaml"
    if not (checkpoint.is_file() and saved_config.is_file()):
        raise ConfigError(f"{asked_by}: not a finished run of ours (needs {checkpoint.resolve()} and "
                          f"{saved_config.resolve()})")
    return checkpoint, saved_config


def load_run_weights(model: ACTModel, path: str | Path, config: RunConfig) -> None:
    """Start `model` from every weight of one of our runs (a run directory, or its checkpoint with
    `config.yaml` beside it): the weights that run evaluates with (its EMA where it kept one).

    A curriculum's next stage (level 1, then level 2 from its weights) or a fine-tune on other
    tasks; unlike `resume=true` it starts a new run (step 0, a fresh optimiser and data stream).
    The run must have built the same model (`model_type`, every `model.*` and `encoder.*`
    setting), since weights of the same shapes computed another way (cycle counts, rope_theta)
    would load silently, and a run trained on the fixed canvas cannot start a size-aware one.
    """
    from etrm.core.checkpoint import read_checkpoint
    from etrm.core.config import config_from_yaml

    file, saved_config = run_files(path, f"init_weights_from={path}")
    source = config_from_yaml(saved_config)
    settings = {"model_type": (source.model_type, config.model_type),
                **{f"model.{k}": (v, getattr(config.model, k)) for k, v in dataclasses.asdict(source.model).items()},
                **{f"encoder.{k}": (v, getattr(config.encoder, k))
                   for k, v in dataclasses.asdict(source.encoder).items()}}
    for key, (theirs, ours) in settings.items():
        if theirs != ours:
            raise ConfigError(f"init_weights_from={path}: that run has {key}={theirs}, this one {ours}; "
                              "its weights would compute another model")
    if config.dynamic_canvas and not source.dynamic_canvas:
        raise ConfigError(f"init_weights_from={path}: that run trained on the fixed canvas (its attention saw the "
                          "PAD keys that dynamic_canvas=true masks); train this one with dynamic_canvas=false")
    state = read_checkpoint(file)
    try:
        load_evaluation_weights(model, state)
    except RuntimeError as error:  # names or shapes differ: e.g. a puzzle table or oracle of other tasks
        raise ConfigError(f"init_weights_from={path}: weights do not fit this model "
                          f"({str(error).splitlines()[1].strip()})") from None
