"""The size-aware canvas (`dynamic_canvas=true`) against the reference's fixed canvas.

Stages (each writes its section of BENCHMARKS.md; `report` rewrites them from saved results):
- `regions`: how many test outputs the region rule (`etrm.data.canvas`) would cut off, per
  source and margin, and the decoder positions a sample needs (context + region side^2) against
  the fixed canvas's (context + 900). Seconds; no model.
- `speed`: training samples/s at the reference size (hidden 512, H3 x L4, 2 layers, canvas 30)
  on ARC-AGI-1 training + ConceptARC batches, fixed against size-aware, TRM and ETRM, timed in
  alternating rounds in one process (`etrm.bench.alternating_rounds`; the real
  `Trainer.train_step`; one ACT step per batch, so that every timed step is a new batch of the
  grouped stream: a step's cost depends on its batch's square alone). Evaluation samples/s on
  the held-out ARC-AGI-1 evaluation tasks too.
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
             "halt_max_steps=1", "optimizer=adamw", "test_sources=arc1:evaluation", "max_eval_groups=16",
             "leave_one_out=true", "augment=true", "translate=false"]
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


def _trainer(model: str, arm: str, conceptarc: str, batch_size: int):
    import torch

    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.train.loop import Trainer

    config = load_config(["preset=default", *REFERENCE, *MODELS[model], ARMS[arm], f"global_batch_size={batch_size}",
                          f"train_sources='arc1:training,{conceptarc}'", "tracker=none", "progress=false",
                          "device=cpu", "run_name=speed"])
    return Trainer(config, Runtime(torch.device("cpu")))


def speed(args: argparse.Namespace) -> None:
    """Training and evaluation samples/s, fixed against size-aware, alternating rounds."""
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

Machine: {machine()}; {results['threads']} torch thread(s), nothing else running. Hidden 512,
H3 x L4, 2 layers, canvas 30, batch {results['batch']}, on ARC-AGI-1 training + ConceptARC
(augmented, leave-one-out); {results['rounds']} alternating rounds of {results['steps']} steps per arm,
samples/s over all timed steps (the real `Trainer.train_step`: AdamW, clipping, EMA). One ACT step
per batch, so every timed step is a new batch of the size-grouped stream. Evaluation: the
first 16 held-out ARC-AGI-1 evaluation tasks, one view each, batches of {EVAL_BATCH}, one ACT step.

{chr(10).join(rows)}
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
    parser.add_argument("--train-steps", type=int, default=800, help="train: steps per run")
    parser.add_argument("--seeds", type=int, nargs="*", default=list(SEEDS), help="train: these seeds")
    args = parser.parse_args()
    if args.stage == "report":
        report_regions()
        report_speed()
        report_train()
        return
    {"regions": regions, "speed": speed, "train": train}[args.stage](args)


if __name__ == "__main__":
    main()
