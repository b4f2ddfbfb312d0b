"""Experiment records: the research guide's "Experiment Tracking Template", filled from runs.

`etrm record RUN_DIR [--phase2 RUN_DIR]` reads each run's `config.yaml`, `summary.json` and
`metrics.jsonl`; nothing in the record is typed by hand. The Phase 1 run is RUN_DIR (or the
Phase 2 run alone when RUN_DIR is one).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from etrm.core.config import RunConfig, config_from_yaml, context_description
from etrm.core.errors import EtrmError
from etrm.train.metrics import read_metrics

# Shown in the configuration list when a run changed them from the dataclass defaults.
HYPERPARAMETERS = ("lr", "global_batch_size", "optimizer", "lr_schedule", "lr_warmup_steps", "weight_decay",
                   "grad_clip_norm", "ema_rate", "max_steps", "canvas_side", "max_demos", "leave_one_out",
                   "augmentations_per_task", "max_train_groups", "max_eval_groups", "seed")


def _load_run(run_dir: Path) -> tuple[RunConfig, dict[str, Any], list[dict[str, Any]]]:
    config_path, summary_path = run_dir / "config.yaml", run_dir / "summary.json"
    for path in (config_path, summary_path):
        if not path.is_file():
            raise EtrmError(f"{run_dir}: not a finished run (missing {path.name})")
    return config_from_yaml(config_path), json.loads(summary_path.read_text()), read_metrics(run_dir)


def _changes(config: RunConfig) -> list[str]:
    defaults = OmegaConf.to_container(OmegaConf.structured(RunConfig(run_name=config.run_name)))
    ours = OmegaConf.to_container(OmegaConf.structured(config))

    def walk(a: dict, b: dict, prefix: str = "") -> list[str]:
        found = []
        for key, value in a.items():
            if isinstance(value, dict):
                found += walk(value, b[key], f"{prefix}{key}.")
            elif value != b[key] and key not in ("run_name", "run_dir", "resume", "progress"):
                found.append(f"{prefix}{key}={value}")
        return found

    return walk(ours, defaults)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _steps_to_converge(metrics: list[dict[str, Any]], bar: float) -> str:
    for record in metrics:
        if record["kind"] == "eval_train" and record["token_accuracy"] > bar:
            return f"{record['step']} (first evaluation above {bar:.0%})"
    return f"not reached (no evaluation above {bar:.0%})"


def _phase2_status(test_em: float | None, bar: float) -> str:
    if test_em is None:
        return "n/a"
    if test_em >= bar:
        return f"✅ Pass (>= {bar:.0%} test EM)"
    return "⚠️ Partial (some generalization)" if test_em > 0 else "❌ Fail (0% test EM)"


def write_record(run_dir: str | Path, phase2_dir: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write RECORD.md (the template, filled) into the Phase 1 run directory or `out`."""
    first = Path(run_dir)
    config, summary, metrics = _load_run(first)
    phase1 = (config, summary, metrics) if config.phase != "generalisation" else None
    phase2 = _load_run(Path(phase2_dir)) if phase2_dir else (None if phase1 else (config, summary, metrics))
    main_config = config
    context = context_description(main_config)
    changes = _changes(main_config)
    others = [f"{key}={getattr(main_config, key)}" for key in HYPERPARAMETERS]
    pretrained = f"Yes ({main_config.load_pretrained_decoder})" if main_config.load_pretrained_decoder else "No"
    date = datetime.date.fromtimestamp((first / "summary.json").stat().st_mtime).isoformat()
    goal = ("Phase 1: can it memorise the training groups?" if phase1 else
            "Phase 2: does it solve held-out tasks?")
    lines = [
        f"### Experiment: {main_config.run_name}", "",
        f"**Date**: {date}",
        f"**Goal**: {goal} ({main_config.model_type.upper()}, {context}, preset {main_config.preset})",
        f"**Changes from baseline**: {', '.join(changes) if changes else 'none (the defaults)'}", "",
        "**Configuration**:",
        f"- Encoder: {context}",
        f"- Pre-trained decoder: {pretrained}",
        f"- halt_max_steps: {main_config.halt_max_steps}",
        f"- halt_exploration_prob: {main_config.halt_exploration_prob}",
        f"- Other hyperparams: {', '.join(others)}", "",
    ]
    if phase1:
        p1_config, p1_summary, p1_metrics = phase1
        train = p1_summary.get("train_eval", {})
        issues = p1_summary.get("diagnosis") or ["none detected"]
        diagnostics = [m for m in p1_metrics if m["kind"] == "diagnostics"]
        lines += [
            f"**Phase 1 Results (Overfit - {train.get('num_tasks', p1_config.max_train_groups)} groups)**:",
            f"- Train accuracy: {_percent(train.get('token_accuracy'))} "
            f"(exact match {_percent(train.get('exact_match'))})",
            f"- Steps to converge: {_steps_to_converge(p1_metrics, p1_config.overfit_pass_accuracy)}",
            f"- Issues encountered: {'; '.join(issues)}",
        ]
        if diagnostics:
            last = diagnostics[-1]
            lines.append(f"- Encoder diagnostics (step {last['step']}): task retrieval "
                         f"{_percent(last['retrieval_accuracy'])} (chance {_percent(last['retrieval_chance'])}), "
                         f"effective rank {last['effective_rank']:.1f}")
        lines += [f"- Status: {'✅ Pass' if p1_summary.get('verdict') == 'PASS' else '❌ Fail'}", ""]
    if phase2:
        p2_config, p2_summary, _ = phase2
        train, test = p2_summary.get("train_eval", {}), p2_summary.get("test_eval", {})
        lines += [
            "**Phase 2 Results (Full dataset)**:",
            f"- Train EM: {_percent(train.get('exact_match'))}",
            f"- Test EM: {_percent(test.get('pass@1'))} "
            f"(pass@1 after voting, {test.get('num_tasks', 0)} held-out tasks; "
            f"per-sample {_percent(test.get('exact_match'))})",
            f"- Pass@2: {_percent(test.get('pass@2'))}",
            f"- Avg steps: {test.get('mean_act_steps', 'n/a')}",
            f"- Status: {_phase2_status(test.get('pass@1'), p2_config.generalisation_pass_em)}", "",
        ]
    else:
        lines += ["**Phase 2 Results (Full dataset)**: not run", ""]
    link = summary.get("tracker_link") or (phase2[1].get("tracker_link") if phase2 else None)
    final = summary.get("final_train_window", {})
    lines += [
        "**Analysis**:",
        f"- Final training window: loss {final.get('loss', float('nan')):.3f}, token accuracy "
        f"{_percent(final.get('token_accuracy'))}, "
        f"encoder share of the gradient {_percent(final.get('encoder_grad_share'))}",
        f"- Wall-clock: {summary.get('wall_minutes', 0):.1f} min for {summary.get('steps', 0)} steps",
        "",
        f"**WandB Run**: {link or 'none (tracker was not wandb)'}",
    ]
    path = Path(out) if out else first / "RECORD.md"
    path.write_text("\n".join(lines) + "\n")
    return path
