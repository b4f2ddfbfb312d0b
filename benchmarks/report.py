"""Shared by the benchmark scripts: describe the machine, replace one section of BENCHMARKS.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery figure here was measured by the script named in its section, on the machine it names.\n"


def machine() -> str:
    """One line: CPU model, cores, Python, torch, date."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = match.group(1).strip() if match else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section between this benchmark's markers in BENCHMARKS.md."""
    text = BENCHMARKS.read_text() if BENCHMARKS.is_file() else HEADER
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(text)


def section_text(name: str) -> str:
    """The current text of this benchmark's section of BENCHMARKS.md ("" when it has none)."""
    text = BENCHMARKS.read_text() if BENCHMARKS.is_file() else ""
    match = re.search(re.escape(f"<!-- begin {name} -->") + r"(.*?)" + re.escape(f"<!-- end {name} -->"), text, re.S)
    return match[1] if match else ""


def section_rows(name: str, first_cell: str) -> list[str]:
    """The table rows of the section whose first cell is `first_cell`: a script re-measuring some
    of its models keeps the rows of the others as they stand."""
    return [line for line in section_text(name).splitlines() if line.startswith(f"| {first_cell} |")]


def train_run(run_dir: Path, overrides: list[str], minutes: float, threads: int) -> None:
    """`etrm train` with `overrides` for `minutes` of wall-clock into `run_dir` on `threads` torch
    threads; resumed where it stopped, skipped once finished (its summary.json exists)."""
    if (run_dir / "summary.json").is_file():
        print(f"{run_dir.name}: finished already", flush=True)
        return
    command = [sys.executable, "-m", "etrm", "train", *overrides, f"max_minutes={minutes}", f"run_name={run_dir.name}",
               f"run_dir={run_dir}", "progress=false", "resume=true"]
    print(" ".join(command[2:]), flush=True)
    subprocess.run(command, check=True, cwd=BENCHMARKS.parent, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
