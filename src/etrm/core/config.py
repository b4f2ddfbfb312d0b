"""Typed run configuration: dataclass defaults, a preset YAML, dotted command-line overrides.

Three layers, in order: the dataclasses below (the schema and defaults), one preset from
`src/etrm/configs/preset/NAME.yaml` (package data, installed with etrm; `preset=overfit`), then
overrides (`lr=3e-4 encoder.num_layers=4`).
Hydra composes them against the schema in struct mode, so a misspelled or unknown key is an
error, never silently dropped. The resolved config is written beside every run
(`config.yaml`), and a resumed run reads it back from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from etrm.core.errors import ConfigError

# The Hydra configs (run.yaml, preset/*.yaml) ship inside the package, so a wheel install finds them too.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class ModelConfig:
    """The recursive decoder's sizes (TRM's reference sizes by default); the one place of their
    defaults (`etrm.models.DecoderConfig` extends it)."""

    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    num_layers: int = 2
    h_cycles: int = 3
    l_cycles: int = 4
    # Context positions before the canvas: TRM's puzzle-embedding rows, ETRM's context vectors
    # (cell_slots: its slots). None: the context source's own length, resolved when a config is
    # loaded: max_demos * canvas_side**2 for encoder.type=demo_cells (a position per demo cell),
    # else DEFAULT_CONTEXT_LEN.
    context_len: int | None = 16
    rope_theta: float = 10000.0
    # Not the reference: a learned row and column embedding added to every canvas cell's input (a
    # cell's place as content, beside its rotary angle), and to every context position that says
    # where it lies on the canvas (encoder.type=demo_cells: each demo cell, the same table).
    place_embedding: bool = False
    # Not the reference: with the place embedding, also each cell's distance to its grid's last
    # row and last column (the input grid's: the query's, each demo's), so a flip or a rotation,
    # which takes a place from one edge to the other, is a match of contents.
    place_grid_edges: bool = False


@dataclass
class EncoderConfig:
    """The demonstration encoder of ETRM (ignored by the TRM baseline)."""

    type: str = "standard"
    num_layers: int = 2
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    pooling: str = "mean"  # mean | max | attention | cls
    kl_weight: float = 1e-4  # variational encoders: weight of the per-sample KL term in the loss
    variational: bool = False  # lpn / hybrid: a Gaussian posterior per demo
    num_inducing: int = 8  # set_transformer: inducing points per ISAB block
    h_cycles: int = 1  # recurrent (ETRM-squared): refinement cycles of z_E per ACT step
    l_cycles: int = 2  # recurrent: z_E updates per cycle
    # The per-demo transformer's tokens (standard, variational, lpn, hybrid, cross_demo,
    # set_transformer, recurrent). separate: input cells then output cells, one token each;
    # fused: one token per canvas cell, its input and its output embedding summed.
    pair_tokens: str = "separate"
    # separate tokens: sequence (an output cell at canvas place p takes angle p + L) or aligned (angle p,
    # the angle of the input cell at its place).
    pair_positions: str = "sequence"
    # demo_cells: the rotary position of a demo cell in the decoder. sequence: context position i
    # takes angle i (demo after demo); aligned: the angle of the query cell at the same canvas place.
    cell_positions: str = "sequence"
    # demo_cells: the share of training samples (drawn per sample and ACT step) whose place features
    # (model.place_embedding, model.place_grid_edges) are left out, the demo cells' and the query
    # cells' alike, so a reading that needs no place (a colour lookup) must solve them; evaluation
    # always has them.
    place_drop_prob: float = 0.0


@dataclass
class EvalConfig:
    """Evaluation by the ARC Prize rules: augment, predict, invert, vote."""

    num_augmentations: int = 8
    batch_size: int = 64
    # etrm eval: test (held-out tasks) | validation (validation_sources) | train (the training tasks' test pairs)
    split: str = "test"
    periodic_splits: str = "train,test"  # what eval_every evaluates during training: train, test or both
    out_dir: str = ""  # where eval.json and submission.json go (default: the run directory)
    # > 0: a batch stops its ACT steps once every sample's sigmoid(q_halt) reaches this; 0: off,
    # every sample runs halt_max_steps steps as in the reference protocol.
    early_stop_confidence: float = 0.0


@dataclass
class TTTConfig:
    """Test-time training at evaluation (`etrm eval RUN ttt.steps=50`): adapt `params` to each
    held-out task's demonstrations before predicting it (etrm.eval.ttt); steps=0: off."""

    steps: int = 0
    lr: float = 1e-3
    # What adapts: context (the task's context vectors), lora (rank-r adapters on the decoder's
    # projections), decoder (its weights), all (decoder and context source). A TRM's fresh
    # context row for the unseen task adapts with every choice.
    params: str = "lora"
    lora_rank: int = 8
    # leave_one_out: each demo in turn the query, the others the context (as training builds
    # episodes); all_demos: every demo the query with all demos as context (the objective of the
    # earlier test-time optimisation, tto.*).
    objective: str = "leave_one_out"
    # Each step has every demo of the task once as the query, under one of the task's evaluation
    # augmentations drawn per episode (augment=false: identity only).
    augment: bool = True
    tasks_per_batch: int = 16  # tasks adapted together (context and lora; decoder and all: one at a time)
    # ACT steps the decoder runs per episode, the gradient through the last; capped at the model's
    # halt_max_steps (`objective_act_steps`)
    act_steps: int = 2
    grad_clip: float = 1.0  # per task, over all its adapted tensors
    # context: scaled keeps each context vector's norm and moves its direction (the scale the
    # decoder was trained on); raw moves the vectors themselves.
    context_parameterisation: str = "scaled"
    seed: int = 0

    def objective_act_steps(self, halt_max_steps: int) -> int:
        """ACT steps an adaptation episode runs: `act_steps`, never past `halt_max_steps`.

        Training supervises the outputs of steps 1..halt_max_steps and prediction reads the last
        of them; a later step's output is one the model never learnt to give (with
        halt_max_steps=1, step 2 starts from latents that training always discarded), so
        adapting it would fit a computation that prediction never runs.
        """
        return min(self.act_steps, halt_max_steps)


