"""`etrm bench`: how fast this machine trains and evaluates TRM and ETRM, in one process and run.

Setups, each labelled with its settings: the CPU preset of each model ("CPU preset":
`preset=overfit-cpu`, one ACT step per sample), and the reference's settings ("reference
settings": hidden 512, H3 x L4, canvas 30, up to 16 ACT steps with exploration 0.1 over the
persistent carry, on the first 32 ARC-AGI-1 training tasks) on the fixed canvas and size-aware
(`dynamic_canvas=true`). The few timed steps of a bench run one carry (every slot starts together
and, with a fresh halting head, runs all 16 steps), so its size-aware figures are those of one
batch's squares; `benchmarks/size_aware_canvas.py speed --settings reference` measures the carry's
steady state, its slots of mixed ages and sizes. Measured: the machine's matmul peak (float32
`torch.matmul` on CPU, bf16 on CUDA) as the yardstick; per model, the run's own training step
(`Trainer.train_step`, compiled on CUDA as `compile=true` does) in steps per second, samples per
second, model FLOP/s (counted analytically: `etrm.models.flops`) and model FLOP utilisation =
model FLOP/s / peak; the data pipeline's time per batch and its share of the step; evaluation
samples per second and seconds per task; peak memory. Every figure is a median over timed repeats
after warm-up.

`alternating_rounds` times several variants side by side in one process (the before / after
benchmarks under benchmarks/).
"""

from __future__ import annotations

import datetime
import json
import re
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import torch

from etrm.core.config import canvas_region_margin, load_config
from etrm.core.distributed import Runtime, select_device
from etrm.data.tensors import to_torch
from etrm.eval.evaluate import predict
from etrm.models.flops import decoder_batch_flops, encoder_batch_flops, reads_demos
from etrm.train.loop import Trainer

CPU_PRESET, REFERENCE_SETTINGS = "CPU preset", "reference settings"  # the setups' labels
# The reference's settings on the CPU preset's data: its sizes, and its halting (up to 16 ACT steps
# per sample over the persistent carry, exploration 0.1) rather than the preset's one step.
REFERENCE = ["preset=overfit-cpu", "canvas_side=30", "model.hidden_size=512", "model.num_heads=8", "model.h_cycles=3",
             "model.l_cycles=4", "halt_max_steps=16", "halt_exploration_prob=0.1", "global_batch_size=4"]
ETRM_REFERENCE = [*REFERENCE, "encoder.hidden_size=512", "encoder.num_heads=8"]
# (name, label, overrides): the CPU preset and the reference's settings of each model, fixed and size-aware.
SETUPS = (
    ("trm overfit-cpu", CPU_PRESET, ["preset=overfit-cpu", "model_type=trm"]),
    ("etrm overfit-cpu", CPU_PRESET, ["preset=overfit-cpu"]),
    ("trm reference", REFERENCE_SETTINGS, [*REFERENCE, "model_type=trm"]),
    ("etrm reference", REFERENCE_SETTINGS, ETRM_REFERENCE),
    ("trm reference size-aware", REFERENCE_SETTINGS, [*REFERENCE, "model_type=trm", "dynamic_canvas=true"]),
    ("etrm reference size-aware", REFERENCE_SETTINGS, [*ETRM_REFERENCE, "dynamic_canvas=true"]),
)


Name = TypeVar("Name", bound=Hashable)


@dataclass
class Rounds(Generic[Name]):
    """What `alternating_rounds` measured, per arm and in call order: the seconds of every timed
    call and what each call returned."""

    seconds: dict[Name, list[float]]
    results: dict[Name, list[Any]]

    def medians(self) -> dict[Name, float]:
        """Median seconds of a call, per arm."""
        return {name: statistics.median(seconds) for name, seconds in self.seconds.items()}

    def means(self) -> dict[Name, float]:
        """Mean seconds of a call, per arm (where a call's cost varies with its input)."""
        return {name: statistics.fmean(seconds) for name, seconds in self.seconds.items()}


