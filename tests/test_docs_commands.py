"""Every `etrm` command the README and the docs pages show resolves.

`etrm train` commands compose their config (what `--print-config` prints); the other commands
parse with the CLI's own parser, their `key=value` overrides compose, and the quick ones (`etrm
data ...`, `etrm model info`) run. All in-process: a subprocess per command would be slow.
"""

from __future__ import annotations

import argparse
import itertools
import re
from pathlib import Path

import pytest

from etrm.cli import build_parser, main
from etrm.core.config import load_config

ROOT = Path(__file__).resolve().parents[1]
# docs/LOG.md is a lab notebook: its commands record what was run when it was written.
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "LOG.md")]

# What the pages' placeholders stand for; an unknown placeholder fails the test, so a new one is
# given a value here rather than slipping through.
PLACEHOLDERS = {
    "RUN_DIR": "runs/etrm/overfit-cpu",
    "RUN": "runs/etrm/overfit-cpu",
    "JOBS.txt": "jobs.txt",
    "DIR": "out",
    "OUT_DIR": "out",
    "SOURCES": "synth:iid:test:1:30:8",
}
# Commands quick enough to run; the rest need a trained run or take minutes (`bench`, `queue`).
RUN_FOR_REAL = {("data", "stats"), ("data", "show"), ("data", "check-split"), ("data", "synth"), ("model", "info")}
_COMMAND = re.compile(r"(?<![\w./-])etrm\s+(?=[a-z-])")


def _commands_in(text: str) -> list[str]:
    """The `etrm ...` commands of fenced code blocks (one per line, continuations joined, comments
    dropped) and of inline code spans."""
    found = []
    fences = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
    for block in fences.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            start = _COMMAND.search(line)
            if start:
                found.append(re.split(r"\s+#", line[start.start():])[0])
    for span in re.findall(r"`([^`]+)`", fences.sub("", text)):
        span = " ".join(span.split())  # an inline span may wrap over lines
        start = _COMMAND.search(span)
        if start:
            found.append(span[start.start():])
    return [" ".join(command.split()) for command in found]


def _argvs(command: str) -> list[list[str]]:
    """The argument lists a command's notation stands for: `[...]` optional parts included,
    `a|b` alternatives each taken, `...` dropped, placeholders given a value."""
    command = re.sub(r"(^|\s)\[([^\[\]]*)\]", r"\1\2", command)
    tokens = [t for t in command.split()[1:] if t != "..."]
    choices = []
    for token in tokens:
        if token.isupper() or token in PLACEHOLDERS:
            if token not in PLACEHOLDERS:
                raise AssertionError(f"placeholder {token} has no value in PLACEHOLDERS")
            choices.append([PLACEHOLDERS[token]])
        elif "|" in token and "=" not in token:
            choices.append(token.split("|"))
        else:
            choices.append([token])
    return [list(argv) for argv in itertools.product(*choices)]


def _shown_commands() -> list[tuple[str, str, list[str]]]:
    seen, shown = set(), []
    for page in PAGES:
        for command in _commands_in(page.read_text()):
            for argv in _argvs(command):
                if tuple(argv) not in seen:
                    seen.add(tuple(argv))
                    shown.append((page.name, command, argv))
    return shown


SHOWN = _shown_commands()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_path(argv: list[str]) -> tuple[list[str], bool]:
    """The subcommand names at the start of argv, and whether argv is nothing but those (a
    mention such as `etrm data stats` in prose, not a command line to run)."""
    parser, path = build_parser(), []
    for token in argv:
        children = _subcommands(parser)
        if not children or token.startswith("-"):
            return path, False
        assert token in children, f"'{token}' is not a subcommand of 'etrm {' '.join(path)}'"
        parser = children[token]
        path.append(token)
    return path, True


def _parse(argv: list[str], capsys) -> argparse.Namespace | None:
    """Parse as the CLI does; None after a successful `--help`."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 0, f"etrm {' '.join(argv)}: {err.strip()}"
        return None


def test_the_commands_are_found():
    commands = {command for _, command, _ in SHOWN}
    assert "etrm train preset=overfit-cpu" in commands  # a fenced block
    assert "etrm train preset=overfit max_train_groups=32 max_eval_groups=32 project_name=etrm-dev " \
           "run_name=standard_overfit" in commands  # the torchrun line, its continuation joined
    assert "etrm train --print-config preset=overfit-cpu lr=3e-4" in commands  # an inline span over two lines
    assert "etrm eval RUN_DIR ttt.steps=50 ttt.lr=1e-3 ttt.params=lora" in commands
    assert all("#" not in command and "runs/etrm/" not in command.split()[0] for command in commands)


def test_the_notation_is_expanded():
    assert _argvs("etrm bench [--device cpu|cuda] [--json]") == [
        ["bench", "--device", "cpu", "--json"], ["bench", "--device", "cuda", "--json"]]
    assert _argvs("etrm compare RUN ... [--out table.md]") == [
        ["compare", "runs/etrm/overfit-cpu", "--out", "table.md"]]
    assert _argvs("etrm train preset=overfit-cpu lr=3e-4") == [["train", "preset=overfit-cpu", "lr=3e-4"]]


def test_every_subcommand_is_shown_somewhere():
    shown = {tuple(argv[:2]) for _, _, argv in SHOWN} | {(argv[0],) for _, _, argv in SHOWN}
    parser = build_parser()
    missing = []
    for name, child in _subcommands(parser).items():
        children = _subcommands(child)
        missing += [f"{name} {sub}" for sub in children if (name, sub) not in shown]
        if not children and (name,) not in shown:
            missing.append(name)
    assert not missing, missing


@pytest.mark.parametrize(("page", "command", "argv"), SHOWN, ids=[f"{p}: {' '.join(a)}" for p, _, a in SHOWN])
def test_the_command_resolves(page, command, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # what a command writes (a PNG, synthetic tasks) stays here
    path, mention_only = _command_path(argv)
    if mention_only:
        return  # a subcommand named in prose: that it exists is what there is to check
    args = _parse(argv, capsys)
    if args is None:
        return
    if path == ["train"]:
        # `--print-config` composes preset and overrides as training would, then stops.
        status = main([*argv, "--print-config"])
        captured = capsys.readouterr()
        assert status == 0, f"{page}: {command}: {captured.err.strip()}"
        assert "preset:" in captured.out
    elif tuple(path) in RUN_FOR_REAL:
        status = main(argv)
        err = capsys.readouterr().err
        # `check-split` answers 1 when it finds an overlap; 2 is an error.
        assert status in ((0, 1) if path == ["data", "check-split"] else (0,)), f"{page}: {command}: {err.strip()}"
    elif hasattr(args, "overrides"):
        # `etrm eval` applies its overrides to the run's saved config: the keys are the run config's.
        load_config([o for o in args.overrides if not o.startswith("preset=")])
