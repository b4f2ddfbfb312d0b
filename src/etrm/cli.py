"""The `etrm` command line.

`etrm data ...` takes ordinary flags. Errors a user can fix are printed as one line
(`etrm: error: ...`) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

from etrm.core.errors import EtrmError


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
    try:
        print(draw_task(tasks[args.task], args.out))
    except OSError as error:
        raise EtrmError(f"{args.out}: cannot write the figure ({error.strerror or error})") from None
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


def _train(args: argparse.Namespace) -> int:
    from etrm.core.config import ConfigError, config_from_yaml, load_config, run_directory, to_yaml

    config = load_config(args.overrides)
    saved = run_directory(config) / "config.yaml"
    if config.resume and saved.is_file():
        # A resumed run trains what the original did: its saved, resolved configuration (preset
        # included); command-line overrides still apply on top, but never another preset.
        resumed = config_from_yaml(saved, [*args.overrides, "resume=true"])
        named = [o.partition("=")[2] for o in args.overrides if o.lstrip("+").partition("=")[0] == "preset"]
        if named and named[-1] != resumed.preset:
            raise ConfigError(f"{saved}: the run was trained with preset={resumed.preset}; resume=true keeps it "
                              f"(drop preset={named[-1]}, or give another run_dir for a new run)")
        config = resumed
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from etrm.train.loop import train

    train(config)
    return 0


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be computed only when its help is shown."""

    epilog_factory: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_factory is not None:
            self.epilog = self.epilog_factory()
        return super().format_help()


def preset_purpose(path: Path) -> str:
    """A preset's one-line purpose: the first sentence of the comment under its `# @package` line."""
    lines = path.read_text().splitlines()
    if lines and lines[0].startswith("# @package"):
        lines = lines[1:]
    comment = []
    for line in lines:
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = " ".join(part for part in comment if part)
    end = re.search(r"[.?!](?=\s|$)", text)
    return text[:end.end()] if end else text


def _width() -> int:
    return min(max(shutil.get_terminal_size().columns - 2, 60), 120)


def _train_description() -> str:
    text = ("Train TRM or ETRM. The run config is composed from the dataclass defaults, one preset "
            "(preset=NAME, default: default), then key=value overrides with dotted names (lr=3e-4 "
            "encoder.num_layers=4 eval.num_augmentations=16); an unknown key is an error. resume=true "
            "continues the run in its run directory, with its saved config.")
    return textwrap.fill(text, _width())


def _presets_epilog() -> str:
    from etrm.core.config import CONFIG_DIR, available_presets

    names = available_presets()
    column = max(len(name) for name in names) + 4
    lines = ["presets (preset=NAME):"]
    for name in names:
        purpose = preset_purpose(CONFIG_DIR / "preset" / f"{name}.yaml") or "(no description)"
        lines.append(textwrap.fill(purpose, _width(), initial_indent=f"  {name:<{column - 2}}",
                                   subsequent_indent=" " * column))
    return "\n".join(lines)


def _eval(args: argparse.Namespace) -> int:
    from etrm.eval.evaluate import evaluate_run

    evaluate_run(args.target, args.overrides)
    return 0


def _model_info(args: argparse.Namespace) -> int:
    import torch

    from etrm.core.config import context_description, load_config
    from etrm.models.build import build_model

    config = load_config(args.overrides)
    # Sizes only: one puzzle row, one rule atom.
    model = build_model(config, num_puzzle_ids=1 if config.model_type == "trm" else 0, atom_keys=torch.ones(1))

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    info = {
        "model_type": config.model_type,
        "context": context_description(config),
        "decoder_parameters": count(model.decoder),
        "encoder_parameters": count(model.context_source),
        "total_parameters": count(model),
    }
    if args.json:
        print(json.dumps(info))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    return 0


