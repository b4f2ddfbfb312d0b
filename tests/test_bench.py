"""`etrm bench` measures and reports (a short run on the CPU preset of the TRM baseline)."""

import json
import os
import subprocess
import sys


def test_bench_json_and_benchmarks_row(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    result = subprocess.run([sys.executable, "-m", "etrm", "bench", "--device", "cpu", "--steps", "1", "--only",
                             "trm overfit-cpu", "--json", "--out", str(out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["matmul_peak_flops"] > 1e8
    model = report["models"]["trm overfit-cpu"]
    for key in ("samples_per_s", "model_flops_per_s", "mfu"):
        assert model[key] > 0
    assert abs(model["mfu"] - model["model_flops_per_s"] / report["matmul_peak_flops"]) < 1e-12
    assert 0 < model["data_share"] < 1
    table = out.read_text()
    assert "## `etrm bench`" in table and "| trm overfit-cpu |" in table
