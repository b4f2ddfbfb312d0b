"""ARC grids drawn with matplotlib in the usual ARC palette."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from etrm.data.tasks import Task  # noqa: E402

ARC_PALETTE = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
               "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]
ARC_CMAP = ListedColormap(ARC_PALETTE)


def draw_grid(axis: plt.Axes, grid: np.ndarray | None, title: str = "") -> None:
    """Draw one grid with cell borders; None draws an empty '?' panel (unknown output)."""
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title(title, fontsize=8)
    if grid is None or grid.size == 0:
        axis.text(0.5, 0.5, "?", ha="center", va="center", fontsize=20)
        return
    axis.imshow(grid, cmap=ARC_CMAP, vmin=0, vmax=9, interpolation="nearest")
    height, width = grid.shape
    axis.set_xticks(np.arange(-0.5, width, 1), minor=True)
    axis.set_yticks(np.arange(-0.5, height, 1), minor=True)
    axis.grid(which="minor", color="#555555", linewidth=0.5)
    axis.tick_params(which="minor", length=0)


def draw_task(task: Task, out: str | Path) -> Path:
    """Draw a task's demos and tests (input beside output), one example per row, to a PNG."""
    rows = [(f"demo {i}", pair) for i, pair in enumerate(task.demos)]
    rows += [(f"test {i}", pair) for i, pair in enumerate(task.tests)]
    figure, axes = plt.subplots(len(rows), 2, figsize=(5, 2.4 * len(rows)), squeeze=False)
    for (label, (grid_in, grid_out)), (axis_in, axis_out) in zip(rows, axes, strict=True):
        draw_grid(axis_in, grid_in, f"{label} input {grid_in.shape[0]}x{grid_in.shape[1]}")
        shape = "" if grid_out is None else f" {grid_out.shape[0]}x{grid_out.shape[1]}"
        draw_grid(axis_out, grid_out, f"{label} output{shape}")
    figure.suptitle(f"task {task.id}")
    figure.tight_layout()
    path = Path(out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # format="png": write exactly `path` (matplotlib would append ".png" to a name without a suffix
        # and refuse an unknown suffix).
        figure.savefig(path, dpi=100, format="png")
    finally:
        plt.close(figure)
    return path
