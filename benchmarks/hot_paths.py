"""Before / after of the encoder's length groups (and torch.compile on the CPU), side by side.

The ETRM training step (`etrm.bench.bench_model`: samples/s and model FLOP utilisation against
the measured matmul peak) with the demo pair transformer run on one group padded to the batch's
longest demo (before), on `PairTransformer.LENGTH_GROUPS` groups of similar length (after), and
after + `torch.compile` (`etrm.models.build.compile_model`; a new demo shape recompiles inside
the timed steps, as it would in training), alternating rounds (`etrm.bench.alternating_rounds`)
so that all see the same machine state; medians over rounds. Writes the
`hot_paths` section of BENCHMARKS.md. Run alone on the machine: `python benchmarks/hot_paths.py`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

from etrm.bench import alternating_rounds, bench_model, matmul_peak  # noqa: E402
from etrm.models.encoders.common import PairTransformer  # noqa: E402

SETUPS = {"etrm overfit-cpu": ["preset=overfit-cpu"], "etrm synth-cpu": ["preset=synth-cpu"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per round")
    args = parser.parse_args()
    device = torch.device("cpu")
    after = PairTransformer.LENGTH_GROUPS
    # (length groups, torch.compile on the CPU)
    variants = {"before: one padded group": (1, False), f"after: {after} length groups": (after, False),
                f"{after} length groups + torch.compile": (after, True)}
    peaks: list[float] = []  # one per round

    def variant_arm(setup: str, groups: int, compiled: bool) -> Callable[[int], Callable[[], dict]]:
        def prepare(_: int) -> Callable[[], dict]:
            PairTransformer.LENGTH_GROUPS = groups
            return lambda: bench_model(setup, SETUPS[setup], device, args.steps, peaks[-1], compile_step=compiled)
        return prepare

    # The peak first in every round: each round's variants are measured against that round's peak.
    arms = {"peak": lambda _: lambda: peaks.append(matmul_peak(device)),
            **{(setup, variant): variant_arm(setup, groups, compiled) for setup in SETUPS
               for variant, (groups, compiled) in variants.items()}}
    results = alternating_rounds(arms, args.rounds).results
    PairTransformer.LENGTH_GROUPS = after
    peak = statistics.median(peaks)
    rows = ["| setup | variant | samples/s (median) | MFU (median) | speed-up |", "|---|---|---|---|---|"]
    for setup in SETUPS:
        base = None
        for variant in variants:
            runs = results[setup, variant]
            speed = statistics.median(r["samples_per_s"] for r in runs)
            mfu = statistics.median(r["mfu"] for r in runs)
            base = base or speed
            rows.append(f"| {setup} | {variant} | {speed:.1f} | {100 * mfu:.0f}% | {speed / base:.2f}x |")
    body = f"""## Hot-path changes, before and after (`benchmarks/hot_paths.py`)

Machine: {machine()}, {torch.get_num_threads()} threads; matmul peak {peak / 1e9:.0f} GFLOP/s (median of
{args.rounds}). {args.rounds} alternating rounds of {args.steps} timed training steps per variant
(after 2 warm-up steps), medians. Model FLOPs count real demo tokens only, so padding the
encoder no longer runs shows up as utilisation.

{chr(10).join(rows)}
"""
    write_section("hot_paths", body)
    print(body)


if __name__ == "__main__":
    main()
