"""`etrm compare` (a side-by-side Markdown table of runs) and `etrm report` (one self-contained
HTML page per run: summary and verdicts, every figure embedded, and a gallery of held-out tasks
with their predictions, filterable to solved or unsolved). The page needs no network."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from etrm.analysis.drawing import ARC_PALETTE
from etrm.core.errors import EtrmError
from etrm.data.tasks import Task

COMPARE_COLUMNS = (
    ("run", lambda s: s["run_name"]), ("model", lambda s: s["model_type"]), ("encoder", lambda s: s["encoder"] or "-"),
    ("steps", lambda s: s["steps"]), ("minutes", lambda s: f"{s['wall_minutes']:.1f}"),
    ("train token acc", lambda s: _fmt(s["train_eval"].get("token_accuracy"))),
    ("train EM", lambda s: _fmt(s["train_eval"].get("exact_match"))),
    ("test pass@1", lambda s: _fmt(s["test_eval"].get("pass@1"))),
    ("test pass@2", lambda s: _fmt(s["test_eval"].get("pass@2"))),
    ("test tasks", lambda s: s["test_eval"].get("num_tasks", "-")),
    ("verdict", lambda s: s.get("verdict", "-")),
)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _summary(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "summary.json"
    if not path.is_file():
        raise EtrmError(f"{run_dir}: not a finished run (no summary.json)")
    return json.loads(path.read_text())


# The oracle must beat the no-context floor by this much (pass@2) for encoder efficiency to be
# reported: below it the ratio divides by a gap of a few tasks and means nothing.
EFFICIENCY_MIN_GAP = 0.10


class Efficiency(NamedTuple):
    """Encoder efficiency, or None with the reason it is not reported."""

    value: float | None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.value:.2f}" if self.value is not None else f"not reported: {self.reason}"


def encoder_efficiency(etrm: float, oracle: float, none: float, min_gap: float = EFFICIENCY_MIN_GAP) -> Efficiency:
    """(ETRM - none) / (oracle - none): how much of the way from the no-context floor
    (`encoder.type=none`) to the rule oracle (`model_type=oracle`) the encoder's context takes
    the decoder. The three scores (e.g. held-out pass@2) must come from the same split and
    training budget. Not reported where the oracle beats the floor by less than `min_gap`
    (10 points by default). 0: the encoder adds nothing; 1: it gives all the rule gives."""
    gap = oracle - none
    if gap < min_gap - 1e-9:  # scores are task fractions: exactly 10 points must not fall short by rounding
        return Efficiency(None, f"oracle - none = {100 * gap:.1f} points (< {100 * min_gap:g})")
    return Efficiency((etrm - none) / gap)


def pass_at_2_by_family(per_task: dict[str, dict[str, Any]], tasks: Sequence[Task]) -> dict[str, tuple[float, int]]:
    """Held-out pass@2 summed per rule family -> {family: (pass@2 summed over its tasks, tasks)},
    from an evaluation's `per_task` (eval.json) and the tasks' generating rules (synthetic
    tasks): a composition is its families joined by "+" in order. A task the evaluation did not
    score, or one without a rule (ARC), is an error: the counts must cover what was scored."""
    rules = {task.id: task.rule for task in tasks}
    totals: dict[str, tuple[float, int]] = {}
    for task_id, scores in per_task.items():
        rule = rules.get(task_id)
        if rule is None:
            raise EtrmError(f"task {task_id}: no generating rule among the {len(rules)} tasks given "
                            "(per-family scores need the evaluated synthetic tasks)")
        family = "+".join(atom[0] for atom in rule)
        solved, count = totals.get(family, (0.0, 0))
        totals[family] = (solved + float(scores["pass@2"]), count + 1)
    return dict(sorted(totals.items()))


def compare(run_dirs: list[str | Path], out: str | Path | None = None,
            bounds: tuple[str | Path, str | Path] | None = None) -> str:
    """A Markdown table of the key metrics of several runs (also written to `out`).

    `bounds` (the oracle run, the no-context run): a column of each run's encoder efficiency
    on held-out pass@2 (`encoder_efficiency`), the bounds' scores below the table."""
    rows = [_summary(Path(run_dir)) for run_dir in run_dirs]
    columns = list(COMPARE_COLUMNS)
    notes = ""
    if bounds is not None:
        oracle, none = (_summary(Path(run_dir))["test_eval"].get("pass@2") for run_dir in bounds)
        if oracle is None or none is None:
            raise EtrmError(f"{' and '.join(map(str, bounds))}: the bounds need a held-out pass@2 (test_eval)")
        columns.append(("encoder efficiency", lambda s: "-" if s["test_eval"].get("pass@2") is None else
                        str(encoder_efficiency(s["test_eval"]["pass@2"], oracle, none))))
        notes = (f"\nEncoder efficiency = (pass@2 - none) / (oracle - none); oracle {bounds[0]}: {oracle:.3f}, "
                 f"no context {bounds[1]}: {none:.3f} (same split and budget as the runs).\n")
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(get(row)) for _, get in columns) + " |" for row in rows]
    table = "\n".join(lines) + "\n" + notes
    if out:
        Path(out).write_text(table)
    return table


