"""Missing ../shared data is a skip locally and a failure in CI (ETRM_REQUIRE_SHARED, set by .ci/run)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

TINY_TESTS = '''
from pathlib import Path


def test_fixture_file(require_shared):
    require_shared("a fixture", Path(__file__).parent / "no-such-shared-file.pt")


def test_conceptarc(conceptarc_prefix):
    assert conceptarc_prefix
'''


def _run_tiny_suite(folder: Path, require: str | None) -> tuple[int, str]:
    env = {key: value for key, value in os.environ.items() if key != "ETRM_REQUIRE_SHARED"}
    if require is not None:
        env["ETRM_REQUIRE_SHARED"] = require
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", str(folder)],
                            capture_output=True, text=True, timeout=300, cwd=folder, env=env)
    return result.returncode, result.stdout + result.stderr


def test_missing_shared_data_skips_locally_and_fails_when_required(tmp_path):
    # The real conftest (its helper and its conceptarc_prefix fixture), two levels down in an empty
    # tree: the `shared` folder it looks for beside the "repository" does not exist.
    folder = tmp_path / "repo" / "tests"
    folder.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("conftest.py"), folder / "conftest.py")
    (folder / "pytest.ini").write_text("[pytest]\n")
    (folder / "test_needs_shared.py").write_text(TINY_TESTS)
    assert not (tmp_path / "shared").exists()

    for unset in (None, "0"):
        code, out = _run_tiny_suite(folder, unset)
        assert code == 0 and re.search(r"\b2 skipped\b", out) and "failed" not in out, out
        assert "ConceptARC not found" in out and "no-such-shared-file.pt" in out

    # Required: the test fails, and so does the one whose fixture fails (pytest reports an error).
    code, out = _run_tiny_suite(folder, "1")
    assert code == 1 and re.search(r"\b1 failed, 1 error\b", out) and "skipped" not in out, out
    assert "ConceptARC not found" in out and "no-such-shared-file.pt" in out
    assert out.count("ETRM_REQUIRE_SHARED is set") >= 2