@dataclass
class RunConfig:
    """Everything a training run reads. Names follow the research guide's knobs."""

    preset: str = "default"
    phase: str = "none"  # none | overfit (Phase 1 verdict) | generalisation (Phase 2 verdict)
    # etrm | trm | oracle (the decoder is given each synthetic task's rule: ETRM's upper bound)
    model_type: str = "etrm"
    project_name: str = "etrm"
    run_name: str = MISSING
    run_dir: str = ""  # default: runs/<project_name>/<run_name>
    resume: bool = False
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the training step (CUDA or CPU; TRM: the decoder only)
    tracker: str = "tensorboard"  # none | tensorboard | wandb
    progress: bool = True

    # data
    # The data home of `data:` sources (ConceptARC: data:conceptarc/arc-agi_concept); "": the
    # environment variable ETRM_DATA_DIR, else shared/data beside a source checkout, else
    # ~/.local/share/etrm (`etrm.data.sources.data_home`)
    data_dir: str = ""
    train_sources: str = "arc1:training"
    test_sources: str = "arc1:evaluation"
    canvas_side: int = 30
    # Size-aware canvas (`etrm.data.canvas`): each sample runs on the top-left region its grids
    # need, keys beyond it masked, batches grouped by size. Not the reference's computation
    # (the PAD cells of its full canvas are keys), so for training and evaluating your own models,
    # not official checkpoints. The margin widens every region by that many cells.
    dynamic_canvas: bool = False
    dynamic_canvas_margin: int = 1
    # region: keys beyond each sample's region are masked (a sample computes the same whatever its
    # batch); square: every cell of the batch's square is a key, PAD cells included, as on the
    # reference's canvas (a sample's result then depends on its batch-mates' sizes).
    dynamic_canvas_keys: str = "region"
    max_demos: int = 10
    leave_one_out: bool = False
    # A training signal the context cannot be starved of (LPN's reconstruction mixed with
    # leave-one-out): the probability that a leave-one-out episode keeps its held-out demo in its
    # context, so the context holds the answer itself. 0: pure leave-one-out.
    context_includes_query_prob: float = 0.0
    # A schedule of how much of the answer the context may hold: the probability above falls
    # linearly to 0 over this many optimiser steps, so the end of training is pure leave-one-out,
    # as evaluation is. 0: constant.
    context_includes_query_decay_steps: int = 0
    max_train_groups: int | None = None
    max_eval_groups: int | None = None
    # Validation tasks, kept out of training like the held-out ones (`etrm eval RUN
    # eval.split=validation`): where settings are chosen without touching the held-out tasks.
    validation_sources: str = ""
    max_validation_groups: int | None = None
    leak_policy: str = "drop"  # drop | warn | error
    augment: bool = True
    translate: bool = True
    # 0: draw a fresh augmentation for every episode (ETRM). N > 0: a fixed list of N per task
    # (identity first), the TRM baseline's (task, augmentation) embedding ids; ETRM may use it too.
    augmentations_per_task: int = 0
    data_workers: int = 0  # background batch-building threads (0: build in the loop)

    # optimisation
    max_steps: int = 1000
    max_minutes: float = 0.0  # also stop (checkpoint, evaluate) after this much training time; 0: no limit
    global_batch_size: int = 256
    optimizer: str = "adam_atan2"  # adam_atan2 | adamw
    lr: float = 1e-4
    lr_schedule: str = "constant"  # constant | cosine (after warmup)
    lr_warmup_steps: int = 2000
    lr_min_ratio: float = 0.0
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip_norm: float = 1.0
    encoder_lr_scale: float = 1.0
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    ema_rate: float = 0.999  # 0 disables EMA

    # halting
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.5
    halt_loss_weight: float = 0.5
    # What one step (one batch: max_steps, the lr schedule and the cadence count them) trains. persistent
    # (the reference): one ACT step over the persistent carry, one optimiser step. per_batch (TRM's deep
    # supervision): up to halt_max_steps supervision steps from fresh latents, an optimiser step after
    # each, halted samples dropped. per_batch_encode_once: the same, the encoder run and stepped once.
    train_mode: str = "persistent"

    # decoder initialisation
    load_pretrained_decoder: str = ""  # a TRM checkpoint or one of ours; its puzzle embedding is dropped
    freeze_decoder_steps: int = 0  # -1: frozen throughout
    # The cycle counts the pretrained decoder was trained with: required when its file carries no
    # config (a bare official TRM .pt), and they must equal model.h_cycles / model.l_cycles.
    pretrained_h_cycles: int | None = None
    pretrained_l_cycles: int | None = None
    # Every weight (encoder and decoder) from one of our runs before the first step: a
    # curriculum's next stage. A new run: step 0, a fresh optimiser and data stream.
    init_weights_from: str = ""

    # cadence
    log_every: int = 10
    checkpoint_every: int = 200
    eval_every: int = 0  # 0: evaluate only at the end
    diagnostics_every: int = 250  # collapse diagnostics of the encoder (ETRM); 0: only at evaluation
    diagnostics_tasks: int = 16  # probe set: the first N training tasks ...
    diagnostics_augmentations: int = 4  # ... each under this many augmentations
    final_eval: bool = True
    overfit_pass_accuracy: float = 0.9  # Phase 1 bar on train token accuracy
    generalisation_pass_em: float = 0.05  # Phase 2 bar on held-out exact match

    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ttt: TTTConfig = field(default_factory=TTTConfig)


