"""Few-shot generalisation at CPU scale: the difficulty ladder, its bounds, and what learns fastest.

Every run is a normal `etrm train` (a ladder preset plus overrides) into `runs/ladder/NAME`,
evaluated on the held-out tasks periodically (`eval.periodic_splits=test`, for the curves) and
at the end (training tasks and held-out). A finished run (its `summary.json` exists) is never
re-run, so the script resumes where it stopped, and two invocations can share the machine's
cores (`--threads` torch threads each; how they shared it is stated in the section).

- `train NAME ...`: train the named runs (`RUNS`; the groups `bounds`, `base`, `study`, `modes`,
  `encoders`: every encoder preset's `encoder.*` settings on level 3; `study3`: one factor at a
  time from the chosen settings on level 3).
- `extra NAME ...`: for a finished run, the held-out `params` / `compose` splits (level 3) and
  the rule probe (`etrm.analysis.probe`) on `--probe-tasks` validation-seed tasks -> RUN/extra.json.
- `report`: the `fewshot_ladder` section of BENCHMARKS.md (bounds and encoder efficiency per
  level, the other splits, the rule probe, the study, the training modes) and
  `docs/figures/fewshot_ladder.png` (held-out pass@2 against CPU minutes, bounds dashed). Its
  runs were measured before results were kept (below): regenerate it only after re-running them.
- `designs`: the `fewshot_designs` section (every design run, the representability diagnostic,
  the cost of a step) and `docs/figures/fewshot_designs.png`; a run measured before its results
  were kept keeps its row as it stands.

What the reports read of each finished run is kept in `benchmarks/results/ladder/NAME.json`
(committed), so a report can be redrawn after the run's outputs are gone.

Encoder efficiency = (ETRM - none) / (oracle - none), same split and budget, reported only where
the oracle beats the no-context floor by at least 10 points (`etrm.analysis.report.encoder_efficiency`;
`etrm compare RUN ... --efficiency ORACLE_RUN NONE_RUN` gives it for any runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, section_text, train_run, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "ladder"
FIGURE = ROOT / "docs" / "figures" / "fewshot_ladder.png"
LEVELS = {1: "synth-level1", 2: "synth-level2", 3: "synth-level3"}
BOUNDS = {"etrm": [], "oracle": ["model_type=oracle"], "none": ["encoder.type=none"]}
# The demos as the context (nothing compressed, the ladder's third bound): one fused (input,
# output) token per demo cell, max_demos (4) x 64 cells of the 8x8 canvas as the decoder's context.
CELLS = ["encoder.type=demo_cells", "model.context_len=null"]
# The demos as the context with the signal, each cell's place and its distances to its grid's far
# edges as content: the base of the level-2 designs that follow it.
PLACE_EDGES = [*CELLS, "context_includes_query_prob=0.5", "model.place_embedding=true", "model.place_grid_edges=true"]
# The designs measured for an encoder that reads the rule (run on each level as l{level}-NAME):
# the bound itself, its rotary positions, the training signal, the compressed front-end options.
DESIGNS = {
    "cells": CELLS,
    "cells-aligned": [*CELLS, "encoder.cell_positions=aligned"],
    "cells-withq": [*CELLS, "context_includes_query_prob=0.5"],
    "cells-withq-place": [*CELLS, "context_includes_query_prob=0.5", "model.place_embedding=true"],
    "cells-withq-place-edges": PLACE_EDGES,
    # The same at twice the decoder's width: whether level 2's families compete for a decoder
    # too small to hold every family's reading at once (with the place, permutations came last).
    "cells-withq-place-edges-h128": [*PLACE_EDGES, "model.hidden_size=128"],
    # The signal faded out by step 1,500: whether the context's copy of the query's own pair (a
    # shortcut the place makes a match of contents) keeps the permutations from being read.
    "cells-withq-place-edges-decay": [*PLACE_EDGES, "context_includes_query_decay_steps=1500"],
    # A curriculum: level 2 started from the place design's level-1 run (its colour reading learnt
    # with the place features present): whether a learnt colour reading survives the translations.
    "cells-withq-place-after-l1": [*CELLS, "context_includes_query_prob=0.5", "model.place_embedding=true",
                                   "init_weights_from=runs/ladder/l1-cells-withq-place-first-stage"],
    # The place features left out of half the training samples (both readings must be learnt: a
    # colour lookup is all that solves a permutation there): whether the permutations come back.
    "cells-withq-place-edges-drop": [*PLACE_EDGES, "encoder.place_drop_prob=0.5"],
    # The same with another seed (the weights, the data order and the drops): the spread of its figure.
    "cells-withq-place-edges-drop-seed1": [*PLACE_EDGES, "encoder.place_drop_prob=0.5", "seed=1"],
    "cells-aligned-withq-decay": [*CELLS, "encoder.cell_positions=aligned", "context_includes_query_prob=0.5",
                                  "context_includes_query_decay_steps=1500"],
    "cells-aligned-withq": [*CELLS, "encoder.cell_positions=aligned", "context_includes_query_prob=0.5"],
    "fused": ["encoder.pair_tokens=fused"],
    "fused-withq": ["encoder.pair_tokens=fused", "context_includes_query_prob=0.5"],
    "aligned": ["encoder.pair_positions=aligned"],
    "slots": ["encoder.type=cell_slots"],
    "slots-withq": ["encoder.type=cell_slots", "context_includes_query_prob=0.5"],
    # The oracle with the place embeddings: whether this decoder applies a rule it is told (the
    # dihedral family: a cell's source is a computed place) with the designs' input features.
    "oracle-place-edges": ["model_type=oracle", "model.place_embedding=true", "model.place_grid_edges=true"],
}
# The design that reads the rule best (level 1, 30 minutes: docs/LOG.md), run on every level
# once more under the targets' protocol as l{level}-{CHOSEN_DESIGN}-alone: `--threads 2` and
# nothing else on the machine (any design can be run so as l{level}-NAME-alone).
CHOSEN_DESIGN = "cells-withq"
CONTINUED = "-60min"  # the suffix of a design's run continued past its 30 minutes
# Periodic held-out evaluation for the curves (the final evaluation also scores the training tasks).
CURVE = ["eval_every=50", "eval.periodic_splits=test"]
# The study: one factor at a time from `base-etrm` (synth-cpu's training settings before the study,
# written out so the study's runs keep their meaning when the presets change), with its bounds.
STUDY_LEVEL = 1
STUDY_BASE = ["model.hidden_size=128", "encoder.hidden_size=128", "model.h_cycles=2", "model.l_cycles=2",
              "halt_max_steps=4", "global_batch_size=64"]
STUDY = {
    "lr3e-3": ["lr=3e-3"], "lr3e-4": ["lr=3e-4"], "warmup10": ["lr_warmup_steps=10"],
    "batch32": ["global_batch_size=32"], "batch128": ["global_batch_size=128"],
    "hidden64": ["model.hidden_size=64", "encoder.hidden_size=64"], "enc1layer": ["encoder.num_layers=1"],
    "cycles1x1": ["model.h_cycles=1", "model.l_cycles=1"], "cycles3x2": ["model.h_cycles=3"],
    "halt1": ["halt_max_steps=1"], "halt2": ["halt_max_steps=2"], "halt8": ["halt_max_steps=8"],
    "explore0": ["halt_exploration_prob=0"],
    "no-loo": ["leave_one_out=false"], "enclr3": ["encoder_lr_scale=3"], "ctx4": ["model.context_len=4"],
}
# The second study, one factor at a time from the chosen settings (synth-cpu's now) on level 3,
# where ETRM is off the floor (14.5% in 10 minutes) and below the oracle (35.5%).
STUDY3 = {"lr3e-3": ["lr=3e-3"], "enclr3": ["encoder_lr_scale=3"], "batch64": ["global_batch_size=64"],
          "hidden128": ["model.hidden_size=128", "encoder.hidden_size=128"]}
MODES = {"per-batch": ["train_mode=per_batch"], "encode-once": ["train_mode=per_batch_encode_once"]}
# Every factor that makes a step cheaper or shows more fresh samples, at once (no single one
# left the copy plateau): the study's follow-up, with its own bounds.
FAST = ["model.hidden_size=64", "encoder.hidden_size=64", "model.h_cycles=1", "model.l_cycles=1",
        "halt_max_steps=1", "global_batch_size=32"]
# The level where ETRM is neither at zero nor at the ceiling with the chosen settings (level 1:
# 4.5%, level 3: 14.5%, its oracle 35.5%): the encoder comparison and the second study run there.
CHOSEN_LEVEL = 3
# The encoder comparison: every encoder preset's `encoder:` settings.
ENCODER_PRESETS = ("enc-standard", "enc-variational", "enc-lpn", "enc-lpn-variational", "enc-hybrid",
                   "enc-cross-demo", "enc-set-transformer", "enc-hierarchical", "enc-recurrent")


def encoder_overrides(preset: str) -> list[str]:
    """The `encoder.*` settings an encoder preset makes, as dotted overrides."""
    from omegaconf import OmegaConf

    from etrm.core.config import CONFIG_DIR

    settings = OmegaConf.load(CONFIG_DIR / "preset" / f"{preset}.yaml").get("encoder", {})
    return [f"encoder.{key}={value}" for key, value in settings.items()]


FIRST_STAGE = "l1-cells-withq-place-first-stage"
RUNS: dict[str, tuple[int, list[str]]] = {
    **{f"l{level}-{method}": (level, overrides) for level in LEVELS for method, overrides in BOUNDS.items()},
    **{f"base-{method}": (STUDY_LEVEL, [*STUDY_BASE, *overrides]) for method, overrides in BOUNDS.items()},
    **{f"study-{name}": (STUDY_LEVEL, [*STUDY_BASE, *overrides]) for name, overrides in STUDY.items()},
    **{f"study3-{name}": (CHOSEN_LEVEL, overrides) for name, overrides in STUDY3.items()},
    **{f"mode-{name}": (STUDY_LEVEL, [*STUDY_BASE, *overrides]) for name, overrides in MODES.items()},
    **{f"fast-{method}": (STUDY_LEVEL, [*STUDY_BASE, *FAST, *overrides]) for method, overrides in BOUNDS.items()},
    **{preset: (CHOSEN_LEVEL, encoder_overrides(preset)) for preset in ENCODER_PRESETS},
    **{f"l{level}-{name}": (level, overrides) for level in LEVELS for name, overrides in DESIGNS.items()},
    **{f"l{level}-{name}-alone": (level, overrides) for level in LEVELS for name, overrides in DESIGNS.items()},
    # A design's run trained on past its 30 minutes (`train NAME-60min --minutes 60`: it starts
    # from a copy of the 30-minute run's checkpoint and curves, so it costs only the extra time).
    **{f"l{level}-{name}{CONTINUED}": (level, overrides) for level in LEVELS for name, overrides in DESIGNS.items()},
    # A curriculum's first stage, named apart from the design's own level-1 run: what
    # `cells-withq-place-after-l1` starts from (run with `--minutes 20`).
    FIRST_STAGE: (1, DESIGNS["cells-withq-place"]),
    # The targets' budget: run with `--minutes 30`.
    **{f"l{level}-etrm-30min": (level, []) for level in LEVELS},
}
TARGETS = {1: 0.90, 3: 0.50}  # held-out pass@2 of ETRM after 30 minutes (level 3: synth-iid)
GROUPS = {"bounds": [f"l{level}-{m}" for level in LEVELS for m in BOUNDS], "base": [f"base-{m}" for m in BOUNDS],
          "designs": [*(f"l{level}-{name}" for level in LEVELS for name in DESIGNS), FIRST_STAGE],
          "chosen": [f"l{level}-{name}-alone" for level in LEVELS for name in DESIGNS],
          "fast": [f"fast-{m}" for m in BOUNDS],
          "study": [f"study-{n}" for n in STUDY], "study3": [f"study3-{n}" for n in STUDY3],
          "modes": [f"mode-{n}" for n in MODES],
          "encoders": list(ENCODER_PRESETS), "targets": [f"l{level}-etrm-30min" for level in TARGETS]}
OTHER_SPLITS = ("params", "compose")  # level 3's other held-out splits (same training set)
PROTOCOL = "protocol.json"  # a run's minutes, threads and how it shared the machine


# What a continued run keeps of the run it continues: the checkpoint (step, weights, optimiser,
# data position, the time trained) and what was logged, never its final evaluation.
CONTINUED_FILES = ("checkpoint.pt", "config.yaml", "metrics.jsonl")


def train(name: str, minutes: float, threads: int, sharing: str) -> None:
    level, overrides = RUNS[name]
    if name.endswith(CONTINUED) and not (OUT / name).exists():
        start = OUT / name.removesuffix(CONTINUED)
        if not (start / "summary.json").is_file():
            raise SystemExit(f"{name} continues {start.name}, which has not finished")
        (OUT / name).mkdir(parents=True)
        for file in CONTINUED_FILES:
            if (start / file).is_file():
                (OUT / name / file).write_bytes((start / file).read_bytes())
    protocol = OUT / name / PROTOCOL
    if not protocol.is_file():  # how the run was started: the designs table says it per row
        protocol.parent.mkdir(parents=True, exist_ok=True)
        protocol.write_text(json.dumps({"minutes": minutes, "threads": threads, "sharing": sharing}))
    train_run(OUT / name, [f"preset={LEVELS[level]}", *CURVE, *overrides], minutes, threads)


def extra(name: str, probe_tasks: int, threads: int) -> None:
    """Other held-out splits (level 3) and the rule probe of a finished run -> RUN/extra.json."""
    import torch

    from etrm.analysis.probe import probe_run
    from etrm.eval.evaluate import evaluate_run

    torch.set_num_threads(threads)
    run_dir = OUT / name
    level, _ = RUNS[name]
    result: dict = {}
    if level == 3:
        for split in OTHER_SPLITS:
            summary = evaluate_run(run_dir, [f"test_sources=synth:{split}:test:0:100:8", "leak_policy=drop",
                                             f"eval.out_dir={run_dir / split}"])
            result[split] = {"pass@2": summary["pass@2"], "num_tasks": summary["num_tasks"]}
    # Validation-seed tasks (seed 1), never the reported held-out ones; the oracle's and the zero
    # context's probes are the probe's own ceiling and floor.
    result["probe"] = probe_run(run_dir, f"synth:iid:test:1:{probe_tasks}:8:{level}").probes
    (run_dir / "extra.json").write_text(json.dumps(result, indent=1, default=str))
    print(name, json.dumps(result, default=str)[:400], flush=True)


REPRESENT = OUT / "represent"
# What the representability diagnostic trains (a fresh encoder with a head on the rule labels):
# the standard front end, its options, and the demos as the context.
REPRESENT_DESIGNS = {"standard": [], "fused": DESIGNS["fused"], "aligned": DESIGNS["aligned"],
                     "slots": DESIGNS["slots"], "cells": CELLS}


def represent(level: int, steps: int, threads: int, train_tasks: int) -> None:
    """`etrm.analysis.representability` for each of REPRESENT_DESIGNS at `level`: trained on the
    first `train_tasks` training tasks' labels, scored on the 100 held-out tasks ->
    runs/ladder/represent/l{level}-NAME.json (an existing file is kept)."""
    import torch

    from etrm.analysis.representability import representability
    from etrm.core.config import load_config
    from etrm.models.run_data import split_of

    torch.set_num_threads(threads)
    REPRESENT.mkdir(parents=True, exist_ok=True)
    for name, overrides in REPRESENT_DESIGNS.items():
        path = REPRESENT / f"l{level}-{name}.json"
        if path.is_file():
            continue
        config = load_config([f"preset={LEVELS[level]}", *overrides])
        split = split_of(config)
        start = time.perf_counter()
        result = representability(config, split.train[:train_tasks], split.test, steps=steps)
        result.update(overrides=overrides, seconds=time.perf_counter() - start, threads=threads)
        path.write_text(json.dumps(result, indent=1))
        print(name, json.dumps(result)[:300], flush=True)


# The training steps whose cost the designs are compared on (level 1's preset, one process).
COST_ARMS = {"TRM": ["model_type=trm"], "standard": [], "demo_cells": CELLS, "cell_slots": DESIGNS["slots"],
             "demo_cells, one group": CELLS}
# Arms whose decoder runs each batch as one group (what the demos as the context cost before the
# decoder grouped its samples by length: the grouping's saving, side by side).
ONE_GROUP_ARMS = ("demo_cells, one group",)
COST_PRESETS = (LEVELS[1], "arc10-cpu")  # the ladder's canvas (8x8, 4 demos) and ARC's (10x10, 10 demos)


def _cost_path(preset: str) -> Path:
    return KEPT / f"cost-{preset}.json"


def cost(steps: int, warmup: int, threads: int, preset: str) -> None:
    """Seconds per training step (`Trainer.train_step`, optimiser included) of COST_ARMS at `preset`,
    timed side by side in alternating rounds (`etrm.bench.alternating_rounds`) -> KEPT/cost-PRESET.json."""
    import torch

    from etrm.bench import alternating_rounds
    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.data.tensors import to_torch
    from etrm.train.loop import Trainer

    torch.set_num_threads(threads)
    trainers = {}
    for name, overrides in COST_ARMS.items():
        extra = ["augmentations_per_task=8"] if name == "TRM" and preset == "arc10-cpu" else []  # its rows
        config = load_config([f"preset={preset}", *overrides, *extra, "tracker=none", "progress=false",
                              f"run_dir={OUT / 'cost' / name.replace(' ', '-').replace(',', '')}"])
        trainer = Trainer(config, Runtime(torch.device("cpu")))
        if name in ONE_GROUP_ARMS:
            trainer.model.decoder.config.region_groups = 1
        trainers[name] = (trainer, config.global_batch_size)

    def arm(name: str):
        trainer, batch_size = trainers[name]

        def prepare(index: int):
            batch = to_torch(trainer.sampler.batch(index, batch_size))
            return lambda: trainer.state.add(trainer.train_step(batch))
        return prepare

    measured = alternating_rounds({name: arm(name) for name in COST_ARMS}, rounds=steps, warmup=warmup)
    medians = measured.medians()
    result = {"preset": preset, "seconds_per_step": medians, "steps": steps, "warmup": warmup, "threads": threads,
              "vs_standard": {n: medians[n] / medians["standard"] for n in medians},
              "vs_trm": {n: medians[n] / medians["TRM"] for n in medians}, "machine": machine()}
    _cost_path(preset).parent.mkdir(parents=True, exist_ok=True)
    _cost_path(preset).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


# What the reports read of a finished run, kept in the repository (benchmarks/results/ladder/NAME.json)
# so a section or figure can be redrawn after the run's outputs are gone: the summary's scores,
# how it was run, its per-family score, the other splits and probe, and these logged fields.
KEPT = ROOT / "benchmarks" / "results" / "ladder"
# The designs figure as it stood before results were kept (its runs' logs are gone).
EARLIER_FIGURE = "fewshot_designs_2026-12-07.png"
KEPT_FIELDS = {"eval_test": ("wall_time", "pass@2"), "train": ("seconds_per_step", "encoder_grad_share"),
               "diagnostics": ("retrieval_accuracy", "context_influence")}


@functools.cache
def _kept(name: str) -> dict | None:
    """A finished run as the reports read it: refreshed from runs/ladder/NAME (and written to
    KEPT) while that holds a finished run, else as KEPT holds it; None for a run never kept."""
    run_dir, path = OUT / name, KEPT / f"{name}.json"
    if not (run_dir / "summary.json").is_file():
        return json.loads(path.read_text()) if path.is_file() else None
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    protocol, extra = run_dir / PROTOCOL, run_dir / "extra.json"
    kept = {
        "summary": {"steps": summary["steps"], "train_eval": {"exact_match": summary["train_eval"]["exact_match"]},
                    "test_eval": {key: summary["test_eval"].get(key)
                                  for key in ("pass@2", "token_accuracy", "copy_input_floor")}},
        "protocol": json.loads(protocol.read_text()) if protocol.is_file() else None,
        "families": _families(name),
        "extra": json.loads(extra.read_text()) if extra.is_file() else {},
        "records": [{"kind": r["kind"], "step": r["step"],
                     **{key: r[key] for key in KEPT_FIELDS[r["kind"]] if key in r}}
                    for r in records if r["kind"] in KEPT_FIELDS],
    }
    KEPT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(kept, default=str) + "\n")
    return kept


def _diagnostics(name: str) -> list[dict]:
    return (_kept(name) or {}).get("records", [])


def designs_figure(names: list[str]) -> Path:
    """Held-out pass@2, the encoder's gradient share, retrieval and context influence against
    steps for the design runs, a row per level, a colour per design -> docs/figures/fewshot_designs.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    designs = sorted({name.split("-", 1)[1] for name in names})
    fig, grid = plt.subplots(len(LEVELS), 4, figsize=(18, 3.4 * len(LEVELS)), squeeze=False)
    for axes, level in zip(grid, LEVELS, strict=True):
        for name in names:
            records = _diagnostics(name) if name.startswith(f"l{level}-") else []
            design = name.split("-", 1)[1]
            for axis, kind, key in ((axes[0], "eval_test", "pass@2"), (axes[1], "train", "encoder_grad_share"),
                                    (axes[2], "diagnostics", "retrieval_accuracy"),
                                    (axes[3], "diagnostics", "context_influence")):
                points = [(r["step"], r[key]) for r in records if r["kind"] == kind and r.get(key) is not None]
                if points:
                    axis.plot(*zip(*points, strict=True), label=design, linewidth=1,
                              color=f"C{designs.index(design) % 10}")
        for axis, title in zip(axes, ("held-out pass@2", "encoder gradient share (log)",
                                      "task retrieval (probe set)", "context influence (loss, swapped - own)"),
                               strict=True):
            axis.set_title(f"level {level}: {title}", fontsize=9)
            axis.set_xlabel("step")
            axis.grid(alpha=0.3)
            if axis.lines:
                axis.legend(fontsize=5)
        axes[1].set_yscale("log")
    fig.tight_layout()
    path = FIGURE.with_name("fewshot_designs.png")
    fig.savefig(path, dpi=80, bbox_inches="tight")
    return path


