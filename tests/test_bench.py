"""`etrm bench` measures the real training step, and its FLOP count is that of the modules.

The analytic counts of `etrm.models.flops` are checked against `torch.utils.flop_counter.
FlopCounterMode` run over real `Trainer.train_step` calls of TRM and ETRM. Both sides count
matrix multiplies and attention only (FlopCounterMode has formulas for mm/addmm/bmm/SDPA and
nothing else); what the analytic count leaves out is the halting head (two outputs at one
position) and the encoder's pooling, about 1e-5 of a step here, so they must agree within 0.1%.
In torch 2.13 FlopCounterMode has no formula for the CPU attention kernel
(`_scaled_dot_product_flash_attention_for_cpu` and its backward count 0), so the counter gets
torch's own SDPA formula for it; the backward is counted as its four gradient matmuls (twice
the forward), as model FLOPs are, without the kernel's recomputation of the scores.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from etrm.core.config import load_config
from etrm.core.distributed import Runtime
from etrm.data.tensors import to_torch
from etrm.models.flops import decoder_batch_flops, decoder_step_flops, encoder_batch_flops
from etrm.train.loop import Trainer

TOLERANCE = 1e-3

_ATEN = torch.ops.aten
CPU_ATTENTION = {
    _ATEN._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v),
    _ATEN._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *args, **kwargs: 2 * sdpa_flop_count(q, k, v),
}


def counted_flops(function, *args) -> tuple[int, dict[str, int]]:
    """FLOPs FlopCounterMode counts while `function(*args)` runs (CPU attention included)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        function(*args)
    return counter.get_total_flops(), {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}


def _expected(config, trainer: Trainer, padded: bool = True) -> tuple[float, float]:
    """(decoder, encoder) analytic FLOPs of the step just run (the encoder ran on the carry's demos);
    `padded`: the work that runs (the counter's view), else the model FLOPs MFU is made of."""
    data = trainer.state.carry.current_data
    decoder = decoder_batch_flops(config, data, train=True)  # size-aware: its region groups' squares
    if config.model_type != "etrm":
        return decoder, 0.0
    return decoder, encoder_batch_flops(config, data["demo_inputs"], data["demo_outputs"], data["demo_mask"],
                                        train=True, padded=padded)


@pytest.mark.parametrize("canvas", ["dynamic_canvas=false", "dynamic_canvas=true"])
@pytest.mark.parametrize("model_type", ["trm", "etrm"])
def test_analytic_step_flops_match_the_flop_counter_on_real_training_steps(model_type, canvas, tiny, tmp_path):
    # Hidden 64 (SwiGLU inner 256) and a 2-layer encoder: the decoder's and the encoder's matmuls
    # are each a large share of the step, so an error in either count shows. A size-aware
    # canvas counts the square the step ran on.
    config = load_config(tiny(tmp_path / "run", f"model_type={model_type}", "augmentations_per_task=2",
                              "model.hidden_size=64", "model.num_heads=4", "encoder.num_layers=2",
                              "halt_exploration_prob=0", canvas, "dynamic_canvas_margin=0"))
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    squares = []
    if config.dynamic_canvas:  # q_halt > 0: every slot halts, the second step runs batch 1's mixed sizes
        with torch.no_grad():
            trainer.model.decoder.q_head.bias.fill_(1.0)
    for step in range(2):  # the second step runs carried samples (their demos stay in the carry)
        batch = to_torch(trainer.sampler.batch(step, config.global_batch_size))
        counted, by_op = counted_flops(trainer.train_step, batch)
        trainer.state.step += 1
        decoder, encoder = _expected(config, trainer)
        if config.dynamic_canvas:
            squares.append(sorted(set(trainer.state.carry.current_data["region_side"].tolist())))
        print(f"{model_type} step {step + 1}: counted {counted:.6g}, analytic {decoder + encoder:.6g} "
              f"(decoder {decoder:.6g}, encoder {encoder:.6g})")
        assert by_op.get("aten._scaled_dot_product_flash_attention_for_cpu_backward", 0) > 0  # attention counted
        assert abs(counted - (decoder + encoder)) <= TOLERANCE * counted
        if model_type == "etrm":
            assert encoder > 0.15 * counted  # the encoder's count is tested, not drowned by the decoder's
    assert not config.dynamic_canvas or len(squares[-1]) > 1  # a step ran samples of several sizes (groups)
    assert not (tmp_path / "run").exists()  # construction and train_step write nothing


