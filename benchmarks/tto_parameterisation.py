"""Test-time optimisation of the context in two parameterisations, on validation tasks.

`raw` lets Adam move the context itself (the earlier behaviour: the encoder's output leaves the
token embeddings' scale it was trained on); `scaled` (the default) keeps each context vector's
norm and moves only its direction (`etrm.eval.tto.context_parameterisation`). Both get the same
budget (steps, ACT steps, gradient clip) and each learning rate of a small grid, on validation
tasks that are never reported elsewhere (`synth:iid:test` with another seed than the held-out
tasks of `benchmarks/synth_fewshot.py`). Reports pass@1, pass@2, the mean demo loss of the best
context, and the RMS of the best context beside the encoder's. Writes the `tto_parameterisation`
section of BENCHMARKS.md (one per model).
Run: `python benchmarks/tto_parameterisation.py [--run runs/synth/etrm] [--lrs 0.01,0.05]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

from etrm.core.distributed import Runtime  # noqa: E402
from etrm.data.episodes import EvalEnumeration  # noqa: E402
from etrm.data.tensors import to_torch  # noqa: E402
from etrm.eval.evaluate import load_for_eval, predict, score  # noqa: E402
from etrm.eval.tto import initial_context, optimise_contexts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def context_rms(model, augmented, config, tto) -> tuple[float, float]:
    """(RMS of the start context, RMS of the best context after TTO) over the first batch."""
    batch = to_torch(next(EvalEnumeration(augmented, canvas_side=config.canvas_side,
                                          max_demos=config.max_demos).batches(config.eval.batch_size)))
    start = initial_context(model, batch)
    best, _ = optimise_contexts(model, batch, tto)
    return float(start.pow(2).mean().sqrt()), float(best[:, 0].pow(2).mean().sqrt())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", default=str(ROOT / "runs" / "synth" / "etrm"))
    parser.add_argument("--validation", default="synth:iid:test:1:30:8", help="tasks to compare on (not reported)")
    parser.add_argument("--lrs", default="0.01,0.05")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--act-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = ["| parameterisation | lr | pass@1 | pass@2 | mean demo loss (best context) | context RMS start -> best "
            "| seconds |", "|---|---|---|---|---|---|---|"]
    for parameterisation in ("raw", "scaled"):
        for lr in (float(x) for x in args.lrs.split(",")):
            overrides = [f"test_sources={args.validation}", "leak_policy=warn", f"tto.steps={args.steps}",
                         f"tto.lr={lr}", f"tto.act_steps={args.act_steps}", f"tto.parameterisation={parameterisation}"]
            config, model, augmented, _ = load_for_eval(args.run, overrides)
            start = time.perf_counter()
            records = predict(model, augmented, canvas_side=config.canvas_side, max_demos=config.max_demos,
                              batch_size=config.eval.batch_size, runtime=Runtime(torch.device("cpu")), tto=config.tto)
            summary, _ = score(records, augmented, config.halt_max_steps)
            seconds = time.perf_counter() - start
            losses = [r["demo_loss"] for r in records if r.get("tto_rank") == 0]
            rms_start, rms_best = context_rms(model, augmented, config, config.tto)
            rows.append(f"| {parameterisation} | {lr:g} | {summary['pass@1']:.3f} | {summary['pass@2']:.3f} | "
                        f"{np.mean(losses):.3f} | {rms_start:.3f} -> {rms_best:.3f} | {seconds:.0f} |")
            print(rows[-1], flush=True)
    body = f"""## TTO of {Path(args.run).name}: raw or scale-keeping context (`benchmarks/tto_parameterisation.py`)

Machine: {machine()}. Model: `{Path(args.run).name}` of `benchmarks/synth_fewshot.py`, on
{args.validation.split(':')[4]} validation tasks (`{args.validation}`, a seed the reported held-out
tasks do not use), {args.steps} Adam steps with {args.act_steps} ACT steps inside, the same for both.

{chr(10).join(rows)}
"""
    write_section(f"tto_parameterisation_{Path(args.run).name}", body)
    print(body)


if __name__ == "__main__":
    main()