def designs_report(minutes: float, threads: int, sharing: str) -> None:
    """The `fewshot_designs` section of BENCHMARKS.md: every design run that exists, its bounds
    beside it where they were run, and the representability results."""
    continued = [f"{name}{CONTINUED}" for name in GROUPS["designs"]]
    candidates = GROUPS["designs"] + continued + GROUPS["chosen"] + GROUPS["bounds"]
    names = [name for name in candidates if _kept(name) is not None]
    rows = ["| run | overrides | minutes, threads, sharing | steps | s / step | train EM | held-out pass@2 | "
            "per family (pass@2 summed / tasks) | copy-input floor | encoder grad share (last) | retrieval (last) | "
            "context influence (last) |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    # Runs measured before their results were kept: their rows as they stand.
    earlier = {row.split("|")[1].strip(): row for row in _rows_kept(rows[0], set(names))}
    for name in candidates:
        if name not in names:
            rows.extend([earlier.pop(name)] if name in earlier else [])
            continue
        run, records = _load(name), _diagnostics(name)
        # Absent for runs started before it was written: the defaults.
        protocol = _kept(name)["protocol"] or {"minutes": minutes, "threads": threads, "sharing": sharing}
        last = {kind: next((r for r in reversed(records) if r["kind"] == kind), {})
                for kind in ("train", "diagnostics")}
        test = run["summary"]["test_eval"]
        rows.append(f"| {name} | {' '.join(f'`{o}`' for o in RUNS[name][1])} | {protocol['minutes']:.0f}, "
                    f"{protocol['threads']}, {protocol['sharing']} | {run['summary']['steps']} | "
                    f"{run['seconds_per_step']:.2f} | {_cell(run['summary']['train_eval']['exact_match'])} | "
                    f"{_cell(test['pass@2'])} | {_kept(name)['families']} | {_cell(test.get('copy_input_floor'))} | "
                    f"{last['train'].get('encoder_grad_share', float('nan')):.1e} | "
                    f"{_cell(last['diagnostics'].get('retrieval_accuracy'))} | "
                    f"{last['diagnostics'].get('context_influence', float('nan')):.3f} |")
    represented = ["| level, design | colour image: accuracy (chance) | all shown colours right | family | "
                   "first parameter: accuracy (chance) | steps | seconds |", "|---|---|---|---|---|---|---|"]
    represent_files = sorted(REPRESENT.glob("*.json")) if REPRESENT.is_dir() else []
    represented += _rows_kept(represented[0], {path.stem for path in represent_files})
    for path in represent_files:
        result = json.loads(path.read_text())
        image, family, parameter = result["colour_image"], result["family"], result["parameter"]

        def scored(part: dict) -> str:
            return "-" if part.get("accuracy") is None else f"{_cell(part['accuracy'])} ({_cell(part['chance'])})"

        represented.append(f"| {path.stem} | {scored(image)} | {_cell(image.get('tasks_all_right'))} | "
                           f"{scored(family)} | {scored(parameter)} | {result['steps']} | {result['seconds']:.0f} |")
    costs = ["| preset | training step | s / step (median) | vs standard | vs TRM | timed steps per arm (warm-up), "
             "threads |", "|---|---|---|---|---|---|"]
    costs += _rows_kept(costs[0], {f"`{preset}`" for preset in COST_PRESETS if _cost_path(preset).is_file()})
    for preset in COST_PRESETS:
        path = _cost_path(preset)
        result = json.loads(path.read_text()) if path.is_file() else {}
        for name, seconds in result.get("seconds_per_step", {}).items():
            costs.append(f"| `{preset}` | {name} | {seconds:.3f} | {result['vs_standard'][name]:.2f}x | "
                         f"{result['vs_trm'][name]:.2f}x | {result['steps']} ({result['warmup']}), "
                         f"{result['threads']} |")
    cost_note = "each preset's arms side by side in one process, in alternating rounds"
    figure_path = designs_figure(names)
    undrawn = len(rows) - 2 - len(names)
    figure_note = (f"Not drawn: {undrawn} runs measured before their results were kept (their curves "
                   f"are in [the earlier figure](docs/figures/{EARLIER_FIGURE}))." if undrawn else "")
    body = f"""## Few-shot designs: the demos as the context, front end, training signal (`fewshot_ladder.py designs`)

Machine: {machine()}. Each run's minutes of training (`max_minutes`, the periodic held-out
evaluations every 50 steps included), torch threads and how it shared the machine are in its row.
Held-out: the level's 100 `iid` tasks. The copy-input floor is what answering each test input
with itself scores on the same tasks. Gradient share, retrieval and context influence are the
last values logged (diagnostics every 250 steps on 16 training tasks x 4 augmentations).
`model.context_len=null` resolves to 256 here (4 demos of 8x8 cells), the value the runs made
before it existed named. `NAME-60min`: the 30-minute run continued from its checkpoint.

{chr(10).join(rows)}

Representability (`etrm.analysis.representability`): a fresh encoder of each design trained with a
small head directly on the rule labels of the level's training tasks, scored on its held-out
tasks. A diagnostic, not a model.

{chr(10).join(represented)}

Cost of a training step ({cost_note}):

{chr(10).join(costs)}

![design curves](docs/figures/{figure_path.name})
{figure_note}
"""
    write_section("fewshot_designs", body)
    print(body)


def _rows_kept(header: str, measured: set[str]) -> list[str]:
    """The rows of the section's table under `header` whose first cell is not in `measured`
    (what was measured before its results were kept, as it stands)."""
    lines = section_text("fewshot_designs").splitlines()
    if header not in lines:
        return []
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("| "):
            break
        if line.split("|")[1].strip() not in measured:
            rows.append(line)
    return rows


def _families(name: str) -> str:
    """A run's held-out pass@2 per rule family (`etrm.analysis.report.pass_at_2_by_family`);
    a level with more than four families (level 3) as single rules against compositions."""
    from etrm.analysis.report import pass_at_2_by_family
    from etrm.core.config import config_from_yaml
    from etrm.data.sources import load_tasks

    evaluation = OUT / name / "eval.json"
    if not evaluation.is_file():
        return "-"
    tasks = load_tasks(config_from_yaml(OUT / name / "config.yaml").test_sources)
    families = pass_at_2_by_family(json.loads(evaluation.read_text())["per_task"], tasks)
    if len(families) > 4:
        grouped: dict[str, tuple[float, int]] = {}
        for family, (solved, count) in families.items():
            kind = "compositions" if "+" in family else "single rules"
            grouped[kind] = (grouped.get(kind, (0.0, 0))[0] + solved, grouped.get(kind, (0.0, 0))[1] + count)
        families = grouped
    return ", ".join(f"{family} {solved:g}/{count}" for family, (solved, count) in families.items())


# ------------------------------------------------------------------------------ the report
def _load(name: str) -> dict | None:
    kept = _kept(name)
    if kept is None:
        return None
    records = kept["records"]
    curve = [(r["wall_time"] / 60, r["pass@2"]) for r in records if r["kind"] == "eval_test"]
    seconds = [r["seconds_per_step"] for r in records if r["kind"] == "train" and "seconds_per_step" in r]
    return {"summary": kept["summary"], "curve": curve, "extra": kept["extra"],
            "seconds_per_step": statistics.median(seconds) if seconds else None}


def _encoder_parameters(name: str) -> int:
    from etrm.core.config import config_from_yaml
    from etrm.models.build import build_model

    model = build_model(config_from_yaml(OUT / name / "config.yaml"))
    return sum(p.numel() for p in model.context_source.parameters())


def _pass2(run: dict | None) -> float | None:
    return None if run is None else run["summary"]["test_eval"]["pass@2"]


def _cell(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.2f}"


def efficiency(etrm: float | None, oracle: float | None, none: float | None) -> str:
    """`etrm.analysis.report.encoder_efficiency` as a table cell ("-" where a run is missing)."""
    from etrm.analysis.report import encoder_efficiency

    if etrm is None or oracle is None or none is None:
        return "-"
    return str(encoder_efficiency(etrm, oracle, none))


def _run_row(label: str, run: dict | None, detail: str = "") -> str:
    if run is None:
        return f"| {label} | {detail} | not run (docs/LOG.md says why) | | | | |"
    summary = run["summary"]
    return (f"| {label} | {detail} | {summary['steps']} | {run['seconds_per_step']:.2f} | "
            f"{_cell(summary['train_eval']['exact_match'])} | {_cell(summary['test_eval']['pass@2'])} | "
            f"{_cell(summary['test_eval']['token_accuracy'])} |")


STYLES = {"etrm": ("ETRM", "-", "tab:blue"), "oracle": ("oracle (upper bound)", "--", "tab:green"),
          "none": ("no context (floor)", ":", "tab:red"), "etrm-30min": ("ETRM, 30 minutes", "-", "tab:purple"),
          CHOSEN_DESIGN: ("demos as the context + signal", "-", "tab:orange"),
          f"{CHOSEN_DESIGN}-alone": ("the same, 2 threads alone", "-", "tab:brown")}


def _curve(axis, run: dict | None, style: str = "-", **plot_options) -> None:
    if run and run["curve"]:
        minutes, scores = zip(*run["curve"], strict=True)
        axis.plot(minutes, [100 * score for score in scores], style, **plot_options)


def _settings_panel(axis, runs: dict[str, dict | None], names: list[str], bounds: str, title: str) -> None:
    # One curve per setting, the bounds runs `{bounds}-oracle` / `{bounds}-none` dashed.
    for name in names:
        label = name.removeprefix("enc-") if name.startswith(("enc-", "fast-")) else name.split("-", 1)[1]
        _curve(axis, runs.get(name), linewidth=1, label=label)
    for method in ("oracle", "none"):
        _curve(axis, runs.get(f"{bounds}-{method}"), STYLES[method][1], color=STYLES[method][2], linewidth=1.5)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=5, ncol=2)


