"""The size-aware canvas (`dynamic_canvas=true`) against the reference's fixed canvas.

Stages (each writes its section of BENCHMARKS.md; `report` rewrites them from saved results):
- `regions`: how many test outputs the region rule (`etrm.data.canvas`) would cut off, per
  source and margin, and the decoder positions a sample needs (context + region side^2) against
  the fixed canvas's (context + 900). Seconds; no model.
- `speed`: training samples/s at the reference size (hidden 512, H3 x L4, 2 layers, canvas 30)
  on ARC-AGI-1 training + ConceptARC batches, fixed against size-aware, TRM and ETRM, timed in
  alternating rounds in one process (`etrm.bench.alternating_rounds`; the real
  `Trainer.train_step`). Two settings, each reported as such (`--settings`):
  `one-step` (the CPU preset's halting): one ACT step per batch, so that every timed step is a
  new batch of the grouped stream (a step's cost depends on its batch's square alone), and
  evaluation samples/s on the held-out ARC-AGI-1 evaluation tasks too; `reference` (the
  reference's settings): up to 16 ACT steps per sample, exploration 0.1, the persistent carry,
  timed after a warm-up that brings the carry to its steady state, where a step runs samples of
  many ages and sizes. A fresh halting head never halts before step 16 (q_halt starts at -5),
  so every slot would start and halt together and the carry would hold one batch; a trained
  head halts samples at their own steps. The run stands in for that with a seeded draw in
  place of q_halt > 0 (`--halt-prob` per step; exploration and the 16-step cap as the model's
  own rule), drawn alike in every arm (the halting never reads the model, so both canvases'
  carries turn over the same way).
- `train`: where the canvas matters, does the speed cost accuracy? ETRM at hidden 128 on the
  32 smallest-id ARC-AGI-1 training tasks that fit a 20x20 canvas (Phase 1's memorisation
  task, `preset=overfit-cpu canvas_side=20`), the same number of steps with and without the
  option, and size-aware with the PAD cells of a batch's square kept as keys
  (`dynamic_canvas_keys=square`, the other rule the decoder could follow), two seeds per arm:
  train token accuracy against steps and against CPU minutes.
- `report`: the sections from what the stages saved (runs/canvas/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, train_run, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "canvas"
CONCEPTARC = "data:conceptarc/arc-agi_concept"  # in the data home (etrm.data.sources.data_home)
SOURCES = ("arc1:training", "arc1:evaluation", "arc2:training", "arc2:evaluation")
MARGINS = (0, 1, 2)
CONTEXT_POSITIONS = 16  # the decoder's context positions at the reference size
REFERENCE = ["canvas_side=30", "max_demos=10", "model.hidden_size=512", "model.num_heads=8", "model.num_layers=2",
             "model.h_cycles=3", "model.l_cycles=4", "encoder.hidden_size=512", "encoder.num_heads=8",
             "optimizer=adamw", "test_sources=arc1:evaluation", "max_eval_groups=16",
             "leave_one_out=true", "augment=true", "translate=false"]
# The halting of each `speed` setting: the CPU preset's one ACT step per sample, or the reference's.
SETTINGS = {"one-step": ["halt_max_steps=1"], "reference": ["halt_max_steps=16", "halt_exploration_prob=0.1"]}
SETTING_LABELS = {"one-step": "one ACT step per sample (the CPU preset's halting)",
                  "reference": "the reference's settings (16 ACT steps, exploration 0.1, persistent carry)"}
MODELS = {"TRM": ["model_type=trm", "augmentations_per_task=8"], "ETRM": ["model_type=etrm"]}
ARMS = {"fixed": "dynamic_canvas=false", "size-aware": "dynamic_canvas=true"}
# The accuracy runs also try the other key rule: the PAD cells of a batch's square stay keys.
TRAIN_ARMS = {**ARMS, "size-aware-square-keys": "dynamic_canvas=true dynamic_canvas_keys=square"}
TRAIN_RUN = ["preset=overfit-cpu", "canvas_side=20", "model.hidden_size=128", "encoder.hidden_size=128",
             "tracker=none"]
SEEDS = (0, 1)
EVAL_BATCH = 4  # several batches over the 16 evaluation tasks, so that sorting by size matters


def regions(args: argparse.Namespace) -> None:
    """Cut-off test outputs and decoder positions per source and margin."""
    from etrm.data import load_tasks
    from etrm.data.canvas import output_cut_off, region_side

    sources = [*SOURCES, *([args.conceptarc] if _available(args.conceptarc) else [])]
    results = []
    for source in sources:
        tasks = load_tasks(source)
        for margin in MARGINS:
            sides, cut = [], []
            for task in tasks:
                for query, output in task.tests:
                    side = region_side(task.demos[:10], query, 30, margin)
                    sides.append(side)
                    if output is not None and output_cut_off(output, side, 30):
                        cut.append(task.id)
            positions = statistics.fmean(CONTEXT_POSITIONS + s * s for s in sides)
            results.append({"source": source.replace(args.conceptarc, "ConceptARC"), "margin": margin,
                            "tests": len(sides), "cut": len(cut), "cut_tasks": sorted(set(cut)),
                            "mean_positions": positions, "full_canvas": sum(s == 30 for s in sides)})
            print(results[-1], flush=True)
    _save("regions", results)
    report_regions()


def _available(source: str) -> bool:
    from etrm.core.errors import DataError
    from etrm.data import load_tasks

    try:
        return bool(load_tasks(source))
    except DataError:
        return False


def _trainer(model: str, arm: str, conceptarc: str, batch_size: int, settings: str = "one-step",
             overrides: tuple[str, ...] = ()):
    import torch

    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.train.loop import Trainer

    config = load_config(["preset=default", *REFERENCE, *SETTINGS[settings], *MODELS[model], ARMS[arm],
                          f"global_batch_size={batch_size}", f"train_sources='arc1:training,{conceptarc}'",
                          "tracker=none", "progress=false", "device=cpu", "run_name=speed", *overrides])
    return Trainer(config, Runtime(torch.device("cpu")))


def emulated_halting(config, probability: float, seed: int) -> Callable:
    """A halting rule (`ACTModel.halting`'s signature) with q_halt > 0 replaced by a seeded draw of
    `probability` per slot and step (a trained halting head, which halts samples at their own
    steps); the rest is the model's rule for `config` (a `DecoderConfig`): halt at
    halt_max_steps, and in training, with probability halt_exploration_prob, not before a
    minimum step count drawn from [2, halt_max_steps]. The draws never read the model, so rules
    seeded alike turn carries over alike (the samples are each stream's own)."""
    import torch

    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def halting(steps: torch.Tensor, q_halt: torch.Tensor) -> torch.Tensor:
        max_steps = config.halt_max_steps
        wants = torch.rand(steps.shape, generator=generator) < probability  # stands for q_halt > 0
        explore = torch.rand(steps.shape, generator=generator) < config.halt_exploration_prob
        minimum = explore * torch.randint(2, max_steps + 1, steps.shape, generator=generator)
        halted = (steps >= max_steps) | wants.to(steps.device)
        return halted & (steps >= minimum.to(steps.device))

    return halting


def emulate_trained_halting(model, probability: float, seed: int) -> None:
    """`model.halting` becomes `emulated_halting`'s rule."""
    model.halting = emulated_halting(model.config, probability, seed)


def carry_states(model, sampler, batch_size: int, steps: int, halting: Callable, carry=None):
    """The persistent carry's bookkeeping (`ACTModel.forward` without the context and the
    decoder: halted slots take the batch's samples and restart, the others age a step, then
    `halting` decides) over batches 0 .. steps - 1 of `sampler`, from `carry` (default: a fresh
    one); yields the carry after each step. Only for a halting that never reads q_halt
    (`emulated_halting`): the carry then holds what real steps would leave, but for the
    latents' values (their initial ones here, which a step's cost does not read)."""
    import dataclasses

    import torch

    from etrm.data.tensors import to_torch
    from etrm.models.decoder import merge_new_samples

    for step in range(steps):
        batch = to_torch(sampler.batch(step, batch_size))
        carry = carry or model.initial_carry(batch)
        data = merge_new_samples(carry.current_data, batch, take_new=carry.halted)
        ages = torch.where(carry.halted, 0, carry.steps) + 1
        halted = halting(ages, torch.zeros(ages.shape))
        latents = model.decoder.reset_latents(carry.latents, carry.halted)
        carry = dataclasses.replace(carry, latents=latents, steps=ages, halted=halted, current_data=data)
        yield carry


def fast_forward_carry(trainer, steps: int, batch_size: int) -> int:
    """Bring `trainer`'s carry `steps` steps on without the model (`carry_states`, with the
    model's own, emulated, halting); returns the next batch's index."""
    for carry in carry_states(trainer.model, trainer.sampler, batch_size, steps, trainer.model.halting):
        trainer.state.carry = carry
    return steps


def speed(args: argparse.Namespace) -> None:
    """Training (and, one-step, evaluation) samples/s, fixed against size-aware, alternating rounds."""
    if args.settings == "reference":
        speed_reference(args)
        return
    import torch

    from etrm.bench import alternating_rounds
    from etrm.core.config import canvas_region_margin
    from etrm.data.tensors import to_torch
    from etrm.eval.evaluate import predict

    def step_of(trainer) -> Callable[[int], Callable[[], int]]:
        # Step `step`'s batch, built untimed; the timed call trains on it and gives its square.
        def prepare(step: int) -> Callable[[], int]:
            batch = to_torch(trainer.sampler.batch(step, args.batch))
            square = int(batch["region_side"].max()) if "region_side" in batch else 30

            def run() -> int:
                trainer.train_step(batch)
                return square
            return run
        return prepare

    torch.set_num_threads(args.threads)
    results = {}
    for model in MODELS:
        trainers = {arm: _trainer(model, arm, args.conceptarc, args.batch) for arm in ARMS}
        measured = alternating_rounds({arm: step_of(trainer) for arm, trainer in trainers.items()}, args.rounds,
                                      args.steps, warmup=1,
                                      after_round=lambda r, m, model=model: print(model, r, m.medians(), flush=True))
        seconds, squares = measured.seconds, measured.results
        evaluation = {}
        for arm, trainer in trainers.items():
            config = trainer.config
            tasks = trainer.data.held_out(1)
            start = time.perf_counter()
            records = predict(trainer.model, tasks, canvas_side=30, max_demos=10, batch_size=EVAL_BATCH,
                              runtime=trainer.runtime, region_margin=canvas_region_margin(config))
            evaluation[arm] = len(records) / (time.perf_counter() - start)
        results[model] = {arm: {"samples_per_s": args.batch * len(s) / sum(s),
                                "median_step_s": statistics.median(s), "steps": len(s),
                                "mean_square": statistics.fmean(squares[arm]),
                                "eval_samples_per_s": evaluation[arm]} for arm, s in seconds.items()}
        arms = results[model]
        arms["ratio"] = arms["size-aware"]["samples_per_s"] / arms["fixed"]["samples_per_s"]
        results[model]["eval_ratio"] = evaluation["size-aware"] / evaluation["fixed"]
        print(model, results[model], flush=True)
    _save("speed", {"threads": args.threads, "batch": args.batch, "rounds": args.rounds, "steps": args.steps,
                    "models": results})
    report_speed()


def speed_reference(args: argparse.Namespace) -> None:
    """Training samples/s at the reference's settings: fixed against size-aware over the
    persistent carry's steady state, TRM and ETRM, in alternating rounds.

    Warm-up, the same for both arms: the carry's bookkeeping is first run `--carry-steps` steps
    without the model (`carry_states`: the halting draws never read the model, so the slots'
    samples and ages are those the real steps would leave), which brings the carry to its mix of
    ages and sizes (a slot lives at most 16 steps); then `--warmup` real training steps. Each
    round times `--fixed-steps` steps of the fixed canvas, whose cost is the same at every step
    (the whole canvas, whatever the carry holds), and `--steps` size-aware steps, whose cost
    follows the carry's regions, which change slowly (a slot lives several steps), so it needs
    many. Per timed step: its wall and process CPU seconds (CPU / wall below the threads in use
    flags a step that shared the cores), the carry's regions (the squares the region groups
    ran, the square one batch-wide square would have taken), the decoder's and the encoder's
    FLOPs (`etrm.models.flops`), the seconds of the optimiser step and of the context's forward.
    Besides the timing, the carry's bookkeeping alone over `--simulate-steps` steps gives the
    FLOP ratio of the two canvases over a long stretch of the steady state."""
    import torch

    from etrm.bench import alternating_rounds
    from etrm.core.config import load_config
    from etrm.data.tensors import to_torch

    torch.set_num_threads(args.threads)

    def timed(function: Callable, spent: list[float]) -> Callable:
        # `function`, adding the seconds of each call to spent[0] (the CPU runs it synchronously).
        def call(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start
        return call

    def arm_of(trainer, model: str, arm: str, carries: list) -> Callable[[int], Callable[[], float]]:
        emulate_trained_halting(trainer.model, args.halt_prob, seed=args.seed)
        counter = [fast_forward_carry(trainer, args.carry_steps, args.batch)]
        # Phases of a step outside the decoder: the optimiser step (clipping, AdamW, EMA) and the
        # context source's forward (ETRM: the encoder over every slot's demos; its backward is not
        # apart from the decoder's).
        optimizer_s, context_s = [0.0], [0.0]
        trainer._optimizer_step = timed(trainer._optimizer_step, optimizer_s)
        trainer.model.context_source.step = timed(trainer.model.context_source.step, context_s)

        for _ in range(args.warmup):
            trainer.train_step(to_torch(trainer.sampler.batch(counter[0], args.batch)))
            counter[0] += 1
        ages = trainer.state.carry.steps.tolist()
        print(model, arm, f"carry run {args.carry_steps} steps, then {args.warmup} trained; ages {ages}", flush=True)

        def prepare(_: int) -> Callable[[], float]:
            batch = to_torch(trainer.sampler.batch(counter[0], args.batch))

            def run() -> float:
                optimizer_s[0] = context_s[0] = 0.0
                cpu = time.process_time()
                trainer.train_step(batch)
                cpu = time.process_time() - cpu
                counter[0] += 1
                carries.append({**step_flops(trainer.config, trainer.state.carry), "optimizer_s": optimizer_s[0],
                                "context_forward_s": context_s[0], "cpu_s": cpu})
                return cpu
            return run
        return prepare

    results = {}
    for model in args.models:
        carries = {arm: [] for arm in ARMS}
        arms, simulated = {}, {}
        for arm in ARMS:
            trainer = _trainer(model, arm, args.conceptarc, args.batch, "reference", tuple(args.overrides))
            simulated[arm] = simulate_flops(trainer, args)
            arms[arm] = arm_of(trainer, model, arm, carries[arm])
        calls = {"fixed": args.fixed_steps, "size-aware": args.steps}
        measured = alternating_rounds(arms, args.rounds, calls,
                                      after_round=lambda r, m, model=model: print(model, r, m.means(), flush=True))
        results[model] = {"simulated": simulated}
        for arm, seconds in measured.seconds.items():
            busy = [i for i, (wall, entry) in enumerate(zip(seconds, carries[arm], strict=True))
                    if entry["cpu_s"] < BUSY_SHARE * args.threads * wall]
            results[model][arm] = {"samples_per_s": args.batch * len(seconds) / sum(seconds),
                                   "median_step_s": statistics.median(seconds),
                                   "mean_step_s": statistics.fmean(seconds), "steps": len(seconds),
                                   "seconds": seconds, "busy_steps": busy,
                                   "carry": carries[arm]}
        fixed, aware = results[model]["fixed"], results[model]["size-aware"]
        results[model]["ratio"] = aware["samples_per_s"] / fixed["samples_per_s"]
        print(model, {arm: {k: v for k, v in r.items() if k not in ("seconds", "carry")}
                      for arm, r in results[model].items() if arm in ARMS},
              f"ratio {results[model]['ratio']:.2f}x", simulated, flush=True)
    config = load_config(["preset=default", *REFERENCE, *SETTINGS["reference"], *args.overrides])
    if args.overrides:  # not the reference's settings: saved apart, BENCHMARKS.md left alone
        _save("speed-reference-overridden", {"overrides": args.overrides, "models": results})
        return
    from etrm.models.decoder import REGION_GROUPS

    _save("speed-reference", {"threads": args.threads, "batch": args.batch, "rounds": args.rounds,
                              "steps": args.steps, "fixed_steps": args.fixed_steps, "warmup": args.warmup,
                              "carry_steps": args.carry_steps, "simulate_steps": args.simulate_steps,
                              "halt_prob": args.halt_prob, "halt_max_steps": config.halt_max_steps,
                              "halt_exploration_prob": config.halt_exploration_prob, "region_groups": REGION_GROUPS,
                              "models": results})
    report_speed_reference()


BUSY_SHARE = 0.8  # a step whose process CPU seconds fall below this share of threads x wall shared the cores


def step_flops(config, carry) -> dict:
    """The carry's regions and the FLOPs of one training step over it (forward and backward):
    the decoder's as it runs (the region groups' squares), on one batch-wide square and on the
    fixed canvas, and the encoder's."""
    from etrm.models.flops import (
        decoder_batch_flops,
        decoder_step_flops,
        encoder_batch_flops,
        reads_demos,
        region_group_squares,
    )

    data, batch = carry.current_data, len(carry.steps)
    entry = {"ages": carry.steps.tolist(), "fixed_flops": decoder_step_flops(config, batch, train=True)}
    if "region_side" in data:
        sides = sorted(data["region_side"].tolist())
        entry.update(sides=sides, squares=[side for _, side in region_group_squares(config, sides)],
                     decoder_flops=decoder_batch_flops(config, data, train=True),
                     one_square_flops=decoder_step_flops(config, batch, train=True, square=sides[-1]))
    if reads_demos(config):
        entry["encoder_flops"] = encoder_batch_flops(config, data["demo_inputs"], data["demo_outputs"],
                                                     data["demo_mask"], train=True)
    return entry


def simulate_flops(trainer, args: argparse.Namespace) -> dict:
    """Mean FLOPs per step over `--simulate-steps` steps of the carry's bookkeeping alone (after
    `--carry-steps` to reach the steady state), on `trainer`'s stream with the emulated halting
    (its own draws: the trainer is untouched)."""
    halting = emulated_halting(trainer.model.config, args.halt_prob, args.seed + 1)
    total = args.carry_steps + args.simulate_steps
    entries = [step_flops(trainer.config, carry) for index, carry in
               enumerate(carry_states(trainer.model, trainer.sampler, args.batch, total, halting))
               if index >= args.carry_steps]
    keys = [key for key in entries[0] if key.endswith("flops")]
    means = {key: statistics.fmean(entry[key] for entry in entries) for key in keys}
    means["mean_side"] = statistics.fmean(s for e in entries for s in e.get("sides", [30] * args.batch))
    means["mean_age"] = statistics.fmean(a for e in entries for a in e["ages"])
    return means


def train(args: argparse.Namespace) -> None:
    """The same number of steps with and without the option, two seeds per arm (`--seeds`: some
    of them, so that two processes can run the seeds side by side)."""
    for arm, override in TRAIN_ARMS.items():
        for seed in args.seeds:
            overrides = [*TRAIN_RUN, *override.split(), f"seed={seed}", f"max_steps={args.train_steps}",
                         "final_eval=false"]
            train_run(OUT / f"train-{arm}-{seed}", overrides, 10_000, args.threads)
    report_train()


def _save(name: str, value: object) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(value, indent=1))


def _load(name: str) -> object | None:
    path = OUT / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def report_regions() -> None:
    results = _load("regions")
    if not results:
        return
    rows = ["| source | margin | test inputs | outputs cut off | given the whole canvas | mean decoder positions "
            "(fixed: 916) |", "|---|---|---|---|---|---|"]
    rows += [f"| {r['source']} | {r['margin']} | {r['tests']} | {r['cut']}"
             f"{' (' + ', '.join(r['cut_tasks']) + ')' if r['cut_tasks'] else ''} | {r['full_canvas']} | "
             f"{r['mean_positions']:.0f} ({r['mean_positions'] / (CONTEXT_POSITIONS + 900):.2f}x) |" for r in results]
    write_section("canvas_regions", f"""## Size-aware canvas: the region rule (`size_aware_canvas.py regions`)

Every test input of each source: its region (`etrm.data.canvas.region_side`, read from the
demos and the test input only) and whether the test output, with its EOS border, would fall
outside it. The default margin is 1. Decoder positions: 16 context positions + the region's
cells, against 16 + 900 on the fixed canvas (the cost of attention grows faster than this).

{chr(10).join(rows)}
""")


def report_speed() -> None:
    results = _load("speed")
    if not results:
        return
    rows = ["| model | canvas | train samples/s | median s/step | mean square side | eval samples/s |",
            "|---|---|---|---|---|---|"]
    for model, arms in results["models"].items():
        for arm in ARMS:
            r = arms[arm]
            rows.append(f"| {model} | {arm} | {r['samples_per_s']:.2f} | {r['median_step_s']:.2f} | "
                        f"{r['mean_square']:.1f} | {r['eval_samples_per_s']:.2f} |")
        rows.append(f"| {model} | size-aware / fixed | **{arms['ratio']:.2f}x** | | | **{arms['eval_ratio']:.2f}x** |")
    write_section("canvas_speed", f"""## Size-aware canvas: speed at the reference size (`size_aware_canvas.py speed`)

Settings: {SETTING_LABELS['one-step']} (`--settings one-step`); the reference's settings are in
the next subsection. Machine: {machine()}; {results['threads']} torch thread(s), nothing else running. Hidden 512,
H3 x L4, 2 layers, canvas 30, batch {results['batch']}, on ARC-AGI-1 training + ConceptARC
(augmented, leave-one-out); {results['rounds']} alternating rounds of {results['steps']} steps per arm,
samples/s over all timed steps (the real `Trainer.train_step`: AdamW, clipping, EMA). One ACT step
per batch, so every timed step is a new batch of the size-grouped stream. Evaluation: the
first 16 held-out ARC-AGI-1 evaluation tasks, one view each, batches of {EVAL_BATCH}, one ACT step.

{chr(10).join(rows)}
""")


def report_speed_reference() -> None:
    results = _load("speed-reference")
    if not results:
        return
    rows = ["| model | canvas | timed steps | train samples/s | mean s/step | median s/step | optimiser s/step | "
            "context forward s/step | squares per step | one batch-wide square | decoder GFLOP/step | "
            "encoder GFLOP/step |", "|---" * 12 + "|"]
    flop_rows = ["| model | decoder, fixed / size-aware | decoder, fixed / one batch-wide square | "
                 "whole step (decoder + encoder), fixed / size-aware |", "|---|---|---|---|"]
    ages, sides, busy = [], [], []
    for model, arms in results["models"].items():
        for arm in ARMS:
            r = arms[arm]
            carry = r["carry"]
            ages += [age for entry in carry for age in entry["ages"]]
            busy += [f"{model} {arm} {len(r['busy_steps'])} of {r['steps']}"] if r["busy_steps"] else []
            encoder = (f"{statistics.fmean(e['encoder_flops'] for e in carry) / 1e9:.0f}"
                       if "encoder_flops" in carry[0] else "-")
            if arm == "size-aware":
                sides += [side for e in carry for side in e["sides"]]
                groups = statistics.fmean(len(e["squares"]) for e in carry)
                # The square each sample ran on: its group's, the smallest of the step's holding it.
                ran = statistics.fmean(min(q for q in e["squares"] if q >= side) for e in carry for side in e["sides"])
                squares = f"{groups:.1f} (a sample's: side {ran:.1f})"
                one_square = f"{statistics.fmean(e['sides'][-1] for e in carry):.1f}"
                decoder = (f"{statistics.fmean(e['decoder_flops'] for e in carry) / 1e9:.0f} (one square: "
                           f"{statistics.fmean(e['one_square_flops'] for e in carry) / 1e9:.0f})")
            else:
                squares, one_square = "1 (side 30)", "30"
                decoder = f"{statistics.fmean(e['fixed_flops'] for e in carry) / 1e9:.0f}"
            phases = " | ".join(f"{statistics.fmean(e[key] for e in carry):.2f}"
                                for key in ("optimizer_s", "context_forward_s"))
            rows.append(f"| {model} | {arm} | {r['steps']} | {r['samples_per_s']:.2f} | {r['mean_step_s']:.2f} | "
                        f"{r['median_step_s']:.2f} | {phases} | {squares} | {one_square} | {decoder} | {encoder} |")
        rows.append(f"| {model} | size-aware / fixed | | **{arms['ratio']:.2f}x** |" + " |" * 8)
        fixed, aware = arms["simulated"]["fixed"], arms["simulated"]["size-aware"]
        whole_fixed = fixed["fixed_flops"] + fixed.get("encoder_flops", 0.0)
        whole_aware = aware["decoder_flops"] + aware.get("encoder_flops", 0.0)
        one_square = aware["fixed_flops"] / aware["one_square_flops"]
        flop_rows.append(f"| {model} | {aware['fixed_flops'] / aware['decoder_flops']:.2f}x | {one_square:.2f}x | "
                         f"{whole_fixed / whole_aware:.2f}x |")
    shared = ("Steps that shared the cores with another process (process CPU seconds under "
              f"{BUSY_SHARE} x threads x wall): {', '.join(busy)}." if busy else
              "No timed step shared the cores with another process (process CPU seconds at least "
              f"{BUSY_SHARE} x threads x wall).")
    title = "### At the reference's settings (`size_aware_canvas.py speed --settings reference`)"
    write_section("canvas_speed_reference", f"""{title}

Settings: {SETTING_LABELS['reference']}; the table above: {SETTING_LABELS['one-step']}.
Machine: {machine()}; {results['threads']} torch thread(s). Hidden 512, H3 x L4, 2 layers,
canvas 30, batch {results['batch']}, up to {results['halt_max_steps']} ACT steps per sample with
exploration {results['halt_exploration_prob']} over the persistent carry, on ARC-AGI-1 training +
ConceptARC (augmented, leave-one-out); the real `Trainer.train_step` (AdamW, clipping, EMA), one
ACT step of every slot per timed step. Halting: a seeded draw of {results['halt_prob']} per slot
and step stands in for a trained head's q_halt > 0 (a fresh head never halts before step 16,
which would keep every slot of the carry in step), seeded alike in both arms; slots' mean age
over the timed steps {statistics.fmean(ages):.1f} steps. Size-aware: each step's samples in up to
{results['region_groups']} region groups, each on its own square (`RecursiveDecoder._forward_in_groups`);
the carry's mean region side over the timed steps {statistics.fmean(sides):.1f}. Warm-up, alike in
both arms: the carry's bookkeeping run {results['carry_steps']} steps without the model (the
halting draws never read it, so the slots' samples and ages are those real steps would leave: the
carry's steady state; the latents stay at their initial values, which a step's cost does not
read), then {results['warmup']} real training steps. Then {results['rounds']} alternating rounds,
each of {results['fixed_steps']} fixed-canvas step(s) (the same cost at every step: the whole
canvas whatever the carry holds) and {results['steps']} size-aware steps (their cost follows the
carry's regions, which change slowly). Samples/s over all timed steps. Optimiser: clipping, AdamW
(TRM: and its puzzle embedding's optimiser) and EMA; context forward: the context source's
forward pass (ETRM: the encoder over every slot's demos, its backward not counted apart). FLOPs
per step (`etrm.models.flops`, forward and backward), the decoder's as it ran and as one
batch-wide square would have run it. {shared}

{chr(10).join(rows)}

FLOP ratios over {results['simulate_steps']} steps of the carry's steady state (its bookkeeping
alone, each arm's own stream, the same halting rule; no timing):

{chr(10).join(flop_rows)}
""")


def report_train() -> None:
    from etrm.train.metrics import read_metrics

    finished = {(arm, seed): OUT / f"train-{arm}-{seed}" for arm in TRAIN_ARMS for seed in SEEDS}
    if not all((d / "metrics.jsonl").is_file() for d in finished.values()):
        return
    curves = {key: read_metrics(d, "train") for key, d in finished.items()}
    marks = sorted({r["step"] for c in curves.values() for r in c})
    marks = [m for m in marks if all(any(r["step"] == m for r in c) for c in curves.values())]
    shown = marks[len(marks) // 4 - 1::len(marks) // 4] if len(marks) >= 4 else marks
    header = "| canvas | seed | " + " | ".join(f"step {m}" for m in shown) + " | minutes |"
    rows = [header, "|" + "---|" * (len(shown) + 3)]
    for (arm, seed), curve in curves.items():
        by_step = {r["step"]: r for r in curve}
        rows.append(f"| {arm} | {seed} | " + " | ".join(f"{100 * by_step[m]['token_accuracy']:.1f}%" for m in shown)
                    + f" | {curve[-1]['wall_time'] / 60:.1f} |")
    _figure(curves)
    write_section("canvas_train", f"""## Size-aware canvas: accuracy per step (`size_aware_canvas.py train`)

Machine: {machine()}. ETRM, hidden 128 (`preset=overfit-cpu canvas_side=20`: the 32 smallest-id
ARC-AGI-1 training tasks fitting 20x20, 4 augmentations each), the same steps per run, two seeds
per arm (fixed canvas; size-aware, keys beyond each region masked, the default; size-aware with
the PAD cells of the batch's square kept as keys), runs two at a time on the two cores (one
thread each). Train token accuracy (the
window mean logged every 25 steps) at quarters of the run, and the run's wall-clock minutes.

{chr(10).join(rows)}

![train token accuracy against steps and minutes](docs/figures/canvas_train.png)
""")


def _figure(curves: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for (arm, seed), curve in curves.items():
        colour = {"fixed": "tab:blue", "size-aware": "tab:orange", "size-aware-square-keys": "tab:green"}[arm]
        style = {"color": colour, "ls": "-" if seed == 0 else "--",
                 "label": f"{arm}, seed {seed}"}
        accuracy = [r["token_accuracy"] for r in curve]
        axes[0].plot([r["step"] for r in curve], accuracy, **style)
        axes[1].plot([r["wall_time"] / 60 for r in curve], accuracy, **style)
    axes[0].set(xlabel="step", ylabel="train token accuracy")
    axes[1].set(xlabel="CPU minutes")
    axes[0].legend()
    figure.suptitle("ETRM hidden 128, ARC-AGI-1 tasks fitting 20x20: fixed against size-aware canvas")
    figure.tight_layout()
    path = ROOT / "docs" / "figures" / "canvas_train.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["regions", "speed", "train", "report"])
    parser.add_argument("--conceptarc", default=CONCEPTARC, help="ConceptARC's task source (data: or kaggle:)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="speed: global batch")
    parser.add_argument("--rounds", type=int, default=3, help="speed: alternating rounds")
    parser.add_argument("--steps", type=int, default=4, help="speed: timed steps per arm and round")
    parser.add_argument("--settings", choices=list(SETTINGS), default="one-step",
                        help="speed: one ACT step per sample (the CPU preset's halting) or the reference's settings")
    parser.add_argument("--models", nargs="*", choices=list(MODELS), default=list(MODELS),
                        help="speed --settings reference: these models")
    parser.add_argument("--carry-steps", type=int, default=32,
                        help="speed --settings reference: steps of the carry's bookkeeping before the warm-up")
    parser.add_argument("--warmup", type=int, default=2, help="speed --settings reference: real warm-up steps")
    parser.add_argument("--fixed-steps", type=int, default=1,
                        help="speed --settings reference: timed fixed-canvas steps per round (--steps: size-aware)")
    parser.add_argument("--simulate-steps", type=int, default=1000,
                        help="speed --settings reference: steps of the carry's bookkeeping for the FLOP ratio")
    parser.add_argument("--halt-prob", type=float, default=0.25,
                        help="speed --settings reference: per-step halting draw standing in for q_halt > 0")
    parser.add_argument("--seed", type=int, default=0, help="speed --settings reference: the halting draws' seed")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="speed --settings reference: extra overrides (a smoke test: saved apart, not reported)")
    parser.add_argument("--train-steps", type=int, default=800, help="train: steps per run")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS), help="train: these seeds")
    args = parser.parse_args()
    if args.stage == "report":
        report_regions()
        report_speed()
        report_speed_reference()
        report_train()
        return
    {"regions": regions, "speed": speed, "train": train}[args.stage](args)


if __name__ == "__main__":
    main()
