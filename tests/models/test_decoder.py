"""The recursive decoder and the ACT bookkeeping around it."""

import dataclasses

import pytest
import torch

from etrm.models import ACTModel, DecoderConfig, PuzzleEmbedding, RecursiveDecoder
from etrm.models.decoder import REGION_GROUPS, Latents, merge_new_samples

TINY = dict(hidden_size=32, num_heads=2, expansion=2.0, num_layers=2, h_cycles=2, l_cycles=2,
            seq_len=9, context_len=2, vocab_size=12, halt_max_steps=3)
NUM_IDS = 6


def tiny_model(seed: int = 0, **overrides) -> ACTModel:
    torch.manual_seed(seed)
    config = DecoderConfig(**{**TINY, **overrides})
    context = PuzzleEmbedding(NUM_IDS, config.hidden_size, config.context_len, config.hidden_size)
    with torch.no_grad():
        context.table.weight.normal_()  # distinct contexts per puzzle (the real init is zeros)
    return ACTModel(context, RecursiveDecoder(config))


def tiny_batch(batch_size: int, seed: int, num_demos: int = 2) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    seq_len = TINY["seq_len"]
    return {
        "inputs": torch.randint(0, 12, (batch_size, seq_len), generator=generator),
        "labels": torch.randint(0, 12, (batch_size, seq_len), generator=generator),
        "puzzle_identifiers": torch.randint(0, NUM_IDS, (batch_size,), generator=generator),
        "demo_inputs": torch.randint(1, 12, (batch_size, num_demos, seq_len), generator=generator),
        "demo_mask": torch.ones(batch_size, num_demos, dtype=torch.bool),
    }


def set_halt_bias(model: ACTModel, bias: float) -> None:
    with torch.no_grad():
        model.decoder.q_head.bias.fill_(bias)  # q_head weight is zero: q_halt == bias everywhere


def test_arc_decoder_has_6_829_058_parameters():
    decoder = RecursiveDecoder(DecoderConfig(hidden_size=512, num_heads=8, num_layers=2, vocab_size=12))
    assert sum(p.numel() for p in decoder.parameters()) == 6_829_058
    assert {name for name, _ in decoder.named_buffers(recurse=False)} >= {"H_init", "L_init"}
    assert "H_init" in decoder.state_dict() and "rotary.cos" not in decoder.state_dict()


def test_merge_pads_demo_dimension_to_the_wider_batch():
    carried = tiny_batch(2, seed=1, num_demos=2)
    new = tiny_batch(2, seed=2, num_demos=4)
    merged = merge_new_samples(carried, new, take_new=torch.tensor([True, False]))
    assert merged["demo_inputs"].shape == (2, 4, TINY["seq_len"])
    assert torch.equal(merged["demo_inputs"][0], new["demo_inputs"][0])
    assert torch.equal(merged["demo_inputs"][1, :2], carried["demo_inputs"][1])
    assert merged["demo_inputs"][1, 2:].eq(0).all()
    assert merged["demo_mask"].tolist() == [[True] * 4, [True, True, False, False]]

    narrower = tiny_batch(2, seed=3, num_demos=1)
    merged = merge_new_samples(merged, narrower, take_new=torch.tensor([False, True]))
    assert merged["demo_mask"].tolist() == [[True] * 4, [True, False, False, False]]
    assert merged["demo_mask"].dtype == torch.bool


def test_merge_rejects_other_shape_differences_and_key_changes():
    carried, new = tiny_batch(2, seed=1), tiny_batch(2, seed=2)
    new["demo_inputs"] = new["demo_inputs"][:, :, :5]  # only dim 1 (the demo count) may differ
    with pytest.raises(ValueError, match="'demo_inputs'"):
        merge_new_samples(carried, new, take_new=torch.tensor([True, False]))
    del new["inputs"]
    with pytest.raises(ValueError, match="keys"):
        merge_new_samples(carried, new, take_new=torch.tensor([True, False]))


