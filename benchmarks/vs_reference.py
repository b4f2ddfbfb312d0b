"""This project's TRM training step against the TRM reference implementation's, side by side.

Needs a checkout of the reference (SamsungSAILMontreal/TinyRecursiveModels) given as
`--trm-reference DIR`: its model, loss head and sparse-embedding optimiser are imported from
there, never copied into this repository (it needs `einops` and `pydantic`). Both sides get the
same architecture, the same batches (this project's sampler over ARC-AGI-1 training tasks),
float32, AdamW on the dense weights and sign-SGD on the puzzle embedding (the reference trains
with AdamATan2; the optimiser is the same on both sides, which is what matters for the
comparison), no EMA and in effect no gradient clipping (the reference's step has neither; this
project's still takes the gradient norm, which its non-finite check needs: counted as its cost), and
one ACT step per batch (`halt_max_steps=1` on both sides, so that every timed step is a new
batch and the size-aware arm meets the whole distribution of batch sizes). Arms: the reference,
this project on the fixed canvas, this project size-aware (`dynamic_canvas=true`). Timed in
alternating rounds in one process (`etrm.bench.alternating_rounds`); medians per arm, ratios
against the reference.

Sizes: `small` (hidden 128, H3 x L4, canvas 12, batch 32) and `reference` (hidden 512, H3 x L4,
canvas 30, batch 4; the ARC-AGI-1 setting of the paper, L_cycles 4 instead of 6 for time).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import machine, write_section  # noqa: E402

SIZES = {
    "small": {"hidden": 128, "heads": 4, "h_cycles": 3, "l_cycles": 4, "canvas": 12, "batch": 32},
    "reference": {"hidden": 512, "heads": 8, "h_cycles": 3, "l_cycles": 4, "canvas": 30, "batch": 4},
}
ARMS = ("reference", "fixed", "size-aware")


def project_trainer(size: dict, dynamic: bool):
    """This project's Trainer for TRM at `size` (nothing written: only Trainer.run touches run_dir)."""
    import torch

    from etrm.core.config import load_config
    from etrm.core.distributed import Runtime
    from etrm.train.loop import Trainer

    config = load_config([
        "preset=default", "model_type=trm", "train_sources=arc1:training", "test_sources=arc1:evaluation",
        f"canvas_side={size['canvas']}", f"model.hidden_size={size['hidden']}", f"model.num_heads={size['heads']}",
        f"model.h_cycles={size['h_cycles']}", f"model.l_cycles={size['l_cycles']}", "model.num_layers=2",
        f"global_batch_size={size['batch']}", "halt_max_steps=1", "optimizer=adamw", "grad_clip_norm=1e9",
        "ema_rate=0", "lr_warmup_steps=0", "augmentations_per_task=8", "translate=false", "leave_one_out=false",
        f"dynamic_canvas={str(dynamic).lower()}", "tracker=none", "progress=false", "device=cpu", "run_name=speed"])
    return Trainer(config, Runtime(torch.device("cpu")))


def reference_step(reference_dir: Path, size: dict, num_puzzles: int, lr: float, weight_decay: float,
                   puzzle_lr: float, puzzle_weight_decay: float):
    """The reference's model, loss head and optimisers; returns step(batch) as its train_batch runs it."""
    import torch

    sys.path.insert(0, str(reference_dir))
    from models.losses import ACTLossHead
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    model = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(dict(
        batch_size=size["batch"], seq_len=size["canvas"] ** 2, puzzle_emb_ndim=size["hidden"],
        num_puzzle_identifiers=num_puzzles, vocab_size=12, H_cycles=size["h_cycles"], L_cycles=size["l_cycles"],
        H_layers=0, L_layers=2, hidden_size=size["hidden"], expansion=4, num_heads=size["heads"],
        pos_encodings="rope", halt_max_steps=1, halt_exploration_prob=0.1, forward_dtype="float32",
        puzzle_emb_len=16, mlp_t=False, no_ACT_continue=True)), loss_type="stablemax_cross_entropy")
    model.train()
    optimisers = [
        CastedSparseEmbeddingSignSGD_Distributed(model.model.puzzle_emb.buffers(), lr=puzzle_lr,
                                                 weight_decay=puzzle_weight_decay, world_size=1),
        torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.95)),
    ]
    state = {"carry": None}

    def step(batch: dict) -> None:
        if state["carry"] is None:
            state["carry"] = model.initial_carry(batch)
        state["carry"], loss, _, _, _ = model(carry=state["carry"], batch=batch, return_keys=[])
        ((1 / size["batch"]) * loss).backward()
        for optimiser in optimisers:
            optimiser.step()
            optimiser.zero_grad()

    return step