@pytest.mark.parametrize("canvas", ["dynamic_canvas=false", "dynamic_canvas=true"])
def test_demos_as_the_context_training_step_counts_the_cells_the_decoder_runs(canvas, tiny, tmp_path):
    # One sample a step: the decoder runs its demos' cells (and position 0) beside the canvas, as
    # decoder_batch_flops counts them, far fewer than model.context_len.
    from etrm.models.flops import demo_cells_keys

    config = load_config(tiny(tmp_path / "run", "encoder.type=demo_cells", "model.context_len=null",
                              "global_batch_size=1", "model.hidden_size=64", "model.num_heads=4", canvas,
                              "dynamic_canvas_margin=0"))
    trainer = Trainer(config, Runtime(torch.device("cpu")))
    counted, _ = counted_flops(trainer.train_step, to_torch(trainer.sampler.batch(0, 1)))
    data = trainer.state.carry.current_data
    decoder, _ = _expected(config, trainer)
    keys = demo_cells_keys(data["demo_inputs"], data["demo_outputs"], data["demo_mask"])
    assert 0 < keys[0] < config.model.context_len / 2
    assert abs(counted - decoder) <= TOLERANCE * counted


@pytest.mark.parametrize("context", [["encoder.type=standard"], ["encoder.type=demo_cells", "model.context_len=null"]])
def test_evaluation_flops_of_a_task_match_the_flop_counter(context, tiny, tmp_path):
    # One test input of a task whose demos are all 3x3 -> 3x3 (equal kept tokens: the pair
    # transformer's length groups pad nothing), run as evaluation runs it: the encoder once, then
    # halt_max_steps decoder steps without gradients. The demos as the context: the decoder
    # runs the demos' cells beside the canvas, not model.context_len positions.
    from etrm.data import load_tasks
    from etrm.data.episodes import AugmentedTasks, EvalEnumeration
    from etrm.models.build import build_model
    from etrm.models.flops import demo_cells_keys, task_test_time_flops

    config = load_config(tiny(tmp_path / "run", "model.hidden_size=64", "model.num_heads=4", "encoder.num_layers=2",
                              *context))
    task = next(t for t in load_tasks("arc1:training") if t.id == "0d3d703e")
    assert {(i.shape, o.shape) for i, o in task.demos} == {((3, 3), (3, 3))} and len(task.tests) == 1
    batch = to_torch(next(EvalEnumeration(AugmentedTasks([task], 1, 0), canvas_side=config.canvas_side,
                                          max_demos=config.max_demos).batches(1)))
    # Frozen parameters: FlopCounterMode's module tracker trips on views of parameters that require
    # grad under no_grad (the encoder's expanded queries); evaluation computes no gradient anyway.
    model = build_model(config).eval().requires_grad_(False)
    counted, _ = counted_flops(model.run_fixed_steps, batch)
    expected = task_test_time_flops(config, task, predictions=1, steps_run=config.halt_max_steps)
    print(f"evaluation of one sample: counted {counted:.6g}, analytic {expected:.6g}")
    assert abs(counted - expected) <= TOLERANCE * counted
    demos = (batch["demo_inputs"], batch["demo_outputs"], batch["demo_mask"])
    if config.encoder.type == "demo_cells":
        keys = float(demo_cells_keys(*demos)[0])
        assert keys < config.model.context_len / 2  # 3x3 demos: a few of the context's positions run
        exact = config.halt_max_steps * decoder_step_flops(config, 1, train=False, context=keys)
    else:
        exact = config.halt_max_steps * decoder_step_flops(config, 1, train=False) + encoder_batch_flops(
            config, *demos, train=False, padded=True)
    assert abs(counted - exact) <= TOLERANCE * counted


def test_bench_times_trainer_train_step_and_reports_its_counted_flops(tiny, tmp_path, monkeypatch):
    from etrm import bench

    calls, counts, useful = [], [], []
    real_step = Trainer.train_step

    def counting_step(self, batch):
        calls.append(self)
        results = []
        total, _ = counted_flops(lambda: results.append(real_step(self, batch)))
        counts.append(total)
        useful.append(sum(_expected(self.config, self, padded=False)))
        return results[0]

    monkeypatch.setattr(Trainer, "train_step", counting_step)
    evaluated, real_predict = [], bench.predict

    def recording_predict(model, *args, **kwargs):
        evaluated.append(model)
        return real_predict(model, *args, **kwargs)

    monkeypatch.setattr(bench, "predict", recording_predict)
    overrides = tiny(tmp_path / "run", "encoder.num_layers=2", "halt_exploration_prob=0")
    result = bench.bench_model("etrm tiny", overrides, torch.device("cpu"), steps=2, peak=1e9)
    assert len(calls) == 4 and len({id(t) for t in calls}) == 1  # 2 warm-up + 2 timed steps of one Trainer
    # MFU counts model FLOPs: each demo at its own length, not the length groups' padding, which
    # the counter sees as work done.
    timed, timed_useful = sum(counts[2:]) / 2, sum(useful[2:]) / 2
    assert abs(result["model_flops_per_step"] - timed_useful) <= TOLERANCE * timed_useful
    assert timed_useful < timed
    assert calls[0].ema is not None  # the run's own step, EMA included
    assert evaluated and all(model is calls[0].model for model in evaluated)  # evaluation times the trained model
    assert not (tmp_path / "run").exists()