def test_act_forward_with_varying_number_of_demos():
    model = tiny_model()
    first = tiny_batch(2, seed=1, num_demos=3)
    carry, _ = model(model.initial_carry(first), first)
    carry = dataclasses.replace(carry, halted=torch.tensor([True, False]))
    carry, outputs = model(carry, tiny_batch(2, seed=2, num_demos=5))
    assert carry.current_data["demo_inputs"].shape[1] == 5
    assert carry.current_data["demo_mask"].sum(1).tolist() == [5, 3]
    assert outputs["logits"].shape == (2, TINY["seq_len"], 12)


def test_initial_carry_is_all_halted_with_zeros():
    model = tiny_model()
    carry = model.initial_carry(tiny_batch(3, seed=1))
    assert carry.halted.all() and carry.steps.dtype == torch.int32
    assert all(value.eq(0).all() for value in carry.current_data.values())
    assert carry.latents.z_H.eq(0).all() and carry.latents.z_L.eq(0).all()


def test_evaluation_runs_exactly_halt_max_steps():
    model = tiny_model().eval()
    set_halt_bias(model, 5.0)  # would halt at once in training
    batch = tiny_batch(2, seed=1)
    carry = model.initial_carry(batch)
    with torch.no_grad():
        for step in range(1, 2 * TINY["halt_max_steps"] + 1):
            carry, _ = model(carry, batch)
            assert carry.steps.tolist() == [(step - 1) % TINY["halt_max_steps"] + 1] * 2
            assert carry.halted.tolist() == [step % TINY["halt_max_steps"] == 0] * 2


@pytest.mark.parametrize("bias, halts_after", [(5.0, 1), (-5.0, TINY["halt_max_steps"])])
def test_training_halts_when_q_halt_is_positive(bias, halts_after):
    model = tiny_model(halt_exploration_prob=0.0).train()
    set_halt_bias(model, bias)
    batch = tiny_batch(2, seed=1)
    carry = model.initial_carry(batch)
    for step in range(1, halts_after + 1):
        carry, _ = model(carry, batch)
        assert carry.halted.tolist() == [step == halts_after] * 2


