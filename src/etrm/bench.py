"""`etrm bench`: how fast this machine trains and evaluates TRM and ETRM, in one process and run.

Measured: the machine's matmul peak (float32 `torch.matmul` on CPU, bf16 on CUDA) as the
yardstick; per model, training steps per second, samples per second, model FLOP/s (counted
analytically: `etrm.models.flops`) and model FLOP utilisation = model FLOP/s / peak; the data
pipeline's time per batch and its share of the step; evaluation samples per second and seconds
per task; peak memory. Every figure is a median over timed repeats after warm-up.
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from etrm.data.episodes import AugmentedTasks, TrainSampler
from etrm.data.splits import few_shot_split
from etrm.data.tensors import to_torch
from etrm.eval.evaluate import autocast_for, predict
from etrm.models.build import build_model, compile_model
from etrm.models.flops import decoder_step_flops, encoder_flops, kept_demo_tokens
from etrm.models.losses import act_loss
from etrm.train.config import load_config
from etrm.train.distributed import Runtime, select_device

# (name, overrides): the CPU preset and the reference size (hidden 512, canvas 30) of each model.
SETUPS = (
    ("trm overfit-cpu", ["preset=overfit-cpu", "model_type=trm"]),
    ("etrm overfit-cpu", ["preset=overfit-cpu"]),
    ("trm reference", ["preset=overfit-cpu", "model_type=trm", "canvas_side=30", "model.hidden_size=512",
                       "model.num_heads=8", "model.h_cycles=3", "model.l_cycles=4", "global_batch_size=4"]),
    ("etrm reference", ["preset=overfit-cpu", "canvas_side=30", "model.hidden_size=512", "model.num_heads=8",
                        "model.h_cycles=3", "model.l_cycles=4", "encoder.hidden_size=512", "encoder.num_heads=8",
                        "global_batch_size=4"]),
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, repeats: int = 10) -> float:
    """FLOP/s of a plain square matmul loop: float32 on CPU, bf16 on CUDA."""
    size, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (1024, torch.float32)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 2):
        _sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        _sync(device)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times[2:])


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    match = re.search(r"VmHWM:\s+(\d+)", status.read_text()) if status.is_file() else None
    return int(match.group(1)) / 1024 if match else float("nan")


def bench_model(name: str, overrides: list[str], device: torch.device, steps: int, peak: float,
                compile_step: bool | None = None) -> dict[str, Any]:
    """Time training steps, the data pipeline and evaluation of one model setup.

    `compile_step`: torch.compile the training step (default: on CUDA only)."""
    config = load_config([*overrides, "tracker=none", "progress=false", f"device={device.type}"])
    split = few_shot_split(config.train_sources, config.test_sources, config.canvas_side,
                           config.max_train_groups, config.max_eval_groups, config.leak_policy)
    enumerated = AugmentedTasks(split.train, config.augmentations_per_task, config.seed) \
        if config.augmentations_per_task else None
    sampler = TrainSampler(split.train, canvas_side=config.canvas_side, max_demos=config.max_demos,
                           leave_one_out=config.leave_one_out, seed=config.seed, enumerated=enumerated,
                           augment=config.augment, translate=config.translate)
    torch.manual_seed(0)
    model = build_model(config, num_puzzle_ids=enumerated.num_ids + 1 if config.model_type == "trm" else 0).to(device)
    if device.type == "cuda" if compile_step is None else compile_step:
        compile_model(model)
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "table" not in n], lr=1e-4)
    batch_size = config.global_batch_size
    carry, data_times, step_times, demos, cells = None, [], [], 0.0, 0.0
    for step in range(steps + 2):
        start = time.perf_counter()
        numpy_batch = sampler.batch(step, batch_size)
        batch = to_torch(numpy_batch, device, pin_memory=device.type == "cuda")
        built = time.perf_counter()
        carry = carry or model.initial_carry(batch)
        with autocast_for(device):
            carry, outputs = model(carry, batch)
            loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted, config.halt_loss_weight)
        (loss / batch_size).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if step >= 2:  # warm-up steps (and compilation) are not timed
            data_times.append(built - start)
            step_times.append(time.perf_counter() - built)
            step_demos, step_cells = kept_demo_tokens(carry.current_data["demo_inputs"],
                                                      carry.current_data["demo_outputs"],
                                                      carry.current_data["demo_mask"])
            demos, cells = demos + step_demos, cells + step_cells
    step_time, data_time = statistics.median(step_times), statistics.median(data_times)
    flops = decoder_step_flops(config, batch_size, train=True)
    if config.model_type == "etrm":  # per step: the mean demo count, at the mean kept tokens per demo
        flops += encoder_flops(config, round(demos / len(step_times)), cells / max(demos, 1), train=True)
    eval_tasks = AugmentedTasks(split.test[:4], 2, config.seed,
                                fixed_puzzle_id=enumerated.num_ids if config.model_type == "trm" else None)
    runtime = Runtime(device)
    predict(model, eval_tasks, canvas_side=config.canvas_side, max_demos=config.max_demos, batch_size=16,
            runtime=runtime, num_steps=1)  # warm-up
    start = time.perf_counter()
    records = predict(model, eval_tasks, canvas_side=config.canvas_side, max_demos=config.max_demos, batch_size=16,
                      runtime=runtime)
    _sync(device)
    eval_time = time.perf_counter() - start
    return {
        "name": name, "batch_size": batch_size, "steps_per_s": 1 / step_time, "samples_per_s": batch_size / step_time,
        "model_flops_per_step": flops, "model_flops_per_s": flops / step_time, "mfu": flops / step_time / peak,
        "data_ms_per_batch": 1000 * data_time, "data_share": data_time / (data_time + step_time),
        "eval_samples_per_s": len(records) / eval_time,
        "eval_s_per_task_and_augmentation": eval_time / (len(eval_tasks.tasks) * 2),
        "peak_memory_mb": _peak_memory_mb(device),
    }


def run_bench(device_preference: str = "auto", steps: int = 5, only: str = "") -> dict[str, Any]:
    """Measure every setup (or those whose name contains `only`); returns the JSON-ready results."""
    device = select_device(device_preference)
    peak = matmul_peak(device)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "matmul_peak_flops": peak,
               "models": {}}
    for name, overrides in SETUPS:
        if only in name:
            results["models"][name] = bench_model(name, overrides, device, steps, peak)
    return results


def markdown_rows(results: dict[str, Any]) -> list[str]:
    """One dated table row per model for BENCHMARKS.md."""
    rows = []
    for model in results["models"].values():
        rows.append(
            f"| {results['date'][:16]} | {results['device']} | {model['name']} | {model['batch_size']} | "
            f"{model['samples_per_s']:.1f} | {model['model_flops_per_s'] / 1e9:.1f} | "
            f"{results['matmul_peak_flops'] / 1e9:.0f} | {100 * model['mfu']:.0f}% | "
            f"{model['data_ms_per_batch']:.1f} ({100 * model['data_share']:.1f}%) | "
            f"{model['eval_samples_per_s']:.1f} | {model['peak_memory_mb']:.0f} |")
    return rows


def append_to_benchmarks(results: dict[str, Any], path: Path) -> None:
    """Append the rows under the `etrm bench` table of BENCHMARKS.md (creating it if absent)."""
    header = ("## `etrm bench` (one row per model and run)\n\n"
              "| date | device | model | batch | samples/s | model GFLOP/s | matmul peak GFLOP/s | MFU | "
              "data ms/batch (share) | eval samples/s | peak MB |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    if "## `etrm bench`" not in text:
        text = text.rstrip() + "\n\n" + header
    # Insert after the table's last row: other sections may follow the table.
    lines = text.splitlines()
    end = lines.index(header.splitlines()[0]) + 1
    while end < len(lines) and not lines[end].startswith("|"):
        end += 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    path.write_text("\n".join(lines[:end] + markdown_rows(results) + lines[end:]) + "\n")


def main(device: str, steps: int, only: str, as_json: bool, out: Path) -> None:
    results = run_bench(device, steps, only)
    append_to_benchmarks(results, out)
    if as_json:
        print(json.dumps(results))
    else:
        print("\n".join(markdown_rows(results)))
