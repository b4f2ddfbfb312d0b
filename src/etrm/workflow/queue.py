"""The experiment queue: run the commands of a job file one after another.

A job file holds one job per line with a status marker; blank lines and `#` comments are kept:

    # Phase 1 of each encoder
    [ ] etrm train preset=enc-standard run_name=standard_overfit
    [-] etrm train preset=enc-lpn run_name=lpn_overfit  # running: pid 4242
    [x] etrm train preset=enc-variational run_name=variational_overfit  # done in 812 s, log logs/...
    [!] etrm train preset=enc-recurrent run_name=recurrent_overfit  # exit 2, log logs/...

`[ ]` pending, `[-]` running, `[x]` done, `[!]` failed. The file is rewritten atomically (a
temporary file renamed over it), so it can be read at any time. Every read-modify-write happens
under an exclusive lock on `JOBS.lock`, so two runners on the same file never take the same job.
A job left `[-]` by a runner that no longer exists (a crash, a kill) is run again.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from etrm.core.errors import EtrmError

JOB_LINE = re.compile(r"^\[(?P<status>[ x!-])\] (?P<command>.*?)(?:\s+# (?P<note>.*))?$")
PENDING, RUNNING, DONE, FAILED = " ", "-", "x", "!"


@dataclass
class Job:
    """One job line of the file: its index, status, command and trailing note."""

    line: int
    status: str
    command: str
    note: str = ""

    def render(self) -> str:
        return f"[{self.status}] {self.command}" + (f"  # {self.note}" if self.note else "")

    @property
    def runner_pid(self) -> int | None:
        match = re.search(r"pid (\d+)", self.note)
        return int(match.group(1)) if match else None


def parse_jobs(lines: list[str], path: Path) -> list[Job]:
    """The job lines of a file (comments and blank lines are not jobs); bad lines are an error."""
    jobs = []
    for index, text in enumerate(lines):
        stripped = text.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = JOB_LINE.match(stripped)
        if match is None or not match.group("command").strip():
            raise EtrmError(f"{path}:{index + 1}: not a job line (expected '[ ] command'): {stripped[:60]}")
        jobs.append(Job(index, match.group("status"), match.group("command").strip(), match.group("note") or ""))
    return jobs


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_atomically(path: Path, lines: list[str]) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        file.write("\n".join(lines) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


@contextmanager
def _locked(path: Path) -> Iterator[list[str]]:
    """Hold the queue's lock; yield the file's lines; write them back (atomically) on exit."""
    lock_path = path.with_suffix(path.suffix + ".lock") if path.suffix else Path(f"{path}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            lines = path.read_text().splitlines()
            before = list(lines)
            yield lines
            if lines != before:
                _write_atomically(path, lines)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _claim_next(path: Path) -> Job | None:
    # Under the lock: the first pending job, or a running one whose runner is gone.
    with _locked(path) as lines:
        for job in parse_jobs(lines, path):
            orphaned = job.status == RUNNING and not _alive(job.runner_pid)
            if job.status == PENDING or orphaned:
                job.status, job.note = RUNNING, f"running: pid {os.getpid()}"
                lines[job.line] = job.render()
                return job
    return None


def _finish(path: Path, claimed: Job, status: str, note: str) -> None:
    # The file may have been edited while the job ran: find our line again by command and pid.
    with _locked(path) as lines:
        for job in parse_jobs(lines, path):
            if job.command == claimed.command and job.status == RUNNING and job.runner_pid == os.getpid():
                job.status, job.note = status, note
                lines[job.line] = job.render()
                return


def run_queue(path: str | Path, dry_run: bool = False, log_dir: str | Path | None = None) -> dict[str, int]:
    """Run pending jobs until none is left; returns counts of jobs done and failed by this runner."""
    path = Path(path)
    if not path.is_file():
        raise EtrmError(f"{path}: job file not found")
    if dry_run:
        jobs = parse_jobs(path.read_text().splitlines(), path)
        for job in jobs:
            if job.status == PENDING or (job.status == RUNNING and not _alive(job.runner_pid)):
                print(f"would run: {job.command}")
        return {"done": 0, "failed": 0}
    logs = Path(log_dir) if log_dir else path.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    counts = {"done": 0, "failed": 0}
    while (job := _claim_next(path)) is not None:
        log_path = logs / f"{path.stem}-line{job.line + 1}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        print(f"running: {job.command}  (log {log_path})", flush=True)
        start = time.monotonic()
        with log_path.open("w") as log:
            # Jobs run in the caller's working directory, like lines of a shell script.
            code = subprocess.run(job.command, shell=True, stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - start
        if code == 0:
            _finish(path, job, DONE, f"done in {seconds:.0f} s, log {log_path}")
            counts["done"] += 1
        else:
            _finish(path, job, FAILED, f"exit {code}, log {log_path}")
            counts["failed"] += 1
        print(f"{'done' if code == 0 else f'failed (exit {code})'}: {job.command}", flush=True)
    return counts
