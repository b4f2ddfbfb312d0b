"""The training loop, shared by TRM and ETRM: they differ only in the model's context source.

`Trainer.train_step` takes one batch; `state.step` counts these calls in every mode, and the
data position, the learning-rate schedule (one rate per batch), `max_steps` and the log,
checkpoint and evaluation cadence all count them. `train_mode` says what one call does:

- `persistent` (the reference): one ACT step over the persistent carry = one optimiser step.
  Halted slots take the next batch's samples, every running sample is supervised against its
  own labels, the gradient is summed over ranks, clipped globally, and applied.
- `per_batch` (TRM's deep supervision): up to `halt_max_steps` supervision steps on the batch
  from fresh latents, the context source re-run at each, an optimiser step (clipping, EMA,
  finite check) after each. A sample that halts (with exploration, as in training) weighs 0 for
  the rest of the batch; the batch ends when every sample has halted. No carry crosses batches.
- `per_batch_encode_once`: as `per_batch`, but the context is encoded once per batch; the
  decoder steps read a detached copy whose gradient accumulates over the steps and is
  back-propagated through the encoder once at the end, followed by one optimiser step of the
  context source's (the encoder's) parameters alone. A recurrent context source (its context
  changes at every step) and TRM's sparse puzzle embedding are refused with a `ConfigError`.

In the per-batch modes the metrics count each sample once (at the step it halted, or the last),
the losses are means per supervised sample and step (as in `persistent`, where every slot is
supervised at every step), and `optimizer_steps` is logged; `compile=true` compiles the decoder
alone, which they call directly. `Trainer.run` is the outer loop;
the final log, checkpoint and evaluation reuse the periodic code. Everything the loop changes
(step, carry, weights, EMA, optimisers, random state, metric sums) is saved whole in one
checkpoint: the weights, EMA and optimisers beside the `TrainState` (step, carry, metric sums,
history, random state, clock); the data position is the step itself, since batches are a pure
function of it.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from etrm.core import distributed
from etrm.core.checkpoint import CHECKPOINT_NAME, read_checkpoint, write_checkpoint
from etrm.core.config import (
    PERIODIC_SPLITS,
    RunConfig,
    canvas_region_margin,
    ineffective_settings,
    periodic_split_names,
    run_directory,
    to_yaml,
)
from etrm.core.distributed import autocast_for
from etrm.core.errors import ConfigError, EtrmError
from etrm.data.episodes import TrainSampler
from etrm.data.tensors import to_torch
from etrm.eval.diagnostics import collapse_metrics, context_influence, probe_contexts, retrieval_at_chance
from etrm.eval.evaluate import evaluate
from etrm.models.build import compile_model, load_pretrained_decoder, load_run_weights
from etrm.models.decoder import ACTModel
from etrm.models.encoders import rename_legacy_keys
from etrm.models.losses import act_loss
from etrm.models.puzzle_embedding import dense_parameters
from etrm.models.run_data import run_data
from etrm.train.metrics import MetricsLogger, drop_records_after
from etrm.train.optim import EMA, build_optimizers, lr_at, set_learning_rate
from etrm.train.state import TrainState
from etrm.train.verdict import verdict


class TrainingDiverged(EtrmError):
    """The loss or gradient became NaN or infinite; the run stopped without saving the broken weights."""


class Trainer:
    """Builds data, model and optimisers from a `RunConfig`, then trains, checkpoints, evaluates."""

    def __init__(self, config: RunConfig, runtime: distributed.Runtime):
        self.config, self.runtime = config, runtime
        self.run_dir = run_directory(config)
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self.data = run_data(config)
        self.sampler = TrainSampler(
            self.data.split.train, canvas_side=config.canvas_side, max_demos=config.max_demos,
            leave_one_out=config.leave_one_out, seed=config.seed, augment=config.augment,
            translate=config.translate, enumerated=self.data.enumerated, rank=runtime.rank,
            world_size=runtime.world_size, region_margin=canvas_region_margin(config),
            context_includes_query_prob=config.context_includes_query_prob,
            context_includes_query_decay_steps=config.context_includes_query_decay_steps)

        torch.manual_seed(config.seed)
        self.model = self.data.build_model().to(runtime.device)
        _check_train_mode(self.model, config)
        if config.load_pretrained_decoder:
            load_pretrained_decoder(self.model, config.load_pretrained_decoder, config)
        if config.init_weights_from:
            load_run_weights(self.model, config.init_weights_from, config)
        distributed.broadcast_parameters(self.model, runtime)
        if config.compile and config.train_mode == "persistent":
            compile_model(self.model)
        elif config.compile:  # the per-batch modes call the decoder directly, not the model's forward
            self.model.decoder.compile()
        self.optimizers = build_optimizers(self.model, config)
        self.ema = EMA(self.model, config.ema_rate) if config.ema_rate > 0 else None
        self.dense_params = list(dense_parameters(self.model).values())
        self.encoder_params = [p for n, p in self.model.named_parameters() if n.startswith("context_source.encoder")]

        self.state = TrainState()
        self.first_bad_step = torch.tensor(-1, device=runtime.device)
        torch.manual_seed(config.seed + 1 + runtime.rank)  # exploration draws differ per rank

    # ----------------------------------------------------------------------------------- steps
    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Train on one batch as `train_mode` says (the module docstring); returns metric sums as
        device tensors (no host synchronisation in the persistent mode)."""
        config, state = self.config, self.state
        set_learning_rate(self.optimizers, lr_at(state.step, config.lr, config.lr_warmup_steps, config.max_steps,
                                                 config.lr_schedule, config.lr_min_ratio))
        self._apply_decoder_freeze()
        if config.train_mode != "persistent":
            return self._supervise_batch(batch)
        if state.carry is None:
            state.carry = self.model.initial_carry(batch)
        with autocast_for(self.runtime.device):
            state.carry, outputs = self.model(state.carry, batch)
            loss, metrics = act_loss(outputs, state.carry.current_data["labels"], state.carry.halted,
                                     config.halt_loss_weight, steps=state.carry.steps, forced=state.carry.forced)
        (loss / config.global_batch_size).backward()
        norms = self._optimizer_step(loss)
        metrics.update(loss=loss.detach(), samples=torch.tensor(float(batch["inputs"].shape[0]), device=loss.device),
                       **self._gradient_metrics([norms]))
        return metrics

    def _supervise_batch(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-batch modes: up to halt_max_steps supervision steps on `batch` from fresh latents,
        each followed by an optimiser step; the decoder and context source are run directly, so no
        halted sample is replaced. Refused by `_check_train_mode` for per_batch_encode_once: a
        recurrent context source (its context changes at every step) and TRM's sparse embedding."""
        config, model, device = self.config, self.model, self.runtime.device
        inputs, labels = batch["inputs"], batch["labels"]
        size = inputs.shape[0]
        active = torch.ones(size, dtype=torch.bool, device=device)  # not halted yet: still supervised
        forced, steps = torch.zeros_like(active), torch.zeros(size, dtype=torch.int32, device=device)
        supervised = torch.zeros(size, dtype=torch.int64, device=device)  # supervision steps per sample
        latents = model.decoder.reset_latents(model.decoder.initial_latents(size, device), active)
        context_state = model.context_source.initial_state(size, device)
        encode_once = config.train_mode == "per_batch_encode_once"
        if encode_once:
            with autocast_for(device):
                encoded = model.context_source.step(batch, context_state, active)
            context = encoded.context.detach().requires_grad_()  # its .grad sums the decoder steps' gradients
            auxiliary = None if encoded.auxiliary_loss is None else encoded.auxiliary_loss.detach()
        sums: dict[str, torch.Tensor] = {}
        norms: list[tuple[torch.Tensor, torch.Tensor]] = []
        for _ in range(config.halt_max_steps):
            with autocast_for(device):
                if not encode_once:
                    context, context_state, auxiliary = model.context_source.step(batch, context_state, steps == 0)
                latents, logits, q_halt, _ = model.decoder(latents, inputs, context, batch.get("region_side"),
                                                           model.context_source.layout(batch))
                steps = steps + 1
                halted = model.halting(steps, q_halt)
                forced = forced | ((q_halt > 0) & ~halted)
                outputs = {"logits": logits, "q_halt_logits": q_halt}
                if auxiliary is not None:  # encode_once: a detached copy, for the metrics; trained below
                    outputs["auxiliary_loss"] = auxiliary
                loss, metrics = act_loss(outputs, labels, halted, config.halt_loss_weight, steps=steps,
                                         forced=forced, active=active)
            (loss / config.global_batch_size).backward()
            norms.append(self._optimizer_step(loss))
            for key, value in {**metrics, "loss": loss.detach()}.items():
                sums[key] = sums.get(key, 0) + value
            supervised = supervised + active
            active = active & ~halted
            # Every rank runs the same number of steps: their gradients are summed at each.
            if not bool(distributed.sum_over_ranks({"active": active.sum()}, self.runtime)["active"]):
                break
        if encode_once and encoded.context.requires_grad:  # the zero-context floor has no encoder to step
            tensors, grads = [encoded.context], [context.grad]
            if encoded.auxiliary_loss is not None:  # its weight: the steps each sample was supervised
                tensors.append((encoded.auxiliary_loss * supervised).sum() / config.global_batch_size)
                grads.append(None)
            torch.autograd.backward(tensors, grads)
            norms.append(self._optimizer_step(sums["loss"]))
        # Losses per supervised sample and step, times the batch size (the `samples` they are divided by).
        scale = size / supervised.sum().clamp_min(1)
        for key in ("loss", "lm_loss", "q_halt_loss", "auxiliary_loss"):
            if key in sums:
                sums[key] = sums[key] * scale
        world = self.runtime.world_size
        sums.update(samples=torch.tensor(float(size), device=device), **self._gradient_metrics(norms),
                    optimizer_steps=torch.tensor(len(norms) / world, device=device))
        return sums

    def _optimizer_step(self, loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the gradients `backward` left: sum them over ranks, clip the dense ones globally, step
        every optimiser, update the EMA, flag the step if `loss` or the gradient is not finite.
        Returns the gradient norm and the encoder's part of it (before clipping)."""
        distributed.sum_gradients(self.model, self.runtime)
        encoder_norm = _grad_norm(self.encoder_params, self.runtime.device)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.dense_params if p.grad is not None], self.config.grad_clip_norm)
        for optimizer in self.optimizers:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        # A non-finite gradient breaks the weights even when the loss was finite; the norm is global
        # (taken after the all-reduce), so every rank flags the same step.
        finite = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm.detach())
        self.first_bad_step = torch.where(finite | (self.first_bad_step >= 0), self.first_bad_step,
                                          torch.tensor(self.state.step, device=loss.device))
        return grad_norm.detach(), encoder_norm

    def _gradient_metrics(self, norms: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """grad_norm: the mean over a batch's optimiser steps of (total, encoder) `norms`; encoder_grad_share:
        the encoder's share of their summed squares (both divided by the world size: summed over ranks)."""
        total, encoder = (torch.stack(column) for column in zip(*norms, strict=True))
        world = self.runtime.world_size
        share = (torch.linalg.vector_norm(encoder) / torch.linalg.vector_norm(total).clamp_min(1e-12)) ** 2
        return {"grad_norm": total.mean() / world, "encoder_grad_share": share / world}

    def _apply_decoder_freeze(self) -> None:
        frozen_steps = self.config.freeze_decoder_steps
        frozen = frozen_steps < 0 or self.state.step < frozen_steps
        for param in self.model.decoder.parameters():
            param.requires_grad_(not frozen)

    # ------------------------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        config, runtime = self.config, self.runtime
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if config.resume and self.checkpoint_path.is_file():
            self.restore()
            if runtime.is_main:
                drop_records_after(self.run_dir, self.state.step)  # the killed run's later steps are redone
        if runtime.is_main:
            (self.run_dir / "config.yaml").write_text(to_yaml(config))
            for line in self.data.split.summary(config.canvas_side):
                print(line)
            for setting in ineffective_settings(config):
                print(f"no effect in this run: {setting}")
            print(f"training episodes: {self.sampler.num_episodes} "
                  f"({self.sampler.steps_per_epoch(config.global_batch_size)} steps per epoch at global batch "
                  f"{config.global_batch_size}); run directory: {self.run_dir}")
        self.logger = MetricsLogger(self.run_dir, config.tracker if runtime.is_main else "none",
                                    OmegaConf.to_container(OmegaConf.structured(config)), config.project_name,
                                    config.run_name) if runtime.is_main else None
        state = self.state
        progress = tqdm(total=config.max_steps, initial=state.step, disable=not (runtime.is_main and config.progress),
                        desc=config.run_name, dynamic_ncols=True)
        with ThreadPoolExecutor(max_workers=1) if config.data_workers > 0 else _NoPool() as pool:
            upcoming = self._fetch(pool, state.step)
            last = state.step >= config.max_steps
            while not last:
                batch = upcoming.result()
                if state.step + 1 < config.max_steps:
                    upcoming = self._fetch(pool, state.step + 1)
                state.add(self.train_step(batch))
                progress.update(1)
                last = state.step == config.max_steps
                if last or state.step % config.log_every == 0:
                    record = self.log_window()
                    progress.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record['token_accuracy']:.3f}")
                    last = last or self._time_is_up()
                if last or state.step % config.checkpoint_every == 0:
                    self.save()
                if config.diagnostics_every and state.step % config.diagnostics_every == 0 and not last:
                    self.log_diagnostics()
                if config.eval_every and state.step % config.eval_every == 0 and not last:
                    self.evaluate_all(periodic_split_names(config.eval.periodic_splits))
        progress.close()
        results = self.evaluate_all() if config.final_eval else {}
        summary = None
        if runtime.is_main:
            summary = verdict(config, state.history, results, self.run_dir, self.logger.tracker_link)
            self.logger.close()
        return summary or {}

    def _time_is_up(self) -> bool:
        # Checked at log points only; every rank takes rank 0's decision.
        elapsed_minutes = self.state.wall_time / 60
        time_up = bool(self.config.max_minutes) and elapsed_minutes >= self.config.max_minutes
        return distributed.agree(time_up, self.runtime)

    def _fetch(self, pool: Any, step: int) -> Future:
        pin = self.runtime.device.type == "cuda"
        return pool.submit(lambda: to_torch(self.sampler.batch(step, self.config.global_batch_size),
                                            self.runtime.device, pin_memory=pin))

    def _check_finite(self) -> None:
        bad = int(self.first_bad_step.item())
        if bad >= 0:
            kept = read_checkpoint(self.checkpoint_path)["step"] if self.checkpoint_path.is_file() else None
            where = "no checkpoint was written" if kept is None else f"the last good checkpoint (step {kept}) is kept"
            raise TrainingDiverged(f"loss or gradient became NaN or infinite at step {bad + 1}; "
                                   f"stopped without saving ({where})")

    def log_window(self) -> dict[str, Any]:
        """Reduce the metric sums over ranks and steps, write one record, reset the window."""
        self._check_finite()
        state = self.state
        sums = {k: float(v) for k, v in distributed.sum_over_ranks(state.sums, self.runtime).items()}
        elapsed = time.perf_counter() - state.window_start
        count, samples, steps = max(sums.get("count", 0), 1), max(sums["samples"], 1), state.window_steps
        record = {
            "loss": sums["loss"] / samples, "lm_loss": sums["lm_loss"] / samples,
            "q_halt_loss": sums["q_halt_loss"] / samples,
            "token_accuracy": sums["token_accuracy"] / count, "exact_match": sums["exact_match"] / count,
            "q_halt_accuracy": sums["q_halt_accuracy"] / count, "mean_act_steps": sums["steps"] / count,
            "halted_samples": int(sums.get("count", 0)),
            "grad_norm": sums["grad_norm"] / steps, "encoder_grad_share": sums["encoder_grad_share"] / steps,
            "lr": self.optimizers[0].param_groups[0]["lr"],
            "samples_per_s": samples / elapsed, "seconds_per_step": elapsed / steps,
            "wall_time": state.wall_time,
        }
        if "forced_count" in sums:
            forced, forced_exact = sums["forced_count"], sums["forced_exact_match"]
            record.update(forced_samples=int(forced), forced_fraction=forced / count,
                          forced_exact_match=forced_exact / max(forced, 1),
                          unforced_exact_match=(sums["exact_match"] - forced_exact) / max(count - forced, 1))
        if "auxiliary_loss" in sums:  # a variational encoder's weighted KL
            record["auxiliary_loss"] = sums["auxiliary_loss"] / samples
        if "optimizer_steps" in sums:  # the per-batch modes: mean optimiser steps per batch
            record["optimizer_steps"] = sums["optimizer_steps"] / steps
        if self.logger is not None:
            self.logger.log(state.step, record)
        state.close_window(record)
        return record

    # ----------------------------------------------------------------------------- evaluation
    def log_diagnostics(self) -> dict[str, float] | None:
        """Collapse diagnostics of ETRM's encoder on the probe set; warn when retrieval is at chance."""
        config = self.config
        if self.data.is_trm or not self.runtime.is_main:
            return None
        probe = self.data.split.train[: config.diagnostics_tasks]
        contexts = probe_contexts(self.model.context_source, probe, config.diagnostics_augmentations,
                                  config.canvas_side, config.max_demos, self.runtime.device, config.seed)
        if contexts.shape[0] < 2:
            return None
        metrics = collapse_metrics(contexts)
        metrics.update(context_influence(self.model, probe, config.canvas_side, config.max_demos,
                                         self.runtime.device, canvas_region_margin(config)) or {})
        self.logger.log(self.state.step, metrics, kind="diagnostics")
        if self.state.step > config.lr_warmup_steps and retrieval_at_chance(metrics):
            print(f"warning: step {self.state.step}: task retrieval {metrics['retrieval_accuracy']:.2f} is at chance "
                  f"({metrics['retrieval_chance']:.2f}): the encoder does not tell the probe tasks apart")
        return metrics

    def evaluate_all(self, splits: tuple[str, ...] = PERIODIC_SPLITS) -> dict[str, Any]:
        """Evaluate with the EMA weights: `train` = the training tasks' test pairs (identity
        augmentation; Phase 1's train accuracy), `test` = the held-out tasks with voting."""
        config = self.config
        results: dict[str, Any] = {}
        raw = {k: v.clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            self.model.load_state_dict(self.ema.weights_for(self.model))
        try:
            kwargs = dict(canvas_side=config.canvas_side, max_demos=config.max_demos,
                          region_margin=canvas_region_margin(config), batch_size=config.eval.batch_size,
                          runtime=self.runtime,
                          early_stop_confidence=config.eval.early_stop_confidence)
            if "train" in splits:
                results["train"] = evaluate(self.model, self.data.training_test_pairs(), out_dir=None, **kwargs)
            if "test" in splits and self.data.split.test:
                results["test"] = evaluate(self.model, self.data.held_out(config.eval.num_augmentations),
                                           out_dir=self.run_dir, ttt=config.ttt, config=config, **kwargs)
        finally:
            self.model.load_state_dict(raw)
        if self.runtime.is_main and self.logger is not None:
            self.log_diagnostics()
            for name, summary in results.items():
                scalars = {k: v for k, v in summary.items() if k != "per_task"}
                self.logger.log(self.state.step, {**scalars, "wall_time": self.state.wall_time}, kind=f"eval_{name}")
        return results

    # ---------------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        """Write the whole train state (rank 0 writes; every rank contributes its carry and RNG)."""
        self._check_finite()
        shares = distributed.gather_objects(self.state.local_state_dict(self.runtime.device), self.runtime)
        if not self.runtime.is_main:
            return
        write_checkpoint(self.checkpoint_path, {
            **self.state.state_dict(shares),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizers": [optimizer.state_dict() for optimizer in self.optimizers],
            "num_episodes": self.sampler.num_episodes,
            "config": to_yaml(self.config),
        })

    def restore(self) -> None:
        """Continue exactly where the checkpoint stopped."""
        state = read_checkpoint(self.checkpoint_path, map_location="cpu")
        if state["num_episodes"] != self.sampler.num_episodes:
            raise EtrmError(f"{self.checkpoint_path}: the data changed ({state['num_episodes']} training episodes "
                            f"then, {self.sampler.num_episodes} now); cannot resume exactly")
        self.model.load_state_dict(rename_legacy_keys(self.model, state["model"]))
        if self.ema is not None and state["ema"]:
            self.ema.load_state_dict(rename_legacy_keys(self.model, state["ema"]))
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.state.load_state_dict(state, self.runtime)
        if self.runtime.is_main:
            print(f"resumed from {self.checkpoint_path} at step {self.state.step}")


class _NoPool:
    """Builds batches in the loop itself (data_workers=0)."""

    def __enter__(self) -> _NoPool:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, function: Any) -> Future:
        future: Future = Future()
        future.set_result(function())
        return future


def _check_train_mode(model: ACTModel, config: RunConfig) -> None:
    """per_batch_encode_once needs a context computed once per batch from dense parameters."""
    if config.train_mode != "per_batch_encode_once":
        return
    if len(dense_parameters(model)) < len(list(model.parameters())):
        raise ConfigError(f"train_mode=per_batch_encode_once does not fit model_type={config.model_type}: "
                          "its sparse puzzle embedding is stepped by its own optimiser; use per_batch")
    if model.context_source.initial_state(1, torch.device("cpu")) is not None:
        raise ConfigError(f"train_mode=per_batch_encode_once does not fit encoder.type={config.encoder.type}: "
                          "a recurrent context changes at every step; use per_batch")


def _grad_norm(params: list[torch.nn.Parameter], device: torch.device) -> torch.Tensor:
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(config: RunConfig) -> dict[str, Any]:
    """Run (or resume) a training run and its final evaluation; returns the summary on rank 0."""
    runtime = distributed.init_runtime(config.device)
    try:
        return Trainer(config, runtime).run()
    finally:
        distributed.shutdown(runtime)
