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


def test_rows_go_under_the_bench_table_even_when_sections_follow_it(tmp_path):
    from etrm.bench import append_to_benchmarks

    out = tmp_path / "BENCHMARKS.md"
    model = {"name": "etrm overfit-cpu", "batch_size": 64, "samples_per_s": 50.0, "model_flops_per_s": 9e10,
             "mfu": 0.5, "data_ms_per_batch": 4.0, "data_share": 0.01, "eval_samples_per_s": 30.0,
             "peak_memory_mb": 1500.0}
    results = {"date": "2026-01-02T03:04:05", "device": "cpu", "matmul_peak_flops": 1.8e11, "models": {"m": model}}
    append_to_benchmarks(results, out)
    following = "\nReading: a note.\n\n<!-- begin other -->\n## Other\n| a | b |\n<!-- end other -->\n"
    out.write_text(out.read_text() + following)
    append_to_benchmarks({**results, "date": "2026-01-03T03:04:05"}, out)
    lines = out.read_text().splitlines()
    rows = [i for i, line in enumerate(lines) if line.startswith("| 2026-01-0")]
    assert len(rows) == 2 and rows[1] == rows[0] + 1  # the second row sits right under the first
    assert rows[1] < lines.index("Reading: a note.") < lines.index("## Other")
