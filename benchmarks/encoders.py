"""The encoder comparison at CPU size: every encoder type on `preset=overfit-cpu`, side by side
in one script run, each for the same number of optimiser steps.

For each: parameters (encoder and total), seconds per training step (median of the logged
windows), train token accuracy and exact match after the budget (EMA weights, the training
tasks' test pairs), and task retrieval accuracy of the collapse diagnostics (chance = 1/16).
Writes the `encoders` section of BENCHMARKS.md. Run: `python benchmarks/encoders.py --steps 40`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENCODERS = {  # name in the table -> preset
    "standard": "enc-standard", "variational": "enc-variational", "lpn": "enc-lpn",
    "lpn (variational)": "enc-lpn-variational", "hybrid": "enc-hybrid", "cross_demo": "enc-cross-demo",
    "set_transformer": "enc-set-transformer", "hierarchical": "enc-hierarchical", "recurrent": "enc-recurrent",
}


def parameters(preset: str) -> tuple[int, int]:
    from etrm.core.config import load_config
    from etrm.models.build import build_model

    model = build_model(load_config([f"preset={preset}"]))
    encoder = sum(p.numel() for p in model.context_source.parameters())
    return encoder, sum(p.numel() for p in model.parameters())


def run(name: str, preset: str, steps: int, out: Path) -> dict:
    run_dir = out / preset
    command = [sys.executable, "-m", "etrm", "train", f"preset={preset}", f"max_steps={steps}",
               f"log_every={max(1, steps // 4)}", f"diagnostics_every={steps}", "eval.periodic_splits=train",
               f"run_dir={run_dir}", "tracker=none", "progress=false", f"run_name=bench-{preset}"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    windows = [r["seconds_per_step"] for r in records if r["kind"] == "train"]
    diagnostics = [r for r in records if r["kind"] == "diagnostics"]
    encoder_params, total_params = parameters(preset)
    return {"name": name, "encoder_params": encoder_params, "total_params": total_params,
            "seconds_per_step": statistics.median(windows), "token_accuracy": summary["train_eval"]["token_accuracy"],
            "exact_match": summary["train_eval"]["exact_match"],
            "retrieval": diagnostics[-1]["retrieval_accuracy"] if diagnostics else None,
            "minutes": summary["wall_minutes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench" / "encoders"))
    args = parser.parse_args()
    rows = []
    for name, preset in ENCODERS.items():
        print(f"{name} ({preset})", flush=True)
        rows.append(run(name, preset, args.steps, Path(args.out)))
    table = ["| encoder | encoder params | total params | s/step | train token acc. | train exact match | "
             "task retrieval |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        retrieval = "-" if row["retrieval"] is None else f"{row['retrieval']:.2f}"
        table.append(f"| {row['name']} | {row['encoder_params']:,} | {row['total_params']:,} | "
                     f"{row['seconds_per_step']:.2f} | {row['token_accuracy']:.3f} | {row['exact_match']:.3f} | "
                     f"{retrieval} |")
    body = f"""## Encoder comparison at CPU size (`benchmarks/encoders.py`)

Machine: {machine()}. Each encoder's preset (`enc-*` = `overfit-cpu` with that encoder: hidden
128, canvas 8, 32 tasks, batch 64) trained for {args.steps} optimiser steps, one after the other in
one script run. Train accuracy: EMA weights on the training tasks' test pairs. Task retrieval:
the collapse diagnostics' nearest-context retrieval over 16 probe tasks x 4 augmentations
(chance 0.06). A short budget: this ranks early learning speed and cost, not final accuracy.

{chr(10).join(table)}
"""
    write_section("encoders", body)
    print(body)


if __name__ == "__main__":
    main()