def figure(runs: dict[str, dict | None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(LEVELS) + 2, figsize=(4 * (len(LEVELS) + 2), 3.4), sharey=True)
    for axis, level in zip(axes[:len(LEVELS)], LEVELS, strict=True):
        for method, (label, style, colour) in STYLES.items():
            _curve(axis, runs.get(f"l{level}-{method}"), style, color=colour, marker=".", label=label)
        axis.set_title(f"level {level} ({LEVELS[level]})", fontsize=9)
    axes[0].set_ylabel("held-out pass@2 (%)")
    axes[0].legend(fontsize=7)
    study = [*(f"study-{n}" for n in STUDY), *(f"mode-{n}" for n in MODES), *(f"fast-{m}" for m in BOUNDS)]
    _settings_panel(axes[-2], runs, study, "base", f"study, level {STUDY_LEVEL} (base bounds)")
    _settings_panel(axes[-1], runs, [*ENCODER_PRESETS, *(f"study3-{n}" for n in STUDY3)], f"l{CHOSEN_LEVEL}",
                    f"encoders, second study: level {CHOSEN_LEVEL}")
    for axis in axes:
        axis.set_xlabel("CPU minutes (max_minutes clock)")
        axis.grid(alpha=0.3)
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(FIGURE, dpi=90, bbox_inches="tight")


def report(minutes: float, threads: int, sharing: str) -> None:
    runs = {name: _load(name) for name in RUNS}
    bounds = ["| level | ETRM | oracle | no context | encoder efficiency | ETRM train EM | "
              "steps (ETRM / oracle / none) |", "|---|---|---|---|---|---|---|"]
    for level, preset in LEVELS.items():
        etrm, oracle, none = (runs[f"l{level}-{m}"] for m in BOUNDS)
        steps = " / ".join(str(r["summary"]["steps"]) if r else "-" for r in (etrm, oracle, none))
        train_em = _cell(etrm["summary"]["train_eval"]["exact_match"]) if etrm else "-"
        bounds.append(f"| {level} (`{preset}`) | {_cell(_pass2(etrm))} | {_cell(_pass2(oracle))} | "
                      f"{_cell(_pass2(none))} | {efficiency(_pass2(etrm), _pass2(oracle), _pass2(none))} | "
                      f"{train_em} | {steps} |")
    splits = ["| level 3 split | ETRM | oracle | no context | encoder efficiency |", "|---|---|---|---|---|"]
    for split in OTHER_SPLITS:
        scores = {m: (runs[f"l3-{m}"] or {}).get("extra", {}).get(split, {}).get("pass@2") for m in BOUNDS}
        if split == "params":  # unseen values: the oracle's atoms are unknown, its score undefined
            scores["oracle"] = None
        efficiency_cell = efficiency(scores["etrm"], scores["oracle"], scores["none"]) if split != "params" else \
            "undefined (unseen parameter values)"
        splits.append(f"| {split} | {_cell(scores['etrm'])} | {_cell(scores['oracle'])} | {_cell(scores['none'])} | "
                      f"{efficiency_cell} |")
    probes = ["| run | rule family: accuracy (chance, classes, tasks) | first-step parameter: accuracy (chance, "
              "classes, tasks) |", "|---|---|---|"]
    for name, run in runs.items():
        probe = (run or {}).get("extra", {}).get("probe")
        if name.startswith("fast-"):  # the same runs as level 1's bounds (the preset's settings now)
            continue
        if probe:
            cells = []
            for key in ("family", "parameter"):
                part = probe.get(key) or {}
                cells.append("-" if part.get("accuracy") is None else
                             f"{_cell(part['accuracy'])} ({_cell(part['chance'])}, {part['classes']}, {part['tasks']})")
            probes.append(f"| {name} | {cells[0]} | {cells[1]} |")
    header = ["| setting | overrides | steps | s / step | train EM | held-out pass@2 | held-out token acc |",
              "|---|---|---|---|---|---|---|"]
    base = runs["base-etrm"]
    study = [*header, *(_run_row(f"base: {label}", runs[f"base-{method}"], " ".join(f"`{o}`" for o in BOUNDS[method]))
                        for method, label in (("etrm", "ETRM"), ("oracle", "oracle"), ("none", "no context")))]
    study += [_run_row(name, runs[f"study-{name}"], " ".join(f"`{o}`" for o in STUDY[name])) for name in STUDY]
    study += [_run_row(f"all speed factors at once: {label}", runs[f"fast-{method}"],
                       " ".join(f"`{o}`" for o in [*FAST, *BOUNDS[method]]))
              for method, label in (("etrm", "ETRM"), ("oracle", "oracle"), ("none", "no context"))]
    study3 = [*header, _run_row(f"chosen settings (`{LEVELS[CHOSEN_LEVEL]}`)", runs[f"l{CHOSEN_LEVEL}-etrm"])]
    study3 += [_run_row(name, runs[f"study3-{name}"], " ".join(f"`{o}`" for o in STUDY3[name])) for name in STUDY3]
    modes = [*header, _run_row("persistent carry (base)", base)]
    modes += [_run_row(name, runs[f"mode-{name}"], " ".join(f"`{o}`" for o in MODES[name])) for name in MODES]
    floor, ceiling = _pass2(runs[f"l{CHOSEN_LEVEL}-none"]), _pass2(runs[f"l{CHOSEN_LEVEL}-oracle"])
    ranked = sorted(((name, runs[name]) for name in ENCODER_PRESETS if runs[name]),
                    key=lambda item: -_pass2(item[1]))
    encoders = ["| encoder (preset) | iid pass@2 | encoder efficiency (iid) | params | compose | rule probe: family "
                "(chance) | rule probe: parameter (chance) | encoder parameters | steps | s / step | train EM |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, run in ranked:
        cells = []
        for key in ("family", "parameter"):
            probe = (run["extra"].get("probe") or {}).get(key) or {}
            cells.append("-" if probe.get("accuracy") is None else
                         f"{_cell(probe['accuracy'])} ({_cell(probe['chance'])})")
        other = [_cell(run["extra"].get(split, {}).get("pass@2")) for split in OTHER_SPLITS]
        encoders.append(f"| {name} | {_cell(_pass2(run))} | {efficiency(_pass2(run), ceiling, floor)} | "
                        f"{' | '.join(other)} | {cells[0]} | {cells[1]} | {_encoder_parameters(name):,} | "
                        f"{run['summary']['steps']} | "
                        f"{run['seconds_per_step']:.2f} | {_cell(run['summary']['train_eval']['exact_match'])} |")
    encoders += [f"| {name} | not run | | | | | | | | | |" for name in ENCODER_PRESETS if not runs[name]]
    targets = ["| level | ETRM held-out pass@2 after 30 minutes | target | steps | train EM | met |",
               "|---|---|---|---|---|---|"]
    for level, target in TARGETS.items():
        run = runs[f"l{level}-etrm-30min"]
        if run is None:
            targets.append(f"| {level} | not run | >= {100 * target:.0f}% | | | |")
            continue
        score = _pass2(run)
        targets.append(f"| {level} | {_cell(score)} | >= {100 * target:.0f}% | {run['summary']['steps']} | "
                       f"{_cell(run['summary']['train_eval']['exact_match'])} | {'yes' if score >= target else 'no'} |")
    figure(runs)
    body = f"""## Few-shot generalisation at CPU scale: the ladder and its bounds (`benchmarks/fewshot_ladder.py`)

Machine: {machine()}. Every run is `etrm train preset=synth-levelL` (+ the overrides named)
for {minutes:g} minutes of wall-clock as `max_minutes` counts it (periodic held-out evaluations
every 50 steps included), {threads} torch thread(s) per run; {sharing}. Held-out: 100 `iid`
tasks of the level (pass@2 = pass@1: identity augmentation only); train EM: the EMA weights on
the training tasks' test pairs. Oracle: `model_type=oracle` (the decoder is given the rule's
atoms); no context: `encoder.type=none`; both trained exactly like ETRM on the same episodes.

### Bounds per level

{chr(10).join(bounds)}

### Level 3: the other held-out splits (same three runs)

{chr(10).join(splits)}

### Rule probe (linear classifier on held-out contexts, 5-fold; classes under 5 tasks left out)

{chr(10).join(probes) if len(probes) > 2 else "(not measured yet)"}

### Study: one factor at a time on level {STUDY_LEVEL}

{chr(10).join(study)}

### Study from the chosen settings on level {CHOSEN_LEVEL}

{chr(10).join(study3)}

### Training modes on level {STUDY_LEVEL} (equal wall-clock)

{chr(10).join(modes)}

### Targets: ETRM with 30 minutes (the same settings, one thread, beside one other run)

{chr(10).join(targets)}

### Encoders on level {CHOSEN_LEVEL} (ranked by held-out pass@2)

{chr(10).join(encoders)}

![held-out pass@2 against CPU minutes](docs/figures/fewshot_ladder.png)
"""
    write_section("fewshot_ladder", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["train", "extra", "represent", "cost", "report", "designs"])
    parser.add_argument("names", nargs="*")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--probe-tasks", type=int, default=300)
    parser.add_argument("--sharing", default="two runs side by side on the two cores")
    parser.add_argument("--level", type=int, default=1, help="represent: the ladder level")
    parser.add_argument("--steps", type=int, default=600,
                        help="represent: training steps of each encoder; cost: timed steps per arm")
    parser.add_argument("--train-tasks", type=int, default=2000, help="represent: training tasks used")
    parser.add_argument("--cost-preset", choices=COST_PRESETS, default=LEVELS[1], help="cost: the preset timed")
    args = parser.parse_args()
    names = [n for name in args.names for n in GROUPS.get(name, [name])]
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)} and the groups {', '.join(GROUPS)}")
    if args.stage == "train":
        for name in names:
            train(name, args.minutes, args.threads, args.sharing)
    elif args.stage == "extra":
        for name in names:
            extra(name, args.probe_tasks, args.threads)
    elif args.stage == "represent":
        represent(args.level, args.steps, args.threads, args.train_tasks)
    elif args.stage == "cost":
        cost(args.steps, 5, args.threads, args.cost_preset)
    elif args.stage == "designs":
        designs_report(args.minutes, args.threads, args.sharing)
    else:
        report(args.minutes, args.threads, args.sharing)


if __name__ == "__main__":
    main()
