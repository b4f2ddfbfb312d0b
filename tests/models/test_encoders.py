"""Properties every demonstration encoder must have (tiny sizes: hidden 32, 2 heads, 6x6 canvas).

Shape and scale; invariance to demo order, to padded demo slots and to extra PAD cells; every
parameter trained through the ACT loss; the recurrent encoder trained on a step where no sample
was reset (the earlier ETRM-squared detached its output: facts 6.2); the variational KL; eval
determinism and training noise.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from etrm.cli import main
from etrm.core.config import EncoderConfig, ineffective_settings, load_config, run_directory
from etrm.data.encoding import PAD, encode_grid
from etrm.models import act_loss
from etrm.models.build import build_model
from etrm.models.encoders import ENCODERS, build_encoder, gaussian_kl
from etrm.models.encoders.blocks import PreNormBlock
from etrm.models.encoders.common import PairTransformer
from etrm.models.layers import PostNormBlock, rms_norm

CANVAS = 6
SEQ_LEN = CANVAS * CANVAS
CONTEXT_LEN = 4
DECODER_HIDDEN = 24  # differs from the encoder's 32, so a mix-up of the two widths fails
VOCAB = 12

# (id, encoder.type, extra EncoderConfig fields): every kind with parameters, and variants.
KINDS = [
    ("standard", "standard", {}),
    ("variational", "variational", {}),
    ("lpn", "lpn", {}),
    ("lpn-variational", "lpn", {"variational": True}),
    ("hybrid", "hybrid", {}),
    ("hybrid-variational", "hybrid", {"variational": True}),
    ("cross_demo", "cross_demo", {}),
    ("set_transformer", "set_transformer", {}),
    ("hierarchical", "hierarchical", {}),
    ("recurrent", "recurrent", {}),
    ("cell_slots", "cell_slots", {}),
    ("cell_slots-raw", "cell_slots", {"num_layers": 0}),
]
VARIATIONAL = {"variational", "lpn-variational", "hybrid-variational"}
KIND_IDS = [kind[0] for kind in KINDS]
KIND_BY_ID = {kind[0]: kind for kind in KINDS}


def tiny_encoder(kind_id: str, seed: int = 0, **fields) -> torch.nn.Module:
    _, encoder_type, extra = KIND_BY_ID[kind_id]
    config = EncoderConfig(**{"type": encoder_type, "hidden_size": 32, "num_heads": 2, "expansion": 2.0,
                              "num_layers": 2, "num_inducing": 3, **extra, **fields})
    torch.manual_seed(seed)
    return build_encoder(config, DECODER_HIDDEN, CONTEXT_LEN, SEQ_LEN, VOCAB)


def random_grid(rng: np.random.Generator, max_side: int = 4) -> np.ndarray:
    """A random colour grid encoded on the canvas at a random offset (with its EOS border)."""
    height, width = rng.integers(1, max_side + 1, size=2)
    row, col = rng.integers(0, CANVAS - height + 1), rng.integers(0, CANVAS - width + 1)
    return encode_grid(rng.integers(0, 10, size=(height, width)), CANVAS, int(row), int(col))


def demo_batch(num_demos: list[int], seed: int, width: int | None = None, max_side: int = 4):
    """demo_inputs, demo_outputs (B, width, L) and demo_mask (B, width): sample b has num_demos[b]
    real demos first; padded slots hold PAD."""
    rng = np.random.default_rng(seed)
    width = width or max(num_demos)
    inputs = np.zeros((len(num_demos), width, SEQ_LEN), dtype=np.int64)
    outputs = np.zeros_like(inputs)
    mask = np.zeros((len(num_demos), width), dtype=bool)
    for b, count in enumerate(num_demos):
        for d in range(count):
            inputs[b, d], outputs[b, d] = random_grid(rng, max_side), random_grid(rng, max_side)
            mask[b, d] = True
    return torch.from_numpy(inputs), torch.from_numpy(outputs), torch.from_numpy(mask)


def encode(encoder, demos) -> tuple[torch.Tensor, torch.Tensor | None]:
    output = encoder.encode(*demos)
    return output.context, output.auxiliary_loss


@pytest.mark.parametrize("kind", KIND_IDS)
def test_output_shape_and_token_scale(kind):
    encoder = tiny_encoder(kind).eval()
    context, auxiliary = encode(encoder, demo_batch([3, 1, 2], seed=0))
    assert context.shape == (3, CONTEXT_LEN, DECODER_HIDDEN)
    assert torch.isfinite(context).all()
    # match_token_scale: each context vector has the RMS of a token embedding, 1/sqrt(hidden).
    rms = context.square().mean(-1).sqrt() * DECODER_HIDDEN**0.5
    torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-3, rtol=0)
    if kind in VARIATIONAL:
        assert auxiliary.shape == (3,) and (auxiliary >= 0).all()
    else:
        assert auxiliary is None


@pytest.mark.parametrize("kind", KIND_IDS)
def test_invariant_to_demo_order(kind):
    encoder = tiny_encoder(kind).eval()
    demo_inputs, demo_outputs, demo_mask = demo_batch([4, 3, 2], seed=1, width=5)
    with torch.no_grad():
        expected, expected_aux = encode(encoder, (demo_inputs, demo_outputs, demo_mask))
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):  # a different order per sample, padded slots moved among the real ones
            order = torch.stack([torch.randperm(5, generator=generator) for _ in range(3)])
            permuted = (demo_inputs.gather(1, order[..., None].expand_as(demo_inputs)),
                        demo_outputs.gather(1, order[..., None].expand_as(demo_outputs)),
                        demo_mask.gather(1, order))
            context, auxiliary = encode(encoder, permuted)
            torch.testing.assert_close(context, expected, atol=1e-5, rtol=0)
            if expected_aux is not None:
                torch.testing.assert_close(auxiliary, expected_aux, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_padded_demo_slots_change_nothing(kind):
    encoder = tiny_encoder(kind).eval()
    demo_inputs, demo_outputs, demo_mask = demo_batch([3, 1], seed=2)
    # Two more slots per sample, masked out, holding real-looking grids: they must be ignored.
    junk_inputs, junk_outputs, _ = demo_batch([2, 2], seed=3)
    padded = (torch.cat((demo_inputs, junk_inputs), 1), torch.cat((demo_outputs, junk_outputs), 1),
              torch.cat((demo_mask, torch.zeros(2, 2, dtype=torch.bool)), 1))
    with torch.no_grad():
        expected, expected_aux = encode(encoder, (demo_inputs, demo_outputs, demo_mask))
        context, auxiliary = encode(encoder, padded)
    torch.testing.assert_close(context, expected, atol=1e-5, rtol=0)
    if expected_aux is not None:
        torch.testing.assert_close(auxiliary, expected_aux, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", KIND_IDS)
def test_extra_pad_cells_change_nothing(kind):
    """A sample's grids are cropped to their real cells and padded to the batch's largest demo:
    beside a batch-mate with large grids (and more demo slots) they carry many more PAD cells,
    which must not change the sample's context."""
    encoder = tiny_encoder(kind).eval()
    small = demo_batch([2], seed=4, max_side=2)
    large = demo_batch([4], seed=5, max_side=5)
    together = (torch.cat((torch.nn.functional.pad(small[0], (0, 0, 0, 2)), large[0])),
                torch.cat((torch.nn.functional.pad(small[1], (0, 0, 0, 2)), large[1])),
                torch.cat((torch.nn.functional.pad(small[2], (0, 2)), large[2])))
    assert (small[0] != PAD).sum(-1).max() < (large[0] != PAD).sum(-1).max()
    with torch.no_grad():
        alone, alone_aux = encode(encoder, small)
        joint, joint_aux = encode(encoder, together)
    torch.testing.assert_close(joint[:1], alone, atol=1e-5, rtol=0)
    if alone_aux is not None:
        torch.testing.assert_close(joint_aux[:1], alone_aux, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls_token, pre_norm", [(False, False), (True, False), (True, True)])
def test_cropped_pair_transformer_equals_masking_the_full_sequence(cls_token, pre_norm):
    torch.manual_seed(0)
    pair = PairTransformer(32, 2, 2.0, 2, SEQ_LEN, VOCAB, cls_token=cls_token, pre_norm=pre_norm)
    demo_inputs, demo_outputs, _ = demo_batch([3], seed=6)
    grid_in, grid_out = demo_inputs[0], demo_outputs[0]
    with torch.no_grad():
        cropped, crop_mask = pair(grid_in, grid_out)
        # Reference: all 2L cells, PAD cells masked as keys.
        tokens = torch.cat((grid_in, grid_out), 1)
        is_output = (torch.arange(2 * SEQ_LEN) >= SEQ_LEN)[None, :, None]
        x = pair.scale * torch.where(is_output, pair.output_embed(tokens), pair.input_embed(tokens))
        cos, sin = pair.rotary(2 * SEQ_LEN)
        mask = tokens != PAD
        if cls_token:
            x = torch.cat((pair.cls.expand(3, 1, -1), x), 1)
            cos, sin = torch.cat((cos[:1], cos)), torch.cat((sin[:1], sin))
            mask = torch.cat((torch.ones(3, 1, dtype=torch.bool), mask), 1)
        for layer in pair.layers:
            assert isinstance(layer, PreNormBlock if pre_norm else PostNormBlock)
            x = layer(x, (cos, sin), mask)
        if pre_norm:
            x = rms_norm(x, 1e-5)
    torch.testing.assert_close(cropped[crop_mask], x[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls_token", [False, True])
def test_length_groups_give_the_states_of_one_padded_group(cls_token, monkeypatch):
    # Demos of very different sizes run through the layers in groups of similar length: the
    # states (and their gradients) equal those of padding every demo to the longest.
    torch.manual_seed(0)
    pair = PairTransformer(32, 2, 2.0, 2, SEQ_LEN, VOCAB, cls_token=cls_token)
    demo_inputs, demo_outputs, _ = demo_batch([9], seed=3, max_side=5)
    grid_in, grid_out = demo_inputs[0], demo_outputs[0]
    lengths = ((grid_in != PAD).sum(1) + (grid_out != PAD).sum(1)).tolist()
    assert len(set(lengths)) > 4  # the groups really differ in length
    grouped, mask = pair(grid_in, grid_out)
    grouped_grads = torch.autograd.grad(grouped[mask].square().sum(), list(pair.parameters()))
    monkeypatch.setattr(PairTransformer, "LENGTH_GROUPS", 1)
    single, single_mask = pair(grid_in, grid_out)
    single_grads = torch.autograd.grad(single[mask].square().sum(), list(pair.parameters()))
    assert torch.equal(mask, single_mask)
    torch.testing.assert_close(grouped[mask], single[mask], atol=1e-5, rtol=0)
    for a, b in zip(grouped_grads, single_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention", "cls"])
def test_standard_pooling_modes(pooling):
    encoder = tiny_encoder("standard", pooling=pooling)
    assert (encoder.demos.pair.cls is not None) == (pooling == "cls")
    demos = demo_batch([3, 2], seed=7, width=4)
    encoder.eval()
    with torch.no_grad():
        expected = encoder(*demos)
        flipped = tuple(t.flip(1) for t in demos)
        torch.testing.assert_close(encoder(*flipped), expected, atol=1e-5, rtol=0)
    encoder.train()
    weights = torch.randn(2, CONTEXT_LEN, DECODER_HIDDEN, generator=torch.Generator().manual_seed(0))
    (encoder(*demos) * weights).sum().backward()
    for name, parameter in encoder.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", KIND_IDS)
def test_eval_is_deterministic_and_variational_training_is_stochastic(kind):
    encoder = tiny_encoder(kind)
    demos = demo_batch([2, 3], seed=8)
    with torch.no_grad():
        encoder.eval()
        torch.testing.assert_close(encoder(*demos), encoder(*demos), atol=0, rtol=0)
        encoder.train()
        first, second = encoder(*demos), encoder(*demos)
    if kind in VARIATIONAL:
        assert (first - second).abs().max() > 1e-4
    else:
        torch.testing.assert_close(first, second, atol=0, rtol=0)


def test_gaussian_kl_is_zero_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 8)
    assert torch.equal(gaussian_kl(zeros, zeros), torch.zeros(3))
    assert (gaussian_kl(zeros + 0.3, zeros) > 0).all()
    assert (gaussian_kl(zeros, zeros - 0.5) > 0).all()
    assert (gaussian_kl(zeros, zeros + 0.5) > 0).all()
    # 0.5 * (mu^2 + sigma^2 - 1 - log sigma^2), summed over the latent dimensions.
    torch.testing.assert_close(gaussian_kl(torch.ones(1, 4), torch.zeros(1, 4)), torch.tensor([2.0]))


@pytest.mark.parametrize("kind", sorted(VARIATIONAL))
def test_auxiliary_loss_is_the_weighted_per_sample_kl(kind):
    encoder = tiny_encoder(kind, kl_weight=0.25).train()
    demos = demo_batch([3, 1, 2], seed=9)
    weighted = encoder.encode(*demos).auxiliary_loss
    unweighted = tiny_encoder(kind, kl_weight=1.0).train()
    unweighted_loss = unweighted.encode(*demos).auxiliary_loss  # same seed, same weights: same mu and logvar
    assert weighted.shape == (3,) and (weighted > 0).all()
    torch.testing.assert_close(weighted, 0.25 * unweighted_loss)


# ---- through the ACT model, as training runs it -------------------------------------------

def _act_overrides(kind_id: str) -> list[str]:
    _, encoder_type, extra = KIND_BY_ID[kind_id]
    return [
        "preset=overfit-cpu", f"canvas_side={CANVAS}", "model.hidden_size=32", "model.num_heads=2",
        f"model.context_len={CONTEXT_LEN}", "encoder.hidden_size=32", "encoder.num_heads=2",
        "encoder.num_layers=1", "encoder.expansion=2.0", "encoder.num_inducing=3", "halt_max_steps=4",
        f"encoder.type={encoder_type}", *(f"encoder.{key}={str(value).lower()}" for key, value in extra.items()),
    ]


def act_config(kind_id: str):
    return load_config(_act_overrides(kind_id))


def act_batch(num_demos: list[int], seed: int) -> dict[str, torch.Tensor]:
    demo_inputs, demo_outputs, demo_mask = demo_batch(num_demos, seed)
    rng = np.random.default_rng(seed + 100)
    inputs = torch.from_numpy(np.stack([random_grid(rng) for _ in num_demos]).astype(np.int64))
    labels = torch.from_numpy(np.stack([random_grid(rng) for _ in num_demos]).astype(np.int64))
    labels = labels.masked_fill(labels == PAD, -100)
    return {"inputs": inputs, "labels": labels, "demo_inputs": demo_inputs, "demo_outputs": demo_outputs,
            "demo_mask": demo_mask}


def act_step(model, carry, batch):
    carry, outputs = model(carry, batch)
    loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted)
    return carry, outputs, loss


def assert_every_encoder_parameter_trained(model):
    parameters = dict(model.context_source.named_parameters())
    assert parameters and all(name.startswith("encoder.") for name in parameters)
    for name, parameter in parameters.items():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("kind", KIND_IDS)
def test_every_encoder_parameter_gets_a_gradient_through_the_act_loss(kind):
    torch.manual_seed(0)
    model = build_model(act_config(kind)).train()
    batch = act_batch([3, 1, 2, 2], seed=10)
    _, outputs, loss = act_step(model, model.initial_carry(batch), batch)
    assert ("auxiliary_loss" in outputs) == (kind in VARIATIONAL)
    loss.backward()
    assert_every_encoder_parameter_trained(model)


def test_recurrent_encoder_is_trained_on_a_step_without_resets():
    torch.manual_seed(0)
    model = build_model(act_config("recurrent")).train()
    batch = act_batch([3, 1, 2, 2], seed=11)
    carry = model.initial_carry(batch)
    assert carry.context_state.shape == (4, CONTEXT_LEN, 32)
    carry, _, loss = act_step(model, carry, batch)
    assert not carry.halted.any()  # q_halt starts at -5: nobody halts after one of 4 steps
    first_state = carry.context_state
    assert first_state is not None and not first_state.requires_grad

    model.zero_grad()
    carry, _, loss = act_step(model, carry, batch)  # no slot is reset: z_E comes from the carry
    loss.backward()
    assert_every_encoder_parameter_trained(model)
    assert not torch.allclose(carry.context_state, first_state)  # z_E was refined, not restarted


def test_recurrent_step_resets_exactly_the_marked_samples():
    encoder = tiny_encoder("recurrent").eval()
    demos = demo_batch([2, 3, 1], seed=12)
    with torch.no_grad():
        state = encoder.initial_state(3, torch.device("cpu"))
        assert torch.equal(state, encoder.E_init.expand(3, -1, -1))
        fresh_context, state, _ = encoder.encode(*demos, state, torch.ones(3, dtype=torch.bool))
        torch.testing.assert_close(fresh_context, encoder(*demos), atol=0, rtol=0)
        _, refined, _ = encoder.encode(*demos, state, torch.zeros(3, dtype=torch.bool))
        context, mixed, _ = encoder.encode(*demos, refined, torch.tensor([True, False, True]))
    torch.testing.assert_close(context[[0, 2]], fresh_context[[0, 2]], atol=1e-6, rtol=0)
    torch.testing.assert_close(mixed[[0, 2]], state[[0, 2]], atol=1e-6, rtol=0)
    assert not torch.allclose(mixed[1], state[1])


def test_recurrent_cycles_only_the_last_builds_a_graph():
    # h_cycles=3 costs the gradient graph of one cycle: its parameters still get gradients.
    encoder = tiny_encoder("recurrent", h_cycles=3, l_cycles=1).train()
    demos = demo_batch([2, 2], seed=13)
    encoder(*demos).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_evaluation_refines_the_recurrent_context_at_every_step():
    torch.manual_seed(0)
    model = build_model(act_config("recurrent")).eval()
    batch = act_batch([2, 3], seed=14)
    out = model.run_fixed_steps(batch, num_steps=3)
    assert out["logits"].shape == (2, SEQ_LEN, VOCAB) and torch.isfinite(out["logits"]).all()


def test_every_type_is_registered():
    assert set(ENCODERS) >= {kind[1] for kind in KINDS}


# ---- presets and the parameter report ------------------------------------------------------

# Each preset of the research queue: (its base, the keys it claims to vary, with their values).
QUEUE_PRESETS = {
    "trm-overfit-cpu": ("overfit-cpu", {"model_type": "trm"}),
    "enc-standard": ("overfit-cpu", {"encoder.type": "standard",
                                     "load_pretrained_decoder": "runs/etrm/trm-overfit-cpu"}),
    "enc-standard-from-scratch": ("enc-standard", {"load_pretrained_decoder": ""}),
    "enc-variational": ("overfit-cpu", {"encoder.type": "variational"}),
    "enc-lpn": ("overfit-cpu", {"encoder.type": "lpn", "encoder.variational": False}),
    "enc-lpn-variational": ("overfit-cpu", {"encoder.type": "lpn", "encoder.variational": True}),
    "enc-hybrid": ("overfit-cpu", {"encoder.type": "hybrid"}),
    "enc-recurrent": ("overfit-cpu", {"encoder.type": "recurrent"}),
    "enc-cross-demo": ("overfit-cpu", {"encoder.type": "cross_demo"}),
    "enc-set-transformer": ("overfit-cpu", {"encoder.type": "set_transformer"}),
    "enc-hierarchical": ("overfit-cpu", {"encoder.type": "hierarchical"}),
    "enc-deep": ("overfit-cpu", {"encoder.num_layers": 4}),
    "enc-wide": ("overfit-cpu", {"encoder.hidden_size": 256}),
    "pool-max": ("overfit-cpu", {"encoder.pooling": "max"}),
    "pool-attention": ("overfit-cpu", {"encoder.pooling": "attention"}),
    "pool-cls": ("overfit-cpu", {"encoder.pooling": "cls"}),
    "halt-max-4": ("overfit-cpu", {"halt_max_steps": 4}),
    "halt-explore-0.0": ("halt-max-4", {"halt_exploration_prob": 0.0}),
    "halt-explore-0.3": ("halt-max-4", {"halt_exploration_prob": 0.3}),
    "halt-explore-0.5": ("halt-max-4", {"halt_exploration_prob": 0.5}),
    "halt-explore-0.7": ("halt-max-4", {"halt_exploration_prob": 0.7}),
    "halt-max-8": ("overfit-cpu", {"halt_max_steps": 8}),
    "halt-max-16": ("overfit-cpu", {"halt_max_steps": 16}),
    "halt-max-32": ("overfit-cpu", {"halt_max_steps": 32}),
}


def _flat(config) -> dict:
    def walk(node: dict, prefix: str) -> dict:
        out = {}
        for key, value in node.items():
            out.update(walk(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
        return out

    return walk(dataclasses.asdict(config), "")


@pytest.mark.parametrize("preset", sorted(QUEUE_PRESETS))
def test_every_queue_preset_changes_what_trains_from_its_base(preset):
    # What the preset claims to vary differs from its base, has an effect in the resolved config
    # (exploration at one ACT step would not), and nothing else differs.
    base_name, claimed = QUEUE_PRESETS[preset]
    resolved = load_config([f"preset={preset}"])
    config, base = _flat(resolved), _flat(load_config([f"preset={base_name}"]))
    for key, value in claimed.items():
        assert config[key] == value, key
    assert any(config[key] != base[key] for key in claimed), f"{preset} equals {base_name} on what it varies"
    ineffective = {line.split("=")[0] for line in ineffective_settings(resolved)}
    assert not ineffective & set(claimed), f"{preset}: {sorted(ineffective & set(claimed))} change nothing"
    own = {*claimed, "preset", "run_name"}
    differing = {key for key in base if config[key] != base[key]} - own
    assert not differing, f"{preset} differs from {base_name} in {sorted(differing)}"


def test_the_standard_encoder_s_pretrained_decoder_is_the_queue_s_trm_run():
    # enc-standard loads the decoder that `etrm train preset=trm-overfit-cpu` writes: the same
    # tasks and settings, a TRM (as the research guide pretrains it); without it, a one-line error.
    trm, standard = load_config(["preset=trm-overfit-cpu"]), load_config(["preset=enc-standard"])
    assert str(run_directory(trm)) == standard.load_pretrained_decoder
    assert trm.model_type == "trm" and standard.model_type == "etrm"


def test_a_missing_pretrained_decoder_is_a_one_line_error_saying_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "preset=enc-standard", f"run_dir={tmp_path / 'run'}", "max_steps=1"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "runs/etrm/trm-overfit-cpu" in error and "trained first" in error


def test_settings_with_no_effect_are_reported_when_a_run_starts(tmp_path, capsys):
    # overfit-cpu's exploration at its one ACT step and a TRM's encoder knobs change nothing.
    assert "halt_exploration_prob=0.1" in " ".join(ineffective_settings(load_config(["preset=overfit-cpu"])))
    assert ineffective_settings(load_config(["preset=halt-explore-0.3"])) == [
        line for line in ineffective_settings(load_config(["preset=halt-explore-0.3"])) if "halt_" not in line]
    trm = ineffective_settings(load_config(["preset=trm-overfit-cpu"]))
    assert any(line.startswith("encoder.hidden_size=64") for line in trm)
    assert not ineffective_settings(load_config(["preset=default"]))
    assert main(["train", "preset=overfit-cpu", f"run_dir={tmp_path / 'run'}", "max_steps=1", "final_eval=false",
                 "tracker=none", "progress=false", "max_train_groups=2", "max_eval_groups=1"]) == 0
    assert "no effect in this run: halt_exploration_prob=0.1" in capsys.readouterr().out


def test_model_info_reports_parameter_counts(capsys):
    tiny = ["preset=overfit-cpu", "model.hidden_size=32", "model.num_heads=2", "encoder.hidden_size=32",
            "encoder.num_heads=2", "encoder.type=lpn"]
    assert main(["model", "info", *tiny, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model = build_model(load_config(tiny))
    assert info["decoder_parameters"] == sum(p.numel() for p in model.decoder.parameters())
    assert info["encoder_parameters"] == sum(p.numel() for p in model.context_source.parameters())
    assert info["total_parameters"] == info["decoder_parameters"] + info["encoder_parameters"]
    assert info["context"] == "encoder lpn"
    assert main(["model", "info", *tiny]) == 0
    assert "encoder_parameters" in capsys.readouterr().out
    assert main(["model", "info", "encoder.type=nonesuch"]) == 2


# ---- the front end's options: fused pair tokens, aligned positions ---------------------------

def test_aligned_positions_give_an_output_cell_its_input_cell_s_angle():
    pair = PairTransformer(32, 2, 2.0, 1, SEQ_LEN, VOCAB, aligned_positions=True)
    grids = demo_batch([1], seed=0)[0][0]
    _, _, angles = pair._tokens(grids, grids)
    for row, col in ((0, 0), (1, 2), (4, 3)):
        cell, transposed = row * CANVAS + col, col * CANVAS + row
        assert angles[SEQ_LEN + cell] == angles[cell]  # the output cell at (r, c) and the input cell at (r, c)
        assert (angles[SEQ_LEN + transposed] == angles[cell]) == (row == col)
    _, _, sequence = PairTransformer(32, 2, 2.0, 1, SEQ_LEN, VOCAB)._tokens(grids, grids)
    assert torch.equal(sequence, torch.arange(2 * SEQ_LEN))


def test_a_fused_token_is_its_input_plus_its_output_embedding_and_covers_both_grids():
    torch.manual_seed(0)
    pair = PairTransformer(32, 2, 2.0, 1, SEQ_LEN, VOCAB, fused_pairs=True)
    grid_in, grid_out, _ = demo_batch([2], seed=1)
    grid_in, grid_out = grid_in[0], grid_out[0]
    is_real, embed, angles = pair._tokens(grid_in, grid_out)
    assert torch.equal(is_real, (grid_in != PAD) | (grid_out != PAD)) and torch.equal(angles, torch.arange(SEQ_LEN))
    position = torch.arange(SEQ_LEN).expand(2, -1)
    torch.testing.assert_close(embed(position), pair.input_embed(grid_in) + pair.output_embed(grid_out))
    states, mask = pair(grid_in, grid_out)
    assert torch.equal(mask.sum(1), is_real.sum(1))


@pytest.mark.parametrize("front_end", [["encoder.pair_tokens=fused"], ["encoder.pair_positions=aligned"]])
@pytest.mark.parametrize("kind", ["standard", "lpn"])
def test_front_end_options_reach_the_encoder_and_train_every_parameter(kind, front_end):
    torch.manual_seed(0)
    config = load_config([*_act_overrides(kind), *front_end])
    model = build_model(config).train()
    pair = next(m for m in model.modules() if isinstance(m, PairTransformer))
    assert (pair.fused_pairs, pair.aligned_positions) == ("fused" in front_end[0], "aligned" in front_end[0])
    batch = act_batch([3, 1, 2, 2], seed=10)
    _, _, loss = act_step(model, model.initial_carry(batch), batch)
    loss.backward()
    assert_every_encoder_parameter_trained(model)