def _grid_html(grid: np.ndarray | None, label: str, css: str = "") -> str:
    if grid is None or np.asarray(grid).size == 0:
        return f'<figure class="grid {css}"><div class="unknown">?</div><figcaption>{label}</figcaption></figure>'
    grid = np.asarray(grid)
    cells = "".join(f'<i style="background:{ARC_PALETTE[int(c)]}"></i>' for c in grid.ravel())
    return (f'<figure class="grid {css}"><div class="cells" style="grid-template-columns:repeat({grid.shape[1]},10px)">'
            f"{cells}</div><figcaption>{label}</figcaption></figure>")


def _task_cards(run_dir: Path) -> list[str]:
    from etrm.core.config import config_from_yaml
    from etrm.models.run_data import split_of

    submission_path, eval_path = run_dir / "submission.json", run_dir / "eval.json"
    if not (submission_path.is_file() and eval_path.is_file()):
        return []
    submission = json.loads(submission_path.read_text())
    per_task = json.loads(eval_path.read_text())["per_task"]
    config = config_from_yaml(run_dir / "config.yaml")
    cards = []
    for task in split_of(config, "warn").test:
        if task.id not in per_task:
            continue
        solved = per_task[task.id]["pass@2"] > 0
        parts = [_grid_html(i, f"demo {d} in") + _grid_html(o, f"demo {d} out") for d, (i, o) in enumerate(task.demos)]
        for index, ((grid_in, truth), attempts) in enumerate(zip(task.tests, submission[task.id], strict=False)):
            row = [_grid_html(grid_in, f"test {index} in"), _grid_html(truth, "truth")]
            for key in ("attempt_1", "attempt_2"):
                guess = np.asarray(attempts[key])
                right = truth is not None and guess.shape == truth.shape and bool(np.array_equal(guess, truth))
                row.append(_grid_html(guess, f"{key} {'✓' if right else '✗'}", "right" if right else "wrong"))
            parts.append("".join(row))
        status = "solved" if solved else "unsolved"
        score = per_task[task.id]["pass@2"]
        cards.append(f'<section class="card {status}" data-solved="{str(solved).lower()}"><h3>{html.escape(task.id)} '
                     f'<small>{status}, pass@2 {score:.2f}</small></h3>'
                     + "".join(f'<div class="row">{part}</div>' for part in parts) + "</section>")
    return cards


