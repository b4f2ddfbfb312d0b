"""Phase 1 at CPU size: train token accuracy and exact match against wall-clock minutes, for
ETRM (standard encoder) and the TRM baseline on the same 32 tasks (`preset=overfit-cpu`).

Each model trains for `--minutes` of wall-clock time, one after the other (never side by side,
so each has the whole machine); every `--eval-every` steps the EMA weights are evaluated on the
training tasks' test pairs. Writes the `overfit_cpu` section of BENCHMARKS.md.
Run: `python benchmarks/overfit_cpu.py --minutes 30`.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, section_rows, section_text, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(model_type: str, minutes: float, eval_every: int, run_dir: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "etrm", "train", "preset=overfit-cpu", f"model_type={model_type}",
               f"max_minutes={minutes}", "max_steps=1000000", f"eval_every={eval_every}",
               "eval.periodic_splits=train", f"run_dir={run_dir}", "tracker=none", "progress=false",
               f"run_name=overfit-cpu-{model_type}", *extra]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"evals": [r for r in records if r["kind"] == "eval_train"],
            "train": [r for r in records if r["kind"] == "train"], "summary": summary}


def curve_table(results: dict[str, dict]) -> str:
    lines = ["| model | step | minutes | train token accuracy | train exact match |", "|---|---|---|---|---|"]
    for model, result in results.items():
        for record in result["evals"]:
            lines.append(f"| {model} | {record['step']} | {record['wall_time'] / 60:.1f} | "
                         f"{record['token_accuracy']:.3f} | {record['exact_match']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--models", default="etrm,trm")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("overrides", nargs="*", help="extra config overrides for both runs")
    args = parser.parse_args()
    results = {}
    for model_type in args.models.split(","):
        results[model_type] = run(model_type, args.minutes, args.eval_every,
                                  Path(args.out) / f"overfit-cpu-{model_type}", args.overrides)
    rows = ["| model | steps | s/step (median) | final train token acc. | final train exact match | verdict |",
            "|---|---|---|---|---|---|"]
    curve = ["| model | step | minutes | train token accuracy | train exact match |", "|---|---|---|---|---|"]
    kept = [m for m in ("etrm", "trm") if m not in results and section_rows("overfit_cpu", m)]
    for model_type in ("etrm", "trm"):
        if model_type in kept:  # not re-measured this time: its rows stay as they stand
            own = section_rows("overfit_cpu", model_type)
            rows.append(own[0])
            curve += own[1:]
            continue
        if model_type not in results:
            continue
        summary, train = results[model_type]["summary"], results[model_type]["train"]
        seconds = sorted(r["seconds_per_step"] for r in train)[len(train) // 2]
        rows.append(f"| {model_type} | {summary['steps']} | {seconds:.2f} | "
                    f"{summary['train_eval']['token_accuracy']:.3f} | {summary['train_eval']['exact_match']:.3f} | "
                    f"{summary.get('verdict', '-')} |")
        curve += curve_table({model_type: results[model_type]}).splitlines()[2:]
    earlier = re.search(r"Machine: (.*?\d{4}-\d{2}-\d{2})", section_text("overfit_cpu"))
    history = (f"Rows of {', '.join(kept)}: kept from the section's earlier run "
               f"({earlier[1] if earlier else 'machine not recorded'}); the others measured now.") if kept else ""
    body = f"""## Phase 1 at CPU size (`benchmarks/overfit_cpu.py`)

Machine: {machine()}. `preset=overfit-cpu` {' '.join(args.overrides)}, {args.minutes:g} minutes of
wall-clock per model (evaluations included), run one after the other. Train accuracy = EMA
weights on the training tasks' test pairs, identity augmentation, all ACT steps.
Target: ETRM above 90% train token accuracy within 30 minutes.

{chr(10).join(rows)}

Curve (evaluations every {args.eval_every} steps):

{chr(10).join(curve)}

{history}
"""
    write_section("overfit_cpu", body)
    print(body)


if __name__ == "__main__":
    main()
