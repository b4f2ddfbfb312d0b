"""Where metrics go: `metrics.jsonl` always, TensorBoard or Weights & Biases by `tracker`."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from etrm.core.errors import ConfigError


class MetricsLogger:
    """Appends one JSON line per record to RUN_DIR/metrics.jsonl and mirrors scalars to a tracker.

    `tracker=wandb` runs offline unless WANDB_MODE says otherwise, so it works with no network;
    `wandb sync RUN_DIR/wandb/offline-run-*` uploads later.
    """

    def __init__(self, run_dir: Path, tracker: str, config: dict[str, Any], project: str, run_name: str):
        self.path = run_dir / "metrics.jsonl"
        self.tensorboard = self.wandb_run = None
        if tracker == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        elif tracker == "wandb":
            try:
                import wandb
            except ImportError:
                raise ConfigError("tracker=wandb needs the wandb package: pip install 'etrm[wandb]'") from None
            self.wandb_run = wandb.init(project=project, name=run_name, dir=str(run_dir), config=config,
                                        mode=os.environ.get("WANDB_MODE", "offline"), resume="allow",
                                        id=f"{project}-{run_name}".replace("/", "-"))

    @property
    def tracker_link(self) -> str | None:
        if self.wandb_run is not None:
            return getattr(self.wandb_run, "url", None) or str(Path(self.wandb_run.dir).parent)
        return None

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        record = {"step": step, "kind": kind, **values}
        with self.path.open("a") as file:
            file.write(json.dumps(record) + "\n")
        scalars = {f"{kind}/{k}": v for k, v in values.items() if isinstance(v, int | float) and v is not None}
        if self.tensorboard is not None:
            for key, value in scalars.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl (optionally of one kind)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def drop_records_after(run_dir: str | Path, step: int) -> None:
    """On resume: keep the records up to the checkpoint's `step` only. The killed run logged
    steps past it that the resumed run does again, and the kill may have cut a line short."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and record.get("step", 0) <= step:
            kept.append(line + "\n")
    path.write_text("".join(kept))
