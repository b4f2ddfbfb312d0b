"""The experiment queue: status transitions, comments kept, crash resume, no double runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.core.errors import EtrmError
from etrm.workflow.queue import parse_jobs, run_queue


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_jobs_run_in_order_and_statuses_and_comments_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = _write(tmp_path / "jobs.txt", "# phase 1\n[ ] echo first >> out.txt\n\n[ ] exit 3\n"
                  "[x] echo never >> out.txt  # done earlier\n[ ] echo second >> out.txt\n")
    counts = run_queue(jobs)
    assert counts == {"done": 2, "failed": 1}
    assert (tmp_path / "out.txt").read_text().split() == ["first", "second"]
    lines = jobs.read_text().splitlines()
    assert lines[0] == "# phase 1" and lines[2] == ""
    assert lines[1].startswith("[x] echo first >> out.txt  # done in")
    assert lines[3].startswith("[!] exit 3  # exit 3, log ")
    assert lines[4] == "[x] echo never >> out.txt  # done earlier"
    log = Path(lines[3].split("log ")[1])
    assert log.is_file()


def test_dry_run_lists_without_running(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    jobs = _write(tmp_path / "jobs.txt", "[ ] touch made\n[x] touch old\n")
    run_queue(jobs, dry_run=True)
    assert "would run: touch made" in capsys.readouterr().out
    assert not (tmp_path / "made").exists()
    assert jobs.read_text() == "[ ] touch made\n[x] touch old\n"


def test_a_job_left_running_by_a_dead_runner_is_rerun_but_not_a_live_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_pid = os.getppid()  # alive for the whole test
    jobs = _write(tmp_path / "jobs.txt", f"[-] echo crashed >> out.txt  # running: pid {dead.pid}\n"
                  f"[-] echo busy >> out.txt  # running: pid {live_pid}\n")
    assert run_queue(jobs) == {"done": 1, "failed": 0}
    assert (tmp_path / "out.txt").read_text().split() == ["crashed"]
    assert jobs.read_text().splitlines()[1].startswith("[-] echo busy")


def test_two_runners_on_one_file_never_run_a_job_twice(tmp_path):
    lines = [f"[ ] python -c \"import time; time.sleep(0.2); open('ran.txt', 'a').write('{i}\\n')\"" for i in range(6)]
    jobs = _write(tmp_path / "jobs.txt", "\n".join(lines) + "\n")
    command = [sys.executable, "-m", "etrm", "queue", "run", str(jobs)]
    runners = [subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [runner.communicate(timeout=120)[0] for runner in runners]
    assert all(runner.returncode == 0 for runner in runners)
    ran = (tmp_path / "ran.txt").read_text().split()
    assert sorted(ran) == [str(i) for i in range(6)]  # each job exactly once
    assert all("queue finished" in output for output in outputs)
    assert all(line.startswith("[x]") for line in jobs.read_text().splitlines())


def test_malformed_line_is_a_clear_error(tmp_path):
    jobs = _write(tmp_path / "jobs.txt", "[ ] echo ok\nrun this please\n")
    with pytest.raises(EtrmError, match=r"jobs.txt:2: not a job line"):
        parse_jobs(jobs.read_text().splitlines(), jobs)
