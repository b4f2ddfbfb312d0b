"""The package works installed from a wheel, not only from a checkout.

Builds a wheel of the project, installs it into a fresh virtual environment and trains one tiny
step from an unrelated directory: the presets (package data under `etrm/configs/`) must come
from the installed package, never from the repository.

The new environment gets the dependencies (torch, hydra, ...) without a download: a `.pth` file
in it names the site-packages directories of the interpreter running the tests. Directory lines
of a `.pth` file are appended to `sys.path` but the `.pth` files inside them are not run, so
the editable install of etrm (a `.pth` naming `src/`, or a finder hook) stays invisible there,
and the environment's own site-packages, which holds the wheel, comes first.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# One optimisation step of a tiny model on a 6x6 canvas (see TINY_OVERRIDES in conftest.py).
ONE_STEP = (
    "preset=cpu-demo", "max_steps=1", "final_eval=false", "tracker=none", "progress=false", "canvas_side=6",
    "max_train_groups=2", "max_eval_groups=1", "global_batch_size=4", "model.hidden_size=32",
    "model.num_heads=2", "encoder.hidden_size=32", "encoder.num_heads=2", "encoder.num_layers=1",
    "halt_max_steps=2", "device=cpu",
)


def _run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _build_wheel(work: Path) -> Path:
    # Build from a copy of what the wheel is made of: an in-tree build would leave build/ and
    # src/etrm.egg-info in the working tree.
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = work / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", str(wheels), str(source)], cwd=work)
    (wheel,) = wheels.glob("etrm-*.whl")
    return wheel


def _dependency_dirs() -> list[str]:
    """The site-packages directories the test interpreter imports its dependencies from."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return [d for d in dict.fromkeys(dirs) if Path(d).is_dir()]


@pytest.mark.slow
def test_wheel_install_trains_from_another_directory(tmp_path, conceptarc_prefix):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"etrm/configs/run.yaml", "etrm/configs/preset/cpu-demo.yaml", "etrm/__main__.py"} <= names
    assert not any(name.startswith("configs/") for name in names)

    env_dir = tmp_path / "env"
    base_python = getattr(sys, "_base_executable", sys.executable)
    _run([base_python, "-m", "venv", "--without-pip", str(env_dir)], cwd=tmp_path)
    python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1", PIP_DISABLE_PIP_VERSION_CHECK="1")

    # Install before the .pth below exists: pip must not see (and offer to replace) the editable etrm.
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], cwd=tmp_path, env=env)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                   cwd=tmp_path, env=env).stdout.strip()
    Path(purelib, "etrm_test_dependencies.pth").write_text("".join(f"{d}\n" for d in _dependency_dirs()))

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import etrm, etrm.core.config as c; print(etrm.__file__); print(c.CONFIG_DIR)"
    package_file, config_dir = _run([str(python), "-c", probe], cwd=elsewhere, env=env).stdout.split()
    installed = Path(purelib).resolve()
    assert Path(package_file).resolve().is_relative_to(installed), package_file
    assert Path(config_dir).resolve() == installed / "etrm" / "configs"
    assert not Path(package_file).resolve().is_relative_to(REPO)

    run_dir = tmp_path / "run"
    _run([str(python), "-m", "etrm", "train", *ONE_STEP, f"run_dir={run_dir}"], cwd=elsewhere, env=env)
    # ONE_STEP trains exactly one optimiser step: the installed package's run says so in its summary
    # and its checkpoint (read here as plain data, without the package).
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 1
    assert torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["step"] == 1
    assert "preset: cpu-demo" in (run_dir / "config.yaml").read_text()

    # A ConceptARC preset, from that other directory: the installed package reads ConceptARC from
    # the data home ETRM_DATA_DIR names, and without one says where it looked and what to set.
    data = conceptarc_prefix.parent.parent
    conceptarc_run = tmp_path / "conceptarc-run"
    small = [o for o in ONE_STEP if not o.startswith(("preset=", "canvas_side="))]
    _run([str(python), "-m", "etrm", "train", "preset=arc10-cpu", *small, "max_validation_groups=2",
          f"run_dir={conceptarc_run}"], cwd=elsewhere, env={**env, "ETRM_DATA_DIR": str(data)})
    assert json.loads((conceptarc_run / "summary.json").read_text())["steps"] == 1
    no_home = {**env, "HOME": str(tmp_path / "home"), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    no_home.pop("ETRM_DATA_DIR", None)
    refused = subprocess.run([str(python), "-m", "etrm", "train", "preset=arc10-cpu", *small,
                              f"run_dir={tmp_path / 'refused'}"], cwd=elsewhere, env=no_home, capture_output=True,
                             text=True, timeout=300)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "ETRM_DATA_DIR" in refused.stderr and str(tmp_path / "xdg" / "etrm" / "conceptarc") in refused.stderr
