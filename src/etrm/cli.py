"""The `etrm` command line.

`etrm data ...` takes ordinary flags. Errors a user can fix are printed as one line
(`etrm: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from etrm.errors import EtrmError


def _data_stats(args: argparse.Namespace) -> int:
    from etrm.data import load_tasks

    tasks = load_tasks(args.source)
    stats = {
        "source": args.source,
        "tasks": len(tasks),
        "demos": sum(len(t.demos) for t in tasks),
        "test_inputs": sum(len(t.tests) for t in tasks),
        "test_outputs_known": sum(o is not None for t in tasks for _, o in t.tests),
        "max_demos_per_task": max(len(t.demos) for t in tasks),
        "largest_grid_side": max(t.max_side for t in tasks),
        "canvas_side": args.canvas,
        "tasks_fitting_canvas": sum(t.fits(args.canvas) for t in tasks),
    }
    if args.json:
        print(json.dumps(stats))
    else:
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _data_show(args: argparse.Namespace) -> int:
    from etrm.analysis.drawing import draw_task
    from etrm.data import load_tasks

    tasks = {t.id: t for t in load_tasks(args.source)}
    if args.task not in tasks:
        raise EtrmError(f"task '{args.task}' is not in source '{args.source}' ({len(tasks)} tasks)")
    print(draw_task(tasks[args.task], args.out))
    return 0


def _data_check_split(args: argparse.Namespace) -> int:
    from etrm.data import load_tasks
    from etrm.data.leaks import find_leaks

    report = find_leaks(load_tasks(args.train), load_tasks(args.test))
    if args.json:
        print(json.dumps({"train": args.train, "test": args.test, **report.to_json()}))
    else:
        for held_out, train in report.pairs():
            print(f"held-out {held_out} overlaps training {train}")
        print(f"{report.overlapping_tasks} held-out tasks overlap the training pool "
              f"({len(report.training_ids)} training tasks involved)")
    return 1 if report.overlapping_tasks else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etrm", description="ETRM: few-shot ARC with recursive models.")
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="look at task sources").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="count tasks, demos and test inputs of a source")
    stats.add_argument("--source", required=True, help="e.g. arc1:training, kaggle:PREFIX, dir:PATH")
    stats.add_argument("--canvas", type=int, default=30, help="canvas side to count fitting tasks for")
    stats.add_argument("--json", action="store_true", help="print one JSON object")
    stats.set_defaults(handler=_data_stats)

    show = data.add_parser("show", help="draw a task's demos and tests to a PNG")
    show.add_argument("--source", required=True)
    show.add_argument("--task", required=True, help="task id")
    show.add_argument("--out", required=True, help="output PNG path")
    show.set_defaults(handler=_data_show)

    check = data.add_parser("check-split", help="find held-out tasks whose pairs occur in the training pool")
    check.add_argument("--train", required=True, help="training sources (comma-separated)")
    check.add_argument("--test", required=True, help="held-out sources (comma-separated)")
    check.add_argument("--json", action="store_true", help="print one JSON object")
    check.set_defaults(handler=_data_check_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `etrm` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except EtrmError as error:
        print(f"etrm: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