def alternating_rounds(arms: Mapping[Name, Callable[[int], Callable[[], Any]]], rounds: int,
                       calls: int | Mapping[Name, int] = 1, *, warmup: int = 0,
                       after_round: Callable[[int, Rounds[Name]], None] | None = None,
                       clock: Callable[[], float] = time.perf_counter) -> Rounds[Name]:
    """Time several arms side by side in one process: round after round, each arm in turn makes
    `calls` timed calls, so that every arm sees the same machine state (its load, its clock
    speed) rather than one arm the quiet minutes and another the busy ones.

    `arms[name](index)` prepares call `index` untimed (builds its batch, sets a switch) and
    returns the callable to time; what that returns is kept in `results`. Every arm first makes
    `warmup` untimed calls (indices 0 .. warmup - 1); the timed calls go on from there, round r
    making indices warmup + r * calls onwards, the same indices for every arm. `calls` may be
    given per arm (a mapping): an arm whose calls cost the same every time needs fewer of them
    than one whose cost varies from call to call; its indices then go on at its own pace.
    `after_round(r, measured so far)` runs after each round (progress lines).
    """
    per_arm = {name: calls if isinstance(calls, int) else calls[name] for name in arms}
    for prepare in arms.values():
        for index in range(warmup):
            prepare(index)()
    measured: Rounds[Name] = Rounds({name: [] for name in arms}, {name: [] for name in arms})
    for round_index in range(rounds):
        for name, prepare in arms.items():
            count = per_arm[name]
            for index in range(warmup + round_index * count, warmup + (round_index + 1) * count):
                call = prepare(index)
                start = clock()
                result = call()
                measured.seconds[name].append(clock() - start)
                measured.results[name].append(result)
        if after_round is not None:
            after_round(round_index, measured)
    return measured


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
                compile_step: bool | None = None, settings: str = "") -> dict[str, Any]:
    """Time the real training step (`Trainer.train_step`: the run's optimisers, clipping, schedule
    and EMA), the data pipeline and evaluation of one model setup.

    `compile_step`: torch.compile the training step (`compile=true`; default: on CUDA only).
    `settings`: the setup's label (`CPU_PRESET`, `REFERENCE_SETTINGS`), kept in the results."""
    from torch._dynamo.utils import counters

    compiled = device.type == "cuda" if compile_step is None else compile_step
    graphs_before, breaks_before = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
    config = load_config([*overrides, "tracker=none", "progress=false", f"device={device.type}",
                          f"compile={str(compiled).lower()}"])
    # Constructing a Trainer and calling train_step writes nothing: only Trainer.run touches run_dir.
    trainer = Trainer(config, Runtime(device))
    batch_size, pin = config.global_batch_size, device.type == "cuda"
    data_times, step_times, step_flops = [], [], []
    for step in range(steps + 2):
        start = time.perf_counter()
        batch = to_torch(trainer.sampler.batch(step, batch_size), device, pin_memory=pin)  # as Trainer._fetch
        _sync(device)
        built = time.perf_counter()
        metrics = trainer.train_step(batch)
        _sync(device)
        done = time.perf_counter()
        trainer.state.add(metrics)
        if step >= 2:  # warm-up steps (and compilation) are not timed
            data_times.append(built - start)
            step_times.append(done - built)
            data = trainer.state.carry.current_data  # the samples the step ran (and, size-aware, their squares)
            flops = decoder_batch_flops(config, data, train=True)
            if reads_demos(config):  # the encoder runs on the demos of the samples in the carry
                flops += encoder_batch_flops(config, data["demo_inputs"], data["demo_outputs"], data["demo_mask"],
                                             train=True)
            step_flops.append(flops)
    step_time, data_time = statistics.median(step_times), statistics.median(data_times)
    flops = statistics.fmean(step_flops)
    model = trainer.model
    eval_tasks = trainer.data.held_out(2, trainer.data.split.test[:4])
    evaluation = dict(canvas_side=config.canvas_side, max_demos=config.max_demos, batch_size=16,
                      runtime=trainer.runtime, region_margin=canvas_region_margin(config))
    predict(model, eval_tasks, num_steps=1, **evaluation)  # warm-up
    _sync(device)
    start = time.perf_counter()
    records = predict(model, eval_tasks, **evaluation)
    _sync(device)
    eval_time = time.perf_counter() - start
    return {
        "name": name, "settings": settings, "halt_max_steps": config.halt_max_steps,
        "halt_exploration_prob": config.halt_exploration_prob, "batch_size": batch_size, "steps_per_s": 1 / step_time,
        "samples_per_s": batch_size / step_time,
        "model_flops_per_step": flops, "model_flops_per_s": flops / step_time, "mfu": flops / step_time / peak,
        "data_ms_per_batch": 1000 * data_time, "data_share": data_time / (data_time + step_time),
        "eval_samples_per_s": len(records) / eval_time,
        "eval_s_per_task_and_augmentation": eval_time / (len(eval_tasks.tasks) * 2),
        "peak_memory_mb": _peak_memory_mb(device),
        # With compile: the graphs dynamo built over the timed steps and evaluation, and its graph
        # breaks (the encoder's data-dependent crops, the size-aware canvas's square side).
        "compiled_graphs": counters["stats"]["unique_graphs"] - graphs_before,
        "graph_breaks": sum(counters["graph_break"].values()) - breaks_before,
    }


def run_bench(device_preference: str = "auto", steps: int = 5, only: str = "") -> dict[str, Any]:
    """Measure every setup (the one named `only`, else those whose name contains it: "trm
    overfit-cpu" is that setup alone, "overfit-cpu" both models); returns the JSON-ready results."""
    device = select_device(device_preference)
    peak = matmul_peak(device)
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "device": str(device),
               "torch": torch.__version__, "threads": torch.get_num_threads(), "matmul_peak_flops": peak,
               "models": {}}
    exact = [setup for setup in SETUPS if setup[0] == only]
    for name, settings, overrides in exact or [setup for setup in SETUPS if only in setup[0]]:
        results["models"][name] = bench_model(name, overrides, device, steps, peak, settings=settings)
    return results


def markdown_rows(results: dict[str, Any]) -> list[str]:
    """One dated table row per model for BENCHMARKS.md."""
    rows = []
    for model in results["models"].values():
        label = f"{model['name']} ({model['settings']})" if model.get("settings") else model["name"]
        rows.append(
            f"| {results['date'][:16]} | {results['device']} | {label} | {model['batch_size']} | "
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