def test_exploration_draws_a_minimum_step_count():
    halt_max_steps = 4
    model = tiny_model(halt_max_steps=halt_max_steps, halt_exploration_prob=1.0, seq_len=4,
                       hidden_size=16, num_layers=1, h_cycles=1, l_cycles=1).train()
    set_halt_bias(model, 5.0)  # wants to halt at every step; exploration holds it back
    batch_size = 400
    generator = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(0, 12, (batch_size, 4), generator=generator),
             "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.long)}
    torch.manual_seed(0)
    carry = model.initial_carry(batch)
    first_halt = torch.zeros(batch_size, dtype=torch.int32)
    with torch.no_grad():
        for _ in range(halt_max_steps):
            carry, _ = model(carry, batch)
            newly = carry.halted & (first_halt == 0)
            first_halt[newly] = carry.steps[newly]
            carry = dataclasses.replace(carry, halted=torch.zeros_like(carry.halted))  # keep running
    counts = torch.bincount(first_halt.long(), minlength=halt_max_steps + 1).tolist()
    assert counts[0] == counts[1] == 0  # every sample halted, none before step 2
    assert all(count > batch_size // 6 for count in counts[2:])  # uniform over 2..halt_max_steps


def test_carried_samples_keep_their_data_and_halted_slots_take_the_new_batch():
    model = tiny_model().eval()
    first, second = tiny_batch(2, seed=1), tiny_batch(2, seed=2)
    with torch.no_grad():
        after_first, _ = model(model.initial_carry(first), first)
        # Slot 0 halted, slot 1 still runs: a new batch arrives.
        mixed, mixed_out = model(dataclasses.replace(after_first, halted=torch.tensor([True, False])), second)
        # References: slot 0 as a fresh start on `second`, slot 1 as a second step on `first`.
        _, fresh_out = model(model.initial_carry(second), second)
        _, continued_out = model(after_first, first)

    for key in first:
        assert torch.equal(mixed.current_data[key][0], second[key][0]), key
        assert torch.equal(mixed.current_data[key][1], first[key][1]), key  # labels included
    assert mixed.steps.tolist() == [1, 2]
    torch.testing.assert_close(mixed_out["logits"][0], fresh_out["logits"][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed_out["logits"][1], continued_out["logits"][1], atol=1e-5, rtol=1e-5)


def test_batched_act_equals_per_sample_act():
    model = tiny_model().eval()
    batch = tiny_batch(3, seed=4)
    with torch.no_grad():
        carry = model.initial_carry(batch)
        batched = []
        for _ in range(2):
            carry, outputs = model(carry, batch)
            batched.append(outputs)
        for i in range(3):
            sample = {key: value[i : i + 1] for key, value in batch.items()}
            carry = model.initial_carry(sample)
            for step in range(2):
                carry, outputs = model(carry, sample)
                for key, value in outputs.items():
                    torch.testing.assert_close(value, batched[step][key][i : i + 1], atol=1e-5, rtol=1e-5)


def test_carry_is_detached_and_gradients_reach_decoder_and_context():
    model = tiny_model().train()
    batch = tiny_batch(2, seed=1)
    carry, outputs = model(model.initial_carry(batch), batch)
    assert not carry.latents.z_H.requires_grad and not carry.latents.z_L.requires_grad
    (outputs["logits"].sum() + outputs["q_halt_logits"].sum()).backward()
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert model.context_source.table.weight.grad is not None


# ---------------------------------------------------------------- size-aware canvas (region_side)
CANVAS = 5


def _region_model(seed: int = 0, **overrides) -> ACTModel:
    return tiny_model(seed, seq_len=CANVAS * CANVAS, **overrides)


def _region_batch(regions: list[int], seed: int) -> dict[str, torch.Tensor]:
    """Random tokens inside each sample's region, PAD outside (as the data layer writes them)."""
    generator = torch.Generator().manual_seed(seed)
    size = len(regions)
    grid = torch.randint(2, 12, (size, CANVAS, CANVAS), generator=generator)
    ticks = torch.arange(CANVAS)
    region = torch.tensor(regions)
    inside = (ticks[None, :, None] < region[:, None, None]) & (ticks[None, None, :] < region[:, None, None])
    return {"inputs": (grid * inside).reshape(size, -1),
            "puzzle_identifiers": torch.randint(0, NUM_IDS, (size,), generator=generator),
            "region_side": region}


def _run_decoder(model: ACTModel, batch: dict[str, torch.Tensor], region: bool, steps: int = 2):
    context = model.context_source(batch)
    size = batch["inputs"].shape[0]
    latents = model.decoder.reset_latents(model.decoder.initial_latents(size), torch.ones(size, dtype=torch.bool))
    for _ in range(steps):
        latents, logits, q_halt, _ = model.decoder(latents, batch["inputs"], context,
                                                   batch["region_side"] if region else None)
    return latents, logits, q_halt


def test_regions_filling_the_canvas_compute_what_the_fixed_canvas_does():
    model = _region_model()
    batch = _region_batch([CANVAS] * 3, seed=1)
    fixed, regions = _run_decoder(model, batch, region=False), _run_decoder(model, batch, region=True)
    for a, b in zip(fixed[0], regions[0], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regions[1], fixed[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regions[2], fixed[2], rtol=1e-5, atol=1e-5)


def test_a_sample_computes_the_same_whatever_its_batch_mates():
    # Alone, its batch runs on its own 2x2 square; beside a full-canvas sample, on the whole
    # canvas: the keys beyond its region are masked, so logits, halting and latents agree.
    model = _region_model()
    pair = _region_batch([2, CANVAS], seed=2)
    alone = {key: value[:1] for key, value in pair.items()}
    (z_pair, _), logits_pair, q_pair = _run_decoder(model, pair, region=True)
    (z_alone, _), logits_alone, q_alone = _run_decoder(model, alone, region=True)
    torch.testing.assert_close(logits_pair[:1], logits_alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q_pair[:1], q_alone, rtol=1e-5, atol=1e-5)
    cells = [0, 1, CANVAS, CANVAS + 1]  # the 2x2 region's cells on the full canvas
    positions = list(range(TINY["context_len"])) + [TINY["context_len"] + c for c in cells]
    torch.testing.assert_close(z_pair[:1, positions], z_alone[:, positions], rtol=1e-5, atol=1e-5)
    # ... and it differs from the fixed canvas, where the PAD cells beyond its grid are keys.
    assert not torch.allclose(_run_decoder(model, alone, region=False)[1][:, cells], logits_alone[:, cells])


def test_logits_beyond_a_region_are_zero_and_gradients_reach_every_weight():
    model = _region_model()
    batch = _region_batch([3, 2], seed=3)
    _, logits, q_halt = _run_decoder(model, batch, region=True, steps=1)
    canvas = logits.view(2, CANVAS, CANVAS, -1)
    assert canvas[0, 3:].eq(0).all() and canvas[0, :, 3:].eq(0).all() and canvas[1, 2:].eq(0).all()
    assert canvas[0, :3, :3].ne(0).any(dim=-1).all()
    (logits.square().sum() + q_halt.sum()).backward()
    assert all(p.grad is not None for p in model.decoder.parameters() if p.requires_grad)


def test_with_square_keys_a_sample_depends_on_its_batch_square():
    # dynamic_canvas_keys=square: the PAD cells of the batch's square are keys, as on the fixed
    # canvas, so beside a larger sample a sample computes what the fixed canvas would...
    model = _region_model(region_keys_only=False)
    pair = _region_batch([2, CANVAS], seed=2)
    alone = {key: value[:1] for key, value in pair.items()}
    cells = [0, 1, CANVAS, CANVAS + 1]
    beside = _run_decoder(model, pair, region=True)[1][:1, cells]
    torch.testing.assert_close(beside, _run_decoder(model, alone, region=False)[1][:, cells], rtol=1e-5, atol=1e-5)
    # ... and alone, on its own square, something else.
    assert not torch.allclose(beside, _run_decoder(model, alone, region=True)[1][:, cells])


# ------------------------------------------- size-aware canvas: groups of similar region
MIXED = [1, 2, 5, 3, 2, 4, 1, 5]  # region sides in batch order: the groups are not contiguous in it


def _region_positions(side: int) -> list[int]:
    """The context positions and a region's cells on the full canvas (what a sample's latents hold)."""
    return list(range(TINY["context_len"])) + [TINY["context_len"] + r * CANVAS + c
                                               for r in range(side) for c in range(side)]


def _grouped_and_one_square(model: ACTModel, batch: dict[str, torch.Tensor], steps: int = 2, layout=None):
    """(grouped, one square) results of `steps` decoder steps from fresh latents, with the
    gradients of the last step's logits and halting logits (a random weighting of each). In
    float64, where the two agree to rounding (~1e-14): a sample's masked keys contribute nothing,
    and in float32 the different square sizes only change the rounding (~1e-5)."""
    model.double()
    results = []
    for groups in (model.decoder.config.region_groups, 1):
        model.zero_grad()
        model.decoder.config.region_groups = groups
        context = model.context_source(batch)
        size = batch["inputs"].shape[0]
        latents = model.decoder.reset_latents(model.decoder.initial_latents(size), torch.ones(size, dtype=torch.bool))
        for _ in range(steps):
            latents, logits, q_halt, q_continue = model.decoder(latents, batch["inputs"], context,
                                                                batch.get("region_side"), layout)
        weights = torch.Generator().manual_seed(0)
        ((logits * torch.randn(logits.shape, generator=weights)).sum()
         + (q_halt * torch.randn(q_halt.shape, generator=weights)).sum()).backward()
        grads = {name: p.grad.to_dense() for name, p in model.named_parameters() if p.grad is not None}
        results.append((latents, logits.detach(), q_halt.detach(), q_continue.detach(), grads))
    model.decoder.config.region_groups = REGION_GROUPS
    return results


def _count_squares(model: ACTModel, monkeypatch) -> list[int]:
    squares: list[int] = []
    original = RecursiveDecoder._forward_on_square

    def recorded(self, *args, **kwargs):
        squares.append(args[5] if len(args) > 5 else kwargs["side"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RecursiveDecoder, "_forward_on_square", recorded)
    return squares


def _assert_same_per_sample(grouped, one_square, sides: list[int]) -> None:
    (latents_g, logits_g, halt_g, continue_g, grads_g), (latents_1, logits_1, halt_1, continue_1, grads_1) = (
        grouped, one_square)
    assert logits_g.dtype == torch.float64
    close = dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits_g, logits_1, **close)
    torch.testing.assert_close(halt_g, halt_1, **close)
    torch.testing.assert_close(continue_g, continue_1, **close)
    for row, side in enumerate(sides):  # a sample's latents: its context positions and its region
        positions = _region_positions(side)
        for grouped_z, one_z in zip(latents_g, latents_1, strict=True):
            torch.testing.assert_close(grouped_z[row, positions], one_z[row, positions], **close)
    assert grads_g.keys() == grads_1.keys() and grads_g
    for name, grad in grads_g.items():
        torch.testing.assert_close(grad, grads_1[name], **close, msg=name)


def test_region_groups_split_sorted_sides_where_it_saves_and_never_inside_a_side():
    from etrm.models.decoder import length_groups

    def region_groups(sides: list[int], max_groups: int, context_len: int, **sizes) -> list[int]:
        return length_groups([context_len + side * side for side in sides], max_groups, **sizes)

    sizes = dict(context_len=16, hidden_size=512, expansion=4.0)
    assert region_groups([5, 5, 5], 4, **sizes) == [3]  # one side: one square
    assert region_groups([3, 3, 8, 8, 12, 12, 16, 30], 4, **sizes) == [4, 6, 7, 8]  # the last ends each group
    assert region_groups([3, 3, 8, 8, 12, 12, 16, 30], 1, **sizes) == [8]
    assert region_groups([30, 30], 4, **sizes) == [2] and region_groups([], 4, **sizes) == []
    many = sorted([side for side in range(3, 31) for _ in range(30)])
    ends = region_groups(many, 4, **sizes)
    assert len(ends) == 4 and ends[-1] == len(many)
    assert all(many[end - 1] != many[end] for end in ends[:-1])  # equal sides stay together


@pytest.mark.parametrize("edges", [False, True])
def test_place_embedding_on_regions_computes_what_the_fixed_canvas_does(edges):
    # model.place_embedding (a cell's row and column as content, with place_grid_edges its
    # distances to its grid's far edges too): on a size-aware square each cell keeps its
    # full-canvas place and its grid, so regions filling the canvas compute what the fixed canvas
    # does; the embedding changes what is computed.
    placed = _region_model(place_embedding=True, place_grid_edges=edges)
    batch = _region_batch([CANVAS] * 3, seed=4)
    fixed, regions = _run_decoder(placed, batch, region=False), _run_decoder(placed, batch, region=True)
    torch.testing.assert_close(regions[1], fixed[1], rtol=1e-5, atol=1e-5)
    mixed = _region_batch([2, CANVAS, 3], seed=5)
    alone = {key: value[:1] for key, value in mixed.items()}
    torch.testing.assert_close(_run_decoder(placed, mixed, region=True)[1][:1],
                               _run_decoder(placed, alone, region=True)[1], rtol=1e-5, atol=1e-5)
    plain = _region_model()
    plain.load_state_dict(placed.state_dict(), strict=False)
    assert not torch.allclose(_run_decoder(plain, batch, region=False)[1], fixed[1], atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_groups_of_regions_compute_per_sample_what_one_square_does(seed, monkeypatch):
    # TRM's context (a learned vector block per puzzle): mixed sides in several groups, each on
    # its own square, against the whole batch on its largest square: logits, halting, the
    # latents of every sample's region and the weights' gradients agree.
    model = _region_model(seed)
    batch = _region_batch(MIXED, seed=seed + 10)
    squares = _count_squares(model, monkeypatch)
    grouped, one_square = _grouped_and_one_square(model, batch)
    assert len(set(squares[:2 * 4])) > 2 and squares[-1] == CANVAS  # the grouped steps ran several squares
    _assert_same_per_sample(grouped, one_square, MIXED)


def test_groups_of_regions_with_a_context_layout(monkeypatch):
    # The demos as the context (ETRM's demo_cells source): a key mask over the context positions
    # per sample, which each group takes its rows of.
    from etrm.models.decoder import ContextLayout

    model = _region_model(2)
    batch = _region_batch(MIXED, seed=12)
    key_mask = torch.rand(len(MIXED), TINY["context_len"], generator=torch.Generator().manual_seed(3)) > 0.3
    key_mask[:, 0] = True
    layout = ContextLayout(key_mask=key_mask, positions=torch.tensor([0, 5]))
    squares = _count_squares(model, monkeypatch)
    grouped, one_square = _grouped_and_one_square(model, batch, layout=layout)
    assert len(set(squares)) > 2
    _assert_same_per_sample(grouped, one_square, MIXED)


def test_a_batch_of_one_size_runs_one_square_and_computes_the_same(monkeypatch):
    model = _region_model(3)
    batch = _region_batch([3] * 4, seed=13)
    squares = _count_squares(model, monkeypatch)
    grouped, one_square = _grouped_and_one_square(model, batch)
    assert squares == [3] * 4  # two steps per arm, one square each
    (latents_g, *outputs_g, grads_g), (latents_1, *outputs_1, grads_1) = grouped, one_square
    for x, y in zip([*latents_g, *outputs_g, *grads_g.values()], [*latents_1, *outputs_1, *grads_1.values()],
                    strict=True):
        assert torch.equal(x, y)  # the same computation, bit for bit


def test_square_keys_run_one_square_whatever_the_sides(monkeypatch):
    # dynamic_canvas_keys=square: the PAD keys of the square are attended to, so grouping would
    # change the results; the batch runs on its largest square.
    model = _region_model(region_keys_only=False)
    squares = _count_squares(model, monkeypatch)
    _run_decoder(model, _region_batch(MIXED, seed=14), region=True)
    assert squares == [CANVAS, CANVAS]


# ------------------------------------------- a context with a key mask: only its keys run
def _keyed_layout(batch_size: int, context_len: int, seed: int):
    from etrm.models.decoder import ContextLayout

    generator = torch.Generator().manual_seed(seed)
    key_mask = torch.rand(batch_size, context_len, generator=generator) > 0.5
    key_mask[0, 0] = False  # position 0 (where halting reads) need not be a key
    key_mask[1] = False
    key_mask[1, 3] = True  # a sample of one key
    positions = torch.randperm(context_len, generator=generator) * 2  # any rotary angles
    places = torch.randint(0, CANVAS * CANVAS, (context_len,), generator=generator)
    edges = torch.randint(0, CANVAS + 1, (batch_size, context_len, 2), generator=generator)
    return ContextLayout(key_mask=key_mask, positions=positions, places=places, edges=edges)


def _every_position_step(decoder: RecursiveDecoder, latents, tokens, context, layout):
    # The step with every context position run and the non-keys masked, written out from the
    # decoder's public parts: what running only the keys must reproduce.
    cells = torch.arange(decoder.config.seq_len)
    x = decoder.embed_input(tokens, context, cells, layout)
    cos_sin = decoder.rotary.at(torch.cat((layout.positions, decoder.config.context_len + cells)))
    key_mask = torch.cat((layout.key_mask, torch.ones(len(tokens), len(cells), dtype=torch.bool)), dim=1)
    z_H, z_L, logits, q = decoder.recursion(latents.z_H, latents.z_L, x, cos_sin, key_mask)
    return Latents(z_H, z_L), logits, q[..., 0]


@pytest.mark.parametrize("place_embedding, place_grid_edges", [(False, False), (True, False), (True, True)])
def test_only_the_context_keys_run_and_compute_what_every_position_does(place_embedding, place_grid_edges,
                                                                       monkeypatch):
    # With a key mask (the demos as the context) each sample's keys are packed to the front and
    # the step runs the batch's most keys: a non-key is read by nothing, so logits, halting and
    # the latents of every key and of the canvas are those of the step over every position.
    context_len = 8
    model = tiny_model(4, seq_len=CANVAS * CANVAS, context_len=context_len, place_embedding=place_embedding,
                       place_grid_edges=place_grid_edges, region_groups=1).double()
    with torch.no_grad():
        model.decoder.q_head.weight.normal_()  # zero at init: halting would read nothing
    batch = _region_batch([CANVAS] * 4, seed=6)
    layout = _keyed_layout(4, context_len, seed=7)
    context = torch.randn(4, context_len, TINY["hidden_size"], dtype=torch.float64)
    widths = []
    original = RecursiveDecoder.recursion

    def recorded(self, z_H, *args, **kwargs):
        widths.append(z_H.shape[1])
        return original(self, z_H, *args, **kwargs)

    decoder = model.decoder
    fresh = decoder.reset_latents(decoder.initial_latents(4), torch.ones(4, dtype=torch.bool))
    keyed, every = fresh, fresh
    for _ in range(2):
        with monkeypatch.context() as patch:
            patch.setattr(RecursiveDecoder, "recursion", recorded)
            keyed, logits, q_halt, _ = decoder(keyed, batch["inputs"], context, None, layout)
        every, expected_logits, expected_halt = _every_position_step(decoder, every, batch["inputs"], context, layout)
        close = dict(rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(logits, expected_logits, **close)
        torch.testing.assert_close(q_halt, expected_halt, **close)
        for row in range(4):
            runs = layout.key_mask[row].clone()
            runs[0] = True
            read = torch.cat((runs.nonzero()[:, 0], context_len + torch.arange(CANVAS * CANVAS)))
            for got, want in zip(keyed, every, strict=True):
                torch.testing.assert_close(got[row, read], want[row, read], **close)
    most_keys = int(layout.key_mask.clone().index_fill_(1, torch.tensor([0]), True).sum(1).max())
    assert widths == [most_keys + CANVAS * CANVAS] * 2 and most_keys < context_len


@pytest.mark.parametrize("place_grid_edges", [False, True])
def test_the_context_s_cost_follows_the_keys_on_regions(place_grid_edges, monkeypatch):
    # Size-aware canvas and a keyed context: each region group runs its own samples' most keys
    # (and their own per-sample layout fields), and computes per sample what one square does.
    context_len = 8
    model = tiny_model(5, seq_len=CANVAS * CANVAS, context_len=context_len, place_embedding=place_grid_edges,
                       place_grid_edges=place_grid_edges)
    with torch.no_grad():
        model.decoder.q_head.weight.normal_()
    batch = _region_batch(MIXED, seed=8)
    layout = _keyed_layout(len(MIXED), context_len, seed=9)
    squares = _count_squares(model, monkeypatch)
    grouped, one_square = _grouped_and_one_square(model, batch, layout=layout)
    assert len(set(squares)) > 2
    _assert_same_per_sample_keyed(grouped, one_square, MIXED, layout.key_mask)


def test_a_keyed_context_on_the_fixed_canvas_runs_in_groups_of_similar_length(monkeypatch):
    # The demos as the context on the fixed canvas: samples of few and of many keys run in
    # groups, each at its own most keys, and compute per sample what the batch as one group does.
    context_len = 16
    model = tiny_model(6, seq_len=CANVAS * CANVAS, context_len=context_len)
    with torch.no_grad():
        model.decoder.q_head.weight.normal_()
    sides = [CANVAS] * 8
    batch = {key: value for key, value in _region_batch(sides, seed=10).items() if key != "region_side"}
    layout = _keyed_layout(len(sides), context_len, seed=11)
    key_mask = layout.key_mask & (torch.arange(context_len)[None, :] < 2 * torch.arange(1, 9)[:, None])
    layout = layout._replace(key_mask=key_mask)  # row i: keys among its first 2 (i + 1) positions
    widths = []
    original = RecursiveDecoder.recursion

    def recorded(self, z_H, *args, **kwargs):
        widths.append(z_H.shape[1])
        return original(self, z_H, *args, **kwargs)

    monkeypatch.setattr(RecursiveDecoder, "recursion", recorded)
    grouped, one_group = _grouped_and_one_square(model, batch, layout=layout)
    most = int(key_mask.clone().index_fill_(1, torch.tensor([0]), True).sum(1).max()) + CANVAS * CANVAS
    assert widths[-1] == most and min(widths) < most  # the grouped steps ran shorter groups
    _assert_same_per_sample_keyed(grouped, one_group, sides, key_mask)


def _assert_same_per_sample_keyed(grouped, one_square, sides, key_mask) -> None:
    close = dict(rtol=1e-10, atol=1e-10)
    for got, want in zip(grouped[1:4], one_square[1:4], strict=True):
        torch.testing.assert_close(got, want, **close)
    for row, side in enumerate(sides):
        runs = key_mask[row].clone()
        runs[0] = True
        context_len = key_mask.shape[1]
        read = runs.nonzero()[:, 0].tolist() + [context_len + r * CANVAS + c for r in range(side) for c in range(side)]
        for got, want in zip(grouped[0], one_square[0], strict=True):
            torch.testing.assert_close(got[row, read], want[row, read], **close)
    for name, grad in grouped[4].items():
        torch.testing.assert_close(grad, one_square[4][name], **close, msg=name)


def test_grid_edges_count_to_the_grid_s_last_row_and_column():
    from etrm.data.encoding import encode_grid
    from etrm.models.decoder import grid_edges

    side = 5
    grid = torch.tensor([[1, 2, 3], [4, 5, 6]]).numpy()
    edges = grid_edges(torch.from_numpy(encode_grid(grid, side)).long(), side).view(side, side, 2)
    assert edges[0, 0].tolist() == [1, 2] and edges[1, 2].tolist() == [0, 0] and edges[0, 1].tolist() == [1, 1]
    assert edges[2, 0].tolist() == [side, side] and edges[0, 3].tolist() == [side, side]  # EOS border, PAD: outside
    # a cell's columns to the last column are the column of its mirror image: a flip is a match of contents
    for row in range(2):
        for col in range(3):
            assert int(edges[row, col, 1]) == 3 - 1 - col
    shifted = grid_edges(torch.from_numpy(encode_grid(grid, side, row=1, col=1)).long(), side).view(side, side, 2)
    assert shifted[1, 1].tolist() == [1, 2] and shifted[0, 0].tolist() == [side, side]
    assert grid_edges(torch.zeros(2, side * side, dtype=torch.long), side).eq(side).all()