def _rule_probe_html(run_dir: Path) -> str:
    """The numbers of RUN_DIR/rule_probe.json (written by `etrm analyze`) as a table; "" without it."""
    from etrm.analysis.probe import PROBES, read_probe

    probes = read_probe(run_dir)
    if probes is None:
        return ""
    rows = "".join(
        f"<tr><th>{name}</th><td>{_fmt(probes[name]['accuracy'])}</td><td>{_fmt(probes[name]['chance'])}</td>"
        f"<td>{probes[name]['classes']}</td><td>{probes[name]['tasks']}</td>"
        f"<td>{probes[name]['tasks_dropped']} tasks / {probes[name]['classes_dropped']} classes</td></tr>"
        for name in PROBES)
    return ('<figure class="figure" id="rule-probe"><table><tr><th>rule probe</th><th>accuracy</th>'
            "<th>chance (majority class)</th><th>classes</th><th>tasks</th><th>left out (small classes)</th></tr>"
            f"{rows}</table><figcaption>rule probe: does the context identify the rule? A linear classifier, "
            f"cross-validated, on the contexts of {html.escape(probes['tasks_from'])}</figcaption></figure>")


def write_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (figures from `etrm analyze`, made if missing)."""
    from etrm.analysis.figures import analyze

    run_dir = Path(run_dir)
    summary = _summary(run_dir)
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if not figures:
        figures = analyze(run_dir)
    shown = [p for p in figures if not p.name.startswith("predictions_")]
    # The rule probe sits beside task retrieval (the diagnostics figure), or last without it.
    probe_html = _rule_probe_html(run_dir)
    figure_html = "".join(
        f'<figure class="figure"><img alt="{p.stem}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{p.stem}</figcaption></figure>'
        + (probe_html if p.stem == "diagnostics" else "") for p in shown)
    if "diagnostics" not in {p.stem for p in shown}:
        figure_html += probe_html
    verdict_lines = [f"<li>{html.escape(line)}</li>" for line in summary.get("diagnosis", [])]
    rows = "".join(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(get(summary)))}</td></tr>"
                   for name, get in COMPARE_COLUMNS)
    cards = _task_cards(run_dir)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ETRM report: {html.escape(summary['run_name'])}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }} th, td {{ border: 1px solid #ccc; padding: 2px 8px; text-align: left; }}
.verdict {{ font-size: 1.3em; font-weight: bold; }} .PASS {{ color: #1a7f37; }} .FAIL {{ color: #c0392b; }}
.figure img {{ max-width: 100%; }}
.figures {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); }}
.card {{ border: 1px solid #ddd; border-radius: 6px; margin: 8px 0; padding: 6px; }}
.card.solved {{ border-left: 6px solid #1a7f37; }} .card.unsolved {{ border-left: 6px solid #c0392b; }}
.row {{ display: flex; gap: 10px; flex-wrap: wrap; align-items: flex-start; }}
.grid {{ margin: 4px; }} .cells {{ display: grid; gap: 1px; background: #555; width: max-content; }}
.cells i {{ width: 10px; height: 10px; display: block; }} .grid.right figcaption {{ color: #1a7f37; }}
.grid.wrong figcaption {{ color: #c0392b; }} figcaption {{ font-size: 11px; }}
.unknown {{ width: 30px; height: 30px; text-align: center; font-size: 20px; }}
</style></head><body>
<h1>Run {html.escape(summary['run_name'])}</h1>
<p class="verdict {html.escape(summary.get('verdict', ''))}" id="verdict">
Verdict ({html.escape(summary.get('phase', ''))}): {html.escape(summary.get('verdict', 'none'))}</p>
<ul id="diagnosis">{''.join(verdict_lines)}</ul>
<table id="summary">{rows}</table>
<h2>Figures</h2><div class="figures" id="figures">{figure_html}</div>
<h2>Held-out tasks</h2>
<p>Show: <button id="show-all">all ({len(cards)})</button> <button id="show-solved">solved</button>
<button id="show-unsolved">unsolved</button></p>
<div id="gallery">{''.join(cards)}</div>
<script>
function show(which) {{
  for (const card of document.querySelectorAll('.card')) {{
    const solved = card.dataset.solved === 'true';
    card.style.display = (which === 'all' || (which === 'solved') === solved) ? '' : 'none';
  }}
}}
document.getElementById('show-all').onclick = () => show('all');
document.getElementById('show-solved').onclick = () => show('solved');
document.getElementById('show-unsolved').onclick = () => show('unsolved');
</script></body></html>
"""
    path = run_dir / "report.html"
    path.write_text(page)
    return path