_CHOICES = {
    "model_type": ("etrm", "trm", "oracle"),
    "phase": ("none", "overfit", "generalisation"),
    "device": ("auto", "cpu", "cuda"),
    "tracker": ("none", "tensorboard", "wandb"),
    "leak_policy": ("drop", "warn", "error"),
    "optimizer": ("adam_atan2", "adamw"),
    "lr_schedule": ("constant", "cosine"),
    "train_mode": ("persistent", "per_batch", "per_batch_encode_once"),
    "encoder.pooling": ("mean", "max", "attention", "cls"),
    "encoder.cell_positions": ("sequence", "aligned"),
    "encoder.pair_tokens": ("separate", "fused"),
    "encoder.pair_positions": ("sequence", "aligned"),
    "eval.split": ("test", "validation", "train"),
    "ttt.params": ("context", "lora", "decoder", "all"),
    "ttt.objective": ("leave_one_out", "all_demos"),
    "ttt.context_parameterisation": ("scaled", "raw"),
    "dynamic_canvas_keys": ("region", "square"),
}

ConfigStore.instance().store(name="run_schema", node=RunConfig)


def available_presets() -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))


def _normalise_overrides(overrides: list[str]) -> tuple[str, list[str]]:
    # `preset=NAME` picks the YAML layer; `+key=value` (the earlier code's habit) means `key=value`.
    preset, rest = "default", []
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"override '{override}' is not of the form key=value")
        key = key.lstrip("+")
        if key.split(".")[0] == "tto":
            raise ConfigError(f"'{key}': test-time optimisation is now test-time training of the context: "
                              "ttt.params=context ttt.objective=all_demos (see the README)")
        if key == "preset":
            preset = value
        else:
            rest.append(f"{key}={value}")
    return preset, rest