def test_bench_json_and_benchmarks_row(tmp_path):
    out, cwd = tmp_path / "BENCHMARKS.md", tmp_path / "cwd"
    cwd.mkdir()
    result = subprocess.run([sys.executable, "-m", "etrm", "bench", "--device", "cpu", "--steps", "1", "--only",
                             "trm overfit-cpu", "--json", "--out", str(out)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=cwd)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["matmul_peak_flops"] > 1e8
    assert list(report["models"]) == ["trm overfit-cpu"]
    model = report["models"]["trm overfit-cpu"]
    for key in ("batch_size", "steps_per_s", "samples_per_s", "model_flops_per_step", "model_flops_per_s", "mfu",
                "data_ms_per_batch", "eval_samples_per_s", "eval_s_per_task_and_augmentation", "peak_memory_mb"):
        assert model[key] > 0, key
    assert 0 < model["data_share"] < 1
    assert model["compiled_graphs"] == model["graph_breaks"] == 0  # eager on the CPU: dynamo built nothing
    assert model["settings"] == "CPU preset" and model["halt_max_steps"] == 1
    assert list(cwd.iterdir()) == []  # the bench's Trainer wrote no run directory
    table = out.read_text()
    assert "## `etrm bench`" in table and "| trm overfit-cpu (CPU preset) |" in table


def test_reference_setups_are_labelled_and_run_the_reference_halting():
    from etrm.bench import CPU_PRESET, REFERENCE_SETTINGS, SETUPS

    for name, settings, overrides in SETUPS:
        config = load_config([*overrides, "tracker=none"])
        if "reference" in name:
            assert settings == REFERENCE_SETTINGS
            assert (config.halt_max_steps, config.halt_exploration_prob, config.train_mode) == (16, 0.1, "persistent")
            assert (config.model.hidden_size, config.model.h_cycles, config.model.l_cycles, config.canvas_side) == (
                512, 3, 4, 30)
        else:
            assert settings == CPU_PRESET and config.halt_max_steps == 1


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


def test_alternating_rounds_alternates_the_arms_and_times_only_their_calls():
    from etrm.bench import alternating_rounds

    now = [0.0]  # the stubbed clock: only what the arms add to it passes
    order: list[tuple[str, int]] = []
    durations = {"a": [7.0, 3.0, 1.0, 2.0, 5.0], "b": [7.0, 10.0, 30.0, 20.0, 40.0]}  # by call index, 0: warm-up

    def arm(name: str):
        def prepare(index: int):
            order.append((name, index))
            now[0] += 100.0  # preparing a call (its batch) is not timed

            def call() -> str:
                now[0] += durations[name][index]
                return f"{name}{index}"
            return call
        return prepare

    progress = []

    def after_round(round_index: int, so_far) -> None:
        progress.append((round_index, {name: len(seconds) for name, seconds in so_far.seconds.items()}))

    measured = alternating_rounds({"a": arm("a"), "b": arm("b")}, rounds=2, calls=2, warmup=1, after_round=after_round,
                                  clock=lambda: now[0])
    assert order == [("a", 0), ("b", 0), ("a", 1), ("a", 2), ("b", 1), ("b", 2), ("a", 3), ("a", 4), ("b", 3), ("b", 4)]
    assert measured.seconds == {"a": [3.0, 1.0, 2.0, 5.0], "b": [10.0, 30.0, 20.0, 40.0]}
    assert measured.results == {"a": ["a1", "a2", "a3", "a4"], "b": ["b1", "b2", "b3", "b4"]}
    assert measured.medians() == {"a": 2.5, "b": 25.0}
    assert measured.means() == {"a": 2.75, "b": 25.0}
    assert progress == [(0, {"a": 2, "b": 2}), (1, {"a": 4, "b": 4})]


def test_alternating_rounds_with_calls_per_arm():
    from etrm.bench import alternating_rounds

    order: list[tuple[str, int]] = []

    def arm(name: str):
        def prepare(index: int):
            order.append((name, index))
            return lambda: index
        return prepare

    measured = alternating_rounds({"a": arm("a"), "b": arm("b")}, rounds=2, calls={"a": 1, "b": 3}, warmup=1,
                                  clock=lambda: 0.0)
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("b", 2), ("b", 3), ("a", 2), ("b", 4), ("b", 5),
                     ("b", 6)]
    assert measured.results == {"a": [1, 2], "b": [1, 2, 3, 4, 5, 6]}