def _queue_run(args: argparse.Namespace) -> int:
    from etrm.workflow.queue import run_queue

    counts = run_queue(args.jobs, dry_run=args.dry_run, log_dir=args.log_dir)
    if not args.dry_run:
        print(f"queue finished: {counts['done']} done, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


def _record(args: argparse.Namespace) -> int:
    from etrm.workflow.record import write_record

    path = write_record(args.run_dir, args.phase2, args.out)
    print(path.read_text())
    print(f"wrote {path}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from etrm.analysis.figures import analyze
    from etrm.analysis.probe import probe_run

    for path in analyze(args.run_dir):
        print(path)
    for line in probe_run(args.run_dir, args.probe_sources).lines():
        print(line)
    if args.representability:
        from etrm.analysis.representability import representability_run

        for line in representability_run(args.run_dir, args.representability):
            print(line)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from etrm.analysis.report import compare

    bounds = tuple(args.efficiency) if args.efficiency else None
    print(compare(args.run_dirs, args.out, bounds), end="")
    return 0


def _report(args: argparse.Namespace) -> int:
    from etrm.analysis.report import write_report

    print(write_report(args.run_dir))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from etrm.data.synth import synth_tasks, write_kaggle

    out = Path(args.out)
    for part, count in (("train", args.train_count), ("test", args.test_count)):
        tasks = synth_tasks(args.split, part, count, args.seed, max_side=args.max_side)
        prefix = out / f"synth-{args.split}_{part}"
        write_kaggle(tasks, prefix)
        print(f"{len(tasks)} {part} tasks -> kaggle:{prefix}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from etrm.bench import main as bench_main

    bench_main(args.device, args.steps, args.only, args.json, Path(args.out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="etrm", description="ETRM: few-shot ARC with recursive models.")
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
    synth = data.add_parser("synth", help="write generated few-shot tasks (Kaggle layout) for one split")
    synth.add_argument("--split", required=True, choices=("iid", "params", "compose"))
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--train-count", type=int, default=800)
    synth.add_argument("--test-count", type=int, default=100)
    synth.add_argument("--max-side", type=int, default=10, help="largest grid side, inputs and outputs")
    synth.set_defaults(handler=_data_synth)

    train = commands.add_parser(
        "train", help="train TRM or ETRM (Hydra overrides: preset=overfit lr=3e-4 encoder.num_layers=4 ...)",
        description=_train_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.epilog_factory = _presets_epilog
    train.add_argument("overrides", nargs="*",
                       help="preset=NAME (one of the presets below) and key=value overrides of the run config")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved run config (YAML) of this command line and exit without training")
    train.set_defaults(handler=_train)

    evaluate = commands.add_parser("eval", help="evaluate a run directory or checkpoint by the ARC Prize rules")
    evaluate.add_argument("target", help="run directory or checkpoint file")
    evaluate.add_argument("overrides", nargs="*", help="e.g. eval.num_augmentations=16 halt_max_steps=8")
    evaluate.set_defaults(handler=_eval)

    model = commands.add_parser("model", help="inspect a model").add_subparsers(dest="model_command", required=True)
    info = model.add_parser("info", help="parameter counts of the model a run config builds "
                                         "(e.g. etrm model info encoder.type=lpn)")
    info.add_argument("overrides", nargs="*", help="key=value overrides of the run config")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(handler=_model_info)
    queue = commands.add_parser("queue", help="run a job file of experiments").add_subparsers(
        dest="queue_command", required=True)
    queue_run = queue.add_parser("run", help="run the pending jobs of JOBS.txt one after another")
    queue_run.add_argument("jobs", help="job file: one '[ ] command' per line")
    queue_run.add_argument("--dry-run", action="store_true", help="list what would run")
    queue_run.add_argument("--log-dir", default=None, help="where job logs go (default: logs/ beside the file)")
    queue_run.set_defaults(handler=_queue_run)
    record = commands.add_parser("record", help="write the guide's experiment template, filled from runs")
    record.add_argument("run_dir", help="the Phase 1 run (or a Phase 2 run alone)")
    record.add_argument("--phase2", default=None, help="the Phase 2 run of the same experiment")
    record.add_argument("--out", default=None, help="output Markdown file (default: RUN_DIR/RECORD.md)")
    record.set_defaults(handler=_record)
    analyze = commands.add_parser("analyze", help="write a run's figures (PNG) into RUN_DIR/figures/ and, where its "
                                                  "tasks have rule labels, the rule probe (RUN_DIR/rule_probe.json)")
    analyze.add_argument("run_dir")
    analyze.add_argument("--probe-sources", default=None,
                         help="probe the rules on these tasks (e.g. synth:iid:test:1:300:8), not the held-out ones")
    analyze.add_argument("--representability", type=int, default=0, metavar="STEPS",
                         help="also train a fresh encoder of the run's config with a small head on the rule labels "
                              "of its training tasks for STEPS steps and score it on its held-out tasks (can the "
                              "front end carry the rule?) -> RUN_DIR/representability.json")
    analyze.set_defaults(handler=_analyze)
    comparison = commands.add_parser("compare", help="a side-by-side table of the key metrics of runs")
    comparison.add_argument("run_dirs", nargs="+")
    comparison.add_argument("--out", default=None, help="also write the table to this Markdown file")
    comparison.add_argument("--efficiency", nargs=2, metavar=("ORACLE_RUN", "NONE_RUN"), default=None,
                            help="add each run's encoder efficiency, (pass@2 - none) / (oracle - none) on held-out "
                                 "pass@2, against a model_type=oracle run and an encoder.type=none run trained on "
                                 "the same split and budget; not reported where the oracle beats the floor by less "
                                 "than 10 points")
    comparison.set_defaults(handler=_compare)

    report = commands.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    report.add_argument("run_dir")
    report.set_defaults(handler=_report)
    bench = commands.add_parser("bench", help="measure training and evaluation speed, FLOP/s and MFU")
    bench.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    bench.add_argument("--steps", type=int, default=5, help="timed training steps per model (after 2 warm-up)")
    bench.add_argument("--only", default="", help="only the setup of this name, else those whose name contains it")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--out", default="BENCHMARKS.md", help="file to append the dated rows to")
    bench.set_defaults(handler=_bench)
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
