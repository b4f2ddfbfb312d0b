"""The research guide's success criteria, applied at the end of a run.

Phase 1 (`phase=overfit`): train token accuracy above `overfit_pass_accuracy` (90%) on the
training tasks, else FAIL with the guide's diagnosis. Phase 2 (`phase=generalisation`): held-out
exact match (pass@1 after voting, the ARC Prize task mean) at or above
`generalisation_pass_em` (5%) and above the copy-input floor (what answering each test input
with itself scores on the same tasks), with the floor, the train/test gap and pass@2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from etrm.core.config import RunConfig


def _diagnose(history: list[dict[str, Any]], accuracy: float) -> list[str]:
    # The guide's failure modes, each with the figure that points at it.
    notes = []
    losses = [h["loss"] for h in history]
    if losses and (losses[-1] != losses[-1] or losses[-1] > 1.5 * losses[0]):
        notes.append("training diverged (loss rose): check gradient clipping and the learning rate")
    if 0.35 <= accuracy <= 0.5:
        share = history[-1]["encoder_grad_share"] if history else float("nan")
        notes.append(f"stuck at 35-50%: check gradient starvation; the encoder holds {share:.1%} of the "
                     "squared gradient norm (near 0% means the encoder is not learning)")
    if 0.7 <= accuracy <= 0.8:
        notes.append("stuck at 70-80%: the architecture may be too weak or the hyperparameters wrong")
    if len(history) >= 2 and history[-1]["token_accuracy"] > history[-2]["token_accuracy"] + 0.02:
        notes.append(f"still improving at the end ({history[-2]['token_accuracy']:.3f} -> "
                     f"{history[-1]['token_accuracy']:.3f}): train longer, or check the step time "
                     f"({history[-1]['seconds_per_step']:.2f} s/step) for a performance problem")
    if not notes:
        notes.append(f"below the bar at {accuracy:.1%} without one of the guide's failure patterns: compare the "
                     "training curve (etrm analyze) and train longer or tune the learning rate")
    return notes


def verdict(config: RunConfig, history: list[dict[str, Any]], results: dict[str, Any], run_dir: Path,
            tracker_link: str | None = None) -> dict[str, Any]:
    """Print the run's summary and verdict; write RUN_DIR/summary.json; return the summary."""
    train, test = results.get("train") or {}, results.get("test") or {}
    summary: dict[str, Any] = {
        "run_name": config.run_name, "preset": config.preset, "phase": config.phase,
        "model_type": config.model_type, "encoder": config.encoder.type if config.model_type == "etrm" else None,
        "steps": history[-1]["step"] if history else 0,
        "wall_minutes": history[-1]["wall_time"] / 60 if history else 0.0,
        "final_train_window": history[-1] if history else {},
        "train_eval": {k: v for k, v in train.items() if k != "per_task"},
        "test_eval": {k: v for k, v in test.items() if k != "per_task"},
        "run_dir": str(run_dir),
        "tracker_link": tracker_link,
    }
    lines = [f"run {config.run_name}: {summary['steps']} steps in {summary['wall_minutes']:.1f} min"]
    if train:
        lines.append(f"train tasks ({train['num_tasks']}): token accuracy {train['token_accuracy']:.3f}, "
                     f"exact match {train['exact_match']:.3f}")
    if test:
        lines.append(f"held-out tasks ({test['num_tasks']}): pass@1 {test['pass@1']:.3f}, pass@2 {test['pass@2']:.3f}, "
                     f"per-sample exact match {test['exact_match'] or 0:.3f}, token accuracy "
                     f"{test['token_accuracy'] or 0:.3f}")
    if config.phase == "overfit" and train:
        passed = train["token_accuracy"] > config.overfit_pass_accuracy
        summary["verdict"] = "PASS" if passed else "FAIL"
        lines.append(f"Phase 1 (overfit): {summary['verdict']} - train token accuracy {train['token_accuracy']:.1%} "
                     f"(bar > {config.overfit_pass_accuracy:.0%}), exact match {train['exact_match']:.1%}")
        if not passed:
            summary["diagnosis"] = _diagnose(history, train["token_accuracy"])
            lines += [f"  - {note}" for note in summary["diagnosis"]]
    if config.phase == "generalisation" and test:
        floor = test.get("copy_input_floor") or 0.0
        passed = test["pass@1"] >= config.generalisation_pass_em and test["pass@1"] > floor
        summary["verdict"] = "PASS" if passed else "FAIL"
        gap = (train.get("exact_match") or 0) - test["pass@1"]
        summary["train_test_em_gap"] = gap
        summary["copy_input_floor"] = floor
        lines.append(f"Phase 2 (generalisation): {summary['verdict']} - held-out exact match {test['pass@1']:.1%} "
                     f"(bar >= {config.generalisation_pass_em:.0%} and above the copy-input floor {floor:.1%}: "
                     f"answering each test input with itself), pass@2 {test['pass@2']:.1%}, "
                     f"train/test EM gap {gap:+.1%}")
    lines.append(f"run directory: {run_dir}")
    print("\n".join(lines))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
