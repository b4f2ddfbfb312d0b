"""True few-shot generalisation at CPU size, on the synthetic benchmark (`preset=synth-cpu`).

Trains three models on the one synthetic training set (ETRM with the standard encoder, ETRM with
another encoder, the TRM baseline), each for `--minutes` of wall-clock, then evaluates each on
the held-out tasks of the three splits (iid, params, compose):

- ETRM: the encoder's context; ETRM + TTO: that context refined on the task's demos
  (test-time training of the context on the all-demos objective, `ttt.params=context`).
- the other encoder, plain.
- TRM without fitting (the blank embedding row: it cannot know an unseen task) and TRM with
  test-time fitting (a fresh row from the mean embedding, fitted on the demos with the same
  optimisation budget as TTO: the same `ttt.*` settings).

For each: pass@1, pass@2, wall-clock seconds of the evaluation and analytic test-time FLOPs per
task. Stages (so that runs can be spread over the machine's cores): `train MODEL`, `eval MODEL`,
`report` (t-SNE of ETRM contexts on held-out tasks + the `synth_fewshot` section of
BENCHMARKS.md); `all` runs them in order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, section_text, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "synth"
FIGURE = ROOT / "docs" / "figures" / "synth_context_tsne.png"
SPLITS = ("iid", "params", "compose")
MODELS = {"etrm": ["model_type=etrm"], "etrm-cross-demo": ["model_type=etrm", "encoder.type=cross_demo"],
          "trm": ["model_type=trm"]}
# (label, model, optimise at test time?)
METHODS = [("ETRM (standard encoder)", "etrm", False), ("ETRM + TTO", "etrm", True),
           ("ETRM (cross_demo encoder)", "etrm-cross-demo", False), ("TRM, no fitting", "trm", False),
           ("TRM + test-time fitting", "trm", True)]
# One test-time budget for ETRM + TTO and TRM + fitting; the lr (`--tto-lr`, per model) was picked on
# validation tasks (`synth:iid:test` with seed 1, never on the reported held-out tasks).
TTO = ["ttt.steps=30", "ttt.act_steps=2", "ttt.params=context", "ttt.objective=all_demos", "ttt.augment=false"]


def held_out(split: str, count: int) -> str:
    return f"synth:{split}:test:0:{count}:8"


def train(model: str, minutes: float, threads: int) -> None:
    command = [sys.executable, "-m", "etrm", "train", "preset=synth-cpu", *MODELS[model], f"max_minutes={minutes}",
               f"run_name=synth-{model}", f"run_dir={OUT / model}", "progress=false"]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def evaluate_model(model: str, tto: list[str], count: int, threads: int) -> None:
    """Every method of `model` on the held-out tasks of each split -> RUN/fewshot.json."""
    import torch

    from etrm.core.distributed import Runtime
    from etrm.eval.evaluate import evaluate, load_for_eval

    torch.set_num_threads(threads)
    results = {}
    for label, owner, optimise in METHODS:
        if owner != model:
            continue
        for split in SPLITS:
            overrides = [f"test_sources={held_out(split, count)}", "leak_policy=drop", *(tto if optimise else [])]
            config, net, augmented, _ = load_for_eval(OUT / model, overrides)
            start = time.perf_counter()
            summary = evaluate(net, augmented, canvas_side=config.canvas_side, max_demos=config.max_demos,
                               batch_size=config.eval.batch_size, runtime=Runtime(torch.device("cpu")),
                               ttt=config.ttt if optimise else None, config=config)
            seconds = time.perf_counter() - start
            results[f"{label}|{split}"] = {"pass@1": summary["pass@1"], "pass@2": summary["pass@2"],
                                           "tasks": summary["num_tasks"], "seconds": seconds,
                                           "flops_per_task": summary["test_time_flops_per_task"],
                                           "tto": f"lr {config.ttt.lr:g}, {config.ttt.context_parameterisation}"
                                           if optimise else ""}
            print(label, split, results[f"{label}|{split}"], flush=True)
    (OUT / model / "fewshot.json").write_text(json.dumps(results, indent=1))


def tsne_figure(count: int) -> None:
    """Encoder contexts of held-out tasks of every split, coloured by the (first) rule family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import torch
    from sklearn.manifold import TSNE

    from etrm.data.synth import FAMILIES, rule_of
    from etrm.eval.diagnostics import probe_contexts
    from etrm.eval.evaluate import load_for_eval

    config, net, _, _ = load_for_eval(OUT / "etrm")
    points, families, markers = [], [], []
    for split, marker in zip(SPLITS, "o^s", strict=True):
        _, _, augmented, _ = load_for_eval(OUT / "etrm", [f"test_sources={held_out(split, count)}", "leak_policy=warn"])
        tasks = augmented.tasks
        contexts = probe_contexts(net.context_source, tasks, 1, config.canvas_side, config.max_demos,
                                  torch.device("cpu"), config.seed)
        points.append(contexts[:, 0].numpy())
        families += [rule_of(t).split("(", 1)[0] for t in tasks]
        markers += [marker] * len(tasks)
    embedded = TSNE(n_components=2, perplexity=20, init="pca", random_state=0).fit_transform(np.concatenate(points))
    names = list(FAMILIES)
    figure, axis = plt.subplots(figsize=(7, 5.5))
    colours = plt.get_cmap("tab10")
    for marker, split in zip("o^s", SPLITS, strict=True):
        for index, family in enumerate(names):
            chosen = [i for i, (f, m) in enumerate(zip(families, markers, strict=True)) if f == family and m == marker]
            if chosen:
                axis.scatter(embedded[chosen, 0], embedded[chosen, 1], color=colours(index), marker=marker, s=22,
                             label=family if split == "iid" else None, alpha=0.8)
    axis.legend(fontsize=7, loc="best", title="first rule (o iid, ^ params, s compose)", title_fontsize=7)
    axis.set_title("t-SNE of ETRM contexts on held-out synthetic tasks", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    FIGURE.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(FIGURE, dpi=90, bbox_inches="tight")


def report(count: int, minutes: float) -> None:
    results = {}
    for model in MODELS:
        path = OUT / model / "fewshot.json"
        if path.is_file():
            results.update(json.loads(path.read_text()))
    steps = {model: json.loads((OUT / model / "summary.json").read_text())["steps"]
             for model in MODELS if (OUT / model / "summary.json").is_file()}
    header = "| method | " + " | ".join(f"{s} pass@1 | {s} pass@2" for s in SPLITS) + \
        " | test-time s / task | test-time GFLOPs / task |"
    rows, kept = [header, "|---" * (3 + 2 * len(SPLITS)) + "|"], []
    earlier = [line for line in section_text("synth_fewshot").splitlines() if line.startswith("| ")]
    for label, model, _ in METHODS:
        cells = [results.get(f"{label}|{split}") for split in SPLITS]
        if not all(cells):  # not measured this time: its earlier row stays as it stands
            rows += [line for line in earlier if line.startswith(f"| {label} (")][:1]
            kept += [label] if rows[-1].startswith(f"| {label} (") else []
            continue
        seconds = sum(c["seconds"] for c in cells) / sum(c["tasks"] for c in cells)
        flops = sum(c["flops_per_task"] * c["tasks"] for c in cells) / sum(c["tasks"] for c in cells)
        tto = f", TTO {cells[0]['tto']}" if cells[0].get("tto") else ""
        rows.append(f"| {label} ({steps.get(model, '?')} training steps{tto}) | "
                    + " | ".join(f"{c['pass@1']:.3f} | {c['pass@2']:.3f}" for c in cells)
                    + f" | {seconds:.2f} | {flops / 1e9:.2f} |")
    body = f"""## Few-shot generalisation on the synthetic benchmark (`benchmarks/synth_fewshot.py`)

Machine: {machine()}. `preset=synth-cpu`: one training set of 2,000 generated tasks (grids up
to 8x8; the leak check drops training tasks sharing a pair with the held-out ones), each model
trained {minutes:g} minutes of wall-clock (`--threads` torch threads per run; how the runs
shared the machine is stated under the table); {count} held-out tasks per split,
identity augmentation only (a dihedral or colour change would move tasks across split
boundaries), so plain evaluation has one candidate (pass@2 = pass@1) and TTO / fitting give two
(the two best contexts). TTO and TRM fitting: the same budget (`{' '.join(TTO)}`; lr and
parameterisation beside the method). FLOPs are
analytic, task by task (`etrm.models.flops.task_test_time_flops`).

{chr(10).join(rows)}

{"Kept from the section's earlier run: " + ", ".join(kept) + "." if kept else ""}

![t-SNE of ETRM contexts](docs/figures/synth_context_tsne.png)
"""
    write_section("synth_fewshot", body)
    print(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("stage", choices=("train", "eval", "report", "all"))
    parser.add_argument("model", nargs="?", choices=tuple(MODELS))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--held-out", type=int, default=100, help="held-out tasks per split")
    parser.add_argument("--tto-lr", type=float, default=0.01, help="TTO / fitting lr (chosen on validation tasks)")
    args = parser.parse_args()
    models = [args.model] if args.model else list(MODELS)
    if args.stage in ("train", "all"):
        for model in models:
            train(model, args.minutes, args.threads)
    if args.stage in ("eval", "all"):
        for model in models:
            evaluate_model(model, [*TTO, f"ttt.lr={args.tto_lr}"], args.held_out, args.threads)
    if args.stage in ("report", "all"):
        tsne_figure(args.held_out)
        report(args.held_out, args.minutes)


if __name__ == "__main__":
    main()