DEFAULT_CONTEXT_LEN = ModelConfig.context_len


def _resolve(config: RunConfig) -> None:
    # `model.context_len: null` -> the context source's own length.
    if config.model.context_len is None:
        demo_cells = config.model_type == "etrm" and config.encoder.type == "demo_cells"
        config.model.context_len = config.max_demos * config.canvas_side**2 if demo_cells else DEFAULT_CONTEXT_LEN


def _validate(config: RunConfig) -> None:
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(config), key)
        if value not in allowed:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
    for key in ("global_batch_size", "max_steps", "canvas_side", "max_demos", "halt_max_steps"):
        if getattr(config, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(config, key)}")
    if not 0.0 <= config.context_includes_query_prob <= 1.0:
        raise ConfigError(f"context_includes_query_prob must be in [0, 1], got {config.context_includes_query_prob}")
    if config.context_includes_query_decay_steps < 0:
        raise ConfigError("context_includes_query_decay_steps must be >= 0 (0: constant), got "
                          f"{config.context_includes_query_decay_steps}")
    if not 0.0 <= config.halt_exploration_prob <= 1.0:
        raise ConfigError(f"halt_exploration_prob must be in [0, 1], got {config.halt_exploration_prob}")
    if not 0 <= config.encoder.place_drop_prob <= 1:
        raise ConfigError(f"encoder.place_drop_prob must be in [0, 1], got {config.encoder.place_drop_prob}")
    if config.model.place_grid_edges and not config.model.place_embedding:
        raise ConfigError("model.place_grid_edges=true adds to the place embedding: set model.place_embedding=true")
    if config.model_type == "trm" and config.augmentations_per_task < 1:
        raise ConfigError("model_type=trm needs augmentations_per_task >= 1 (one embedding row each)")
    if config.model_type == "oracle" and (config.augment or config.eval.num_augmentations > 1):
        raise ConfigError("model_type=oracle needs augment=false and eval.num_augmentations=1: an augmentation "
                          "changes the rule that the task's label names")
    for key in ("steps", "lora_rank", "tasks_per_batch", "act_steps"):
        least = 0 if key == "steps" else 1
        if getattr(config.ttt, key) < least:
            raise ConfigError(f"ttt.{key} must be at least {least}, got {getattr(config.ttt, key)}")
    if config.ttt.steps and config.encoder.type == "recurrent" and config.model_type == "etrm":
        raise ConfigError("ttt.steps > 0 with encoder.type=recurrent: the recurrent encoder refines its context "
                          "in the ACT carry, test-time training needs a context computed once per episode")
    if (config.ttt.params == "context" and config.ttt.context_parameterisation == "scaled"
            and config.model_type == "etrm" and config.encoder.type == "none"):
        raise ConfigError("ttt.params=context with encoder.type=none needs ttt.context_parameterisation=raw: "
                          "the zero context has no norm to keep")
    if not 1 <= config.canvas_side <= 30:
        raise ConfigError(f"canvas_side must be in 1..30, got {config.canvas_side}")
    periodic_split_names(config.eval.periodic_splits)
    if not config.ttt.grad_clip > 0:  # a zero clip norm would scale every adaptation gradient to zero
        raise ConfigError(f"ttt.grad_clip must be above 0 (a large value clips nothing), got {config.ttt.grad_clip}")
    if not 0 < config.ttt.lr < math.inf:
        raise ConfigError(f"ttt.lr must be a positive finite learning rate, got {config.ttt.lr}")
    if (config.dynamic_canvas and config.dynamic_canvas_keys == "square" and config.ttt.steps
            and config.ttt.tasks_per_batch > 1):
        raise ConfigError("dynamic_canvas_keys=square with ttt.tasks_per_batch > 1 would couple the tasks adapted "
                          "together (their episodes share one square of keys): set ttt.tasks_per_batch=1 or "
                          "dynamic_canvas_keys=region")
    if config.dynamic_canvas and config.load_pretrained_decoder:
        raise ConfigError("dynamic_canvas=true with load_pretrained_decoder: the size-aware canvas masks the PAD keys "
                          "a decoder trained on the full canvas attends to; train it from scratch or drop "
                          "dynamic_canvas")
    if config.init_weights_from and config.load_pretrained_decoder:
        raise ConfigError("init_weights_from and load_pretrained_decoder both set: the first loads the decoder "
                          "too; set one")
    if config.grad_clip_norm <= 0:  # clip_grad_norm_ would scale every gradient to zero
        raise ConfigError(f"grad_clip_norm must be above 0 (a large value clips nothing), got {config.grad_clip_norm}")
    front_end_changed = config.encoder.pair_tokens != "separate" or config.encoder.pair_positions != "sequence"
    if front_end_changed and config.encoder.type in ("hierarchical", "demo_cells", "cell_slots", "none"):
        raise ConfigError(f"encoder.pair_tokens / encoder.pair_positions do not apply to encoder.type="
                          f"{config.encoder.type} (its front end is fixed: see its module)")
    if config.encoder.pair_tokens == "fused" and config.encoder.pair_positions == "aligned":
        raise ConfigError("encoder.pair_positions=aligned needs encoder.pair_tokens=separate: a fused token "
                          "already holds its input and output cell at one place")
    cells = config.max_demos * config.canvas_side**2
    if config.model_type == "etrm" and config.encoder.type == "demo_cells" and config.model.context_len != cells:
        raise ConfigError(f"encoder.type=demo_cells needs model.context_len = max_demos * canvas_side**2 = {cells} "
                          f"(one context position per demo cell), got {config.model.context_len}")
    if config.dynamic_canvas_margin < 0:
        raise ConfigError(f"dynamic_canvas_margin must be at least 0, got {config.dynamic_canvas_margin}")


