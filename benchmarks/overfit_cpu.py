"""Phase 1 at CPU size: train token accuracy and exact match against wall-clock minutes, for
ETRM (standard encoder) and the TRM baseline on the same 32 tasks (`preset=overfit-cpu`).

Each model trains for `--minutes` of wall-clock time, one after the other; every `--eval-every`
steps the EMA weights are evaluated on the training tasks' test pairs. `--setting` names other
training settings to compare (`SETTINGS`), `--threads` and `--how` say how the run used the
machine (two settings may share it side by side, one thread each, to compare them). A finished
run is reused. Writes the `overfit_cpu` section of BENCHMARKS.md, keeping the rows of the models
and settings not run this time.
Run: `python benchmarks/overfit_cpu.py --minutes 30 --threads 2`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, section_rows, section_text, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


# Training settings to compare on Phase 1 (`--setting`), written out so that a row keeps its
# meaning when the preset changes: the preset as it stands, its earlier settings, and the ladder
# study's speed factors (synth-cpu's settings: many cheap steps) at width 64 and at 128.
SPEED = ["model.h_cycles=1", "model.l_cycles=1", "halt_max_steps=1", "global_batch_size=32"]
SETTINGS = {
    "preset": [],
    "earlier": ["model.hidden_size=128", "encoder.hidden_size=128", "model.h_cycles=2", "model.l_cycles=2",
                "halt_max_steps=4", "global_batch_size=64"],
    "fast": ["model.hidden_size=64", "encoder.hidden_size=64", *SPEED],
    "fast-wide": ["model.hidden_size=128", "encoder.hidden_size=128", *SPEED],
}
MODELS = ("etrm", "trm")


def label(model_type: str, setting: str) -> str:
    """A row's first cell: the model, and the setting where it is not the preset's."""
    return model_type if setting == "preset" else f"{model_type} ({setting})"


def run(model_type: str, minutes: float, eval_every: int, run_dir: Path, extra: list[str], threads: int) -> dict:
    command = [sys.executable, "-m", "etrm", "train", "preset=overfit-cpu", f"model_type={model_type}",
               f"max_minutes={minutes}", "max_steps=1000000", f"eval_every={eval_every}",
               "eval.periodic_splits=train", f"run_dir={run_dir}", "tracker=none", "progress=false",
               f"run_name={run_dir.name}", "resume=true", *extra]
    print(" ".join(command[1:]), flush=True)
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    if not (run_dir / "summary.json").is_file():
        subprocess.run(command, check=True, cwd=ROOT, env=env)
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
    parser.add_argument("--setting", default="preset", choices=SETTINGS)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--how", default="alone", help="how the run shared the machine, for the table")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every run")
    args = parser.parse_args()
    results = {}
    for model_type in args.models.split(","):
        name = label(model_type, args.setting)
        suffix = "" if args.setting == "preset" else f"-{args.setting}"
        run_dir = Path(args.out) / f"overfit-cpu-{model_type}{suffix}"
        results[name] = run(model_type, args.minutes, args.eval_every, run_dir,
                            [*SETTINGS[args.setting], *args.overrides], args.threads)
    threads = f"{args.threads} thread(s)" if args.threads else "torch's default threads"
    rows = ["| model (setting) | steps | s/step (median) | final train token acc. | final train exact match | "
            "verdict | how run |", "|---|---|---|---|---|---|---|"]
    curve = ["| model | step | minutes | train token accuracy | train exact match |", "|---|---|---|---|---|"]
    kept = []
    for name in (label(m, s) for s in SETTINGS for m in MODELS):
        if name not in results:  # not re-measured this time: its rows stay as they stand
            own = section_rows("overfit_cpu", name)
            if own:
                kept.append(name)
                # Rows written before the table had its last column get it, saying so.
                rows.append(own[0] if own[0].count("|") == rows[0].count("|") else f"{own[0]} earlier run |")
                curve += own[1:]
            continue
        summary, train = results[name]["summary"], results[name]["train"]
        seconds = sorted(r["seconds_per_step"] for r in train)[len(train) // 2]
        rows.append(f"| {name} | {summary['steps']} | {seconds:.2f} | "
                    f"{summary['train_eval']['token_accuracy']:.3f} | {summary['train_eval']['exact_match']:.3f} | "
                    f"{summary.get('verdict', '-')} | {threads}, {args.how}, {datetime.date.today().isoformat()} |")
        curve += curve_table({name: results[name]}).splitlines()[2:]
    earlier = re.search(r"Machine: (.*?\d{4}-\d{2}-\d{2})", section_text("overfit_cpu"))
    last = earlier[1] if earlier else "machine not recorded"
    history = (f"Rows of {', '.join(kept)}: kept from the section's earlier runs (last run: {last}); "
               "the others measured now.") if kept else ""
    settings = "; ".join(f"`{name}`: {' '.join(f'`{o}`' for o in overrides) or 'the preset as it stands'}"
                         for name, overrides in SETTINGS.items())
    body = f"""## Phase 1 at CPU size (`benchmarks/overfit_cpu.py`)

Machine: {machine()}. `preset=overfit-cpu` {' '.join(args.overrides)}, {args.minutes:g} minutes of
wall-clock per model (evaluations included). Settings: {settings}. Train accuracy = EMA
weights on the training tasks' test pairs, identity augmentation, all ACT steps.
Target: ETRM above 90% train token accuracy and at least 50% train exact match within 30
minutes on 2 threads.

{chr(10).join(rows)}

Curve (evaluations every {args.eval_every} steps):

{chr(10).join(curve)}

{history}
"""
    write_section("overfit_cpu", body)
    print(body)


if __name__ == "__main__":
    main()