def measure(name: str, size: dict, args: argparse.Namespace) -> dict:
    from etrm.bench import alternating_rounds
    from etrm.data.tensors import to_torch

    fixed, dynamic = project_trainer(size, False), project_trainer(size, True)
    config = fixed.config
    num_puzzles = fixed.model.context_source.table.weight.shape[0]
    reference = reference_step(args.trm_reference, size, num_puzzles, config.lr, config.weight_decay,
                               config.puzzle_emb_lr, config.puzzle_emb_weight_decay)
    keys = ("inputs", "labels", "puzzle_identifiers")

    def reference_batch(step: int) -> dict:
        batch = to_torch(fixed.sampler.batch(step, size["batch"]))
        return {key: batch[key] for key in keys}

    # Each arm builds step `step`'s batch untimed and times its training step on it.
    arms = {"reference": lambda step: partial(reference, reference_batch(step)),
            "fixed": lambda step: partial(fixed.train_step, to_torch(fixed.sampler.batch(step, size["batch"]))),
            "size-aware": lambda step: partial(dynamic.train_step,
                                               to_torch(dynamic.sampler.batch(step, size["batch"])))}
    measured = alternating_rounds(
        arms, args.rounds, args.steps, warmup=1,
        after_round=lambda r, m: print(name, r, {arm: f"{s:.3f}" for arm, s in m.medians().items()}, flush=True))
    # Mean seconds too: a size-aware step's cost varies with its batch's square.
    return {"size": size, "median_s": measured.medians(), "mean_s": measured.means(),
            "steps": {arm: len(s) for arm, s in measured.seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trm-reference", type=Path, required=True, help="a checkout of TinyRecursiveModels")
    parser.add_argument("--sizes", nargs="*", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm and round")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not (args.trm_reference / "models" / "recursive_reasoning" / "trm.py").is_file():
        parser.error(f"{args.trm_reference}: not a TinyRecursiveModels checkout (no models/recursive_reasoning/trm.py)")
    import torch

    torch.set_num_threads(args.threads)
    results = {name: measure(name, SIZES[name], args) for name in args.sizes}
    rows = ["| size | arm | median s / step | mean s / step | samples/s (mean) | against the reference |",
            "|---|---|---|---|---|---|"]
    for name, result in results.items():
        for arm in ARMS:
            mean = result["mean_s"][arm]
            rows.append(f"| {name} | {arm} | {result['median_s'][arm]:.3f} | {mean:.3f} | "
                        f"{result['size']['batch'] / mean:.1f} | {result['mean_s']['reference'] / mean:.2f}x |")
    sizes = "; ".join(f"{name}: hidden {s['hidden']}, H{s['h_cycles']} x L{s['l_cycles']}, canvas {s['canvas']}, "
                      f"batch {s['batch']}" for name, s in SIZES.items() if name in results)
    write_section("vs_reference", f"""## TRM training step against the reference (`benchmarks/vs_reference.py`)

Machine: {machine()}; {args.threads} torch thread(s), nothing else running. The reference's code
imported from a checkout of TinyRecursiveModels; same architecture, batches (ARC-AGI-1 training
tasks, 8 augmentations each), float32, AdamW + sign-SGD on the puzzle embedding on both sides,
no EMA, no clipping (the norm still taken here), one ACT step per batch; {args.rounds} alternating
rounds of {args.steps} steps per arm. Sizes: {sizes}. "Against the reference": its mean
seconds per step over the arm's (above 1: faster).

{chr(10).join(rows)}
""")


if __name__ == "__main__":
    main()