PERIODIC_SPLITS = ("train", "test")


def periodic_split_names(value: str) -> tuple[str, ...]:
    """The splits of `eval.periodic_splits` ("train,test", "test", ...): comma-separated names of
    `PERIODIC_SPLITS`, each at most once."""
    names = tuple(name.strip() for name in value.split(","))
    unknown = [name for name in names if name not in PERIODIC_SPLITS]
    if unknown or len(set(names)) != len(names):
        raise ConfigError(f"eval.periodic_splits={value!r}: give comma-separated names from "
                          f"{', '.join(PERIODIC_SPLITS)}, each once")
    return names


def _describe(error: Exception) -> str:
    # Hydra's messages are multi-line and say little ("Could not override 'x'"); make one clear line.
    message = str(error).strip().splitlines()[0]
    if message.startswith("Could not override"):
        key = message.split("'")[1]
        return f"unknown config key '{key}' (not in the run schema; check its spelling)"
    cause = error.__cause__ or error.__context__
    detail = str(cause).strip().splitlines()[0] if cause else ""
    return f"bad configuration: {message}" + (f": {detail}" if detail else "")


def load_config(overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Compose schema + preset + overrides into a validated `RunConfig`."""
    preset, rest = _normalise_overrides(list(overrides))
    if preset not in available_presets():
        raise ConfigError(f"preset '{preset}' not found; available: {', '.join(available_presets())}")
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            composed = compose(config_name="run", overrides=[f"+preset={preset}", *rest])
    except (HydraException, OmegaConfBaseException) as error:
        raise ConfigError(_describe(error)) from None
    composed.preset = preset
    if OmegaConf.is_missing(composed, "run_name"):
        composed.run_name = preset
    config: RunConfig = OmegaConf.to_object(composed)
    _resolve(config)
    _validate(config)
    return config


def config_from_yaml(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a resolved run config (as saved beside a run), applying further overrides."""
    try:
        saved_yaml = OmegaConf.load(path)
        # Runs saved before test-time training replaced test-time optimisation: `tto` was an
        # evaluation setting, not part of the trained model.
        saved_yaml.pop("tto", None)
        # `eval.checkpoint` was a key nothing read (`etrm eval` takes the run or checkpoint as its argument).
        if "eval" in saved_yaml:
            saved_yaml["eval"].pop("checkpoint", None)
        saved = OmegaConf.merge(OmegaConf.structured(RunConfig), saved_yaml)
        _, rest = _normalise_overrides(list(overrides))
        merged = OmegaConf.merge(saved, OmegaConf.from_dotlist(rest))
    except OmegaConfBaseException as error:
        raise ConfigError(f"{path}: {str(error).strip().splitlines()[0]}") from None
    config: RunConfig = OmegaConf.to_object(merged)
    _resolve(config)
    _validate(config)
    return config


# The encoder types each `encoder.*` knob reaches (the rest are read by every encoder type
# that has parameters, or by none: see `ineffective_settings`).
_ENCODER_KNOB_USERS = {
    "pooling": ("standard", "variational", "cross_demo", "set_transformer", "recurrent", "hierarchical"),
    "kl_weight": ("variational", "lpn", "hybrid"),  # lpn / hybrid only with encoder.variational
    "variational": ("lpn", "hybrid"),
    "num_inducing": ("set_transformer",),
    "h_cycles": ("recurrent",),
    "l_cycles": ("recurrent",),
    "cell_positions": ("demo_cells",),
    "place_drop_prob": ("demo_cells",),
}


def ineffective_settings(config: RunConfig) -> list[str]:
    """Settings that differ from their defaults but change nothing in the run `config` describes
    (exploration at one ACT step, encoder knobs of a TRM, test-time settings with TTT off, ...),
    each as "key=value: why". A training run prints them when it starts."""
    defaults = RunConfig(run_name="")
    found: list[str] = []

    def note(key: str, why: str) -> None:
        value, default = OmegaConf.select(OmegaConf.structured(config), key), OmegaConf.select(
            OmegaConf.structured(defaults), key)
        if value != default:
            found.append(f"{key}={value}: {why}")

    if config.halt_max_steps == 1:
        note("halt_exploration_prob", "with halt_max_steps=1 every sample halts after its one step")
    if not config.load_pretrained_decoder:
        for key in ("pretrained_h_cycles", "pretrained_l_cycles"):
            note(key, "no load_pretrained_decoder")
    if not config.model.place_embedding:
        note("encoder.place_drop_prob", "model.place_embedding=false: no place features to leave out")
    if config.lr_schedule != "cosine":
        note("lr_min_ratio", f"lr_schedule={config.lr_schedule}")
    if not config.dynamic_canvas:
        for key in ("dynamic_canvas_margin", "dynamic_canvas_keys"):
            note(key, "dynamic_canvas=false")
    if not config.leave_one_out:
        note("context_includes_query_prob", "leave_one_out=false: no episode holds a demo out")
    if not config.leave_one_out or config.context_includes_query_prob == 0:
        note("context_includes_query_decay_steps", "no episode keeps its held-out demo in its context")
    if config.model_type != "trm":
        for key in ("puzzle_emb_lr", "puzzle_emb_weight_decay"):
            note(key, f"model_type={config.model_type} has no puzzle embedding")
    if config.model_type != "etrm":
        note("encoder_lr_scale", f"model_type={config.model_type} has no encoder")
        for key in [f.name for f in fields(EncoderConfig)]:
            note(f"encoder.{key}", f"model_type={config.model_type} has no encoder")
    else:
        encoder_type = config.encoder.type
        variational = encoder_type == "variational" or config.encoder.variational
        for key, users in _ENCODER_KNOB_USERS.items():
            if encoder_type not in users or (key == "kl_weight" and not variational):
                note(f"encoder.{key}", f"encoder.type={encoder_type} does not read it")
        if encoder_type in ("none", "demo_cells"):
            for key in ("num_layers", "hidden_size", "num_heads", "expansion"):
                note(f"encoder.{key}", f"encoder.type={encoder_type} has no layers")
    if config.ttt.steps == 0:
        for key in [f.name for f in fields(TTTConfig)]:
            note(f"ttt.{key}", "ttt.steps=0: no test-time training")
    return found


def to_yaml(config: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def canvas_region_margin(config: RunConfig) -> int | None:
    """The data layer's `region_margin`: the margin with a size-aware canvas, else None."""
    return config.dynamic_canvas_margin if config.dynamic_canvas else None


def context_description(config: RunConfig) -> str:
    """Where a run's context comes from, in words (for summaries and records)."""
    if config.model_type == "trm":
        return "puzzle embedding (TRM)"
    if config.model_type == "oracle":
        return "rule oracle"
    return f"encoder {config.encoder.type}"


def run_directory(config: RunConfig) -> Path:
    return Path(config.run_dir) if config.run_dir else Path("runs") / config.project_name / config.run_name
