"""The demos as the context (`encoder.type=demo_cells`): one fused (input, output) token per demo
cell, PAD cells and padded demos masked as keys, sequence or aligned rotary positions."""

from __future__ import annotations

import pytest
import torch

from etrm.core.config import load_config
from etrm.core.errors import ConfigError
from etrm.data.encoding import PAD
from etrm.models import act_loss
from etrm.models.build import build_model

from .test_encoders import CANVAS, SEQ_LEN, act_batch

MAX_DEMOS = 3


def cells_model(positions: str = "sequence", max_demos: int = MAX_DEMOS, place_embedding: bool = False,
                place_grid_edges: bool = False, place_drop_prob: float = 0.0):
    config = load_config(["preset=overfit-cpu", f"canvas_side={CANVAS}", "model.hidden_size=32", "model.num_heads=2",
                          f"max_demos={max_demos}", f"model.context_len={max_demos * SEQ_LEN}", "halt_max_steps=2",
                          "encoder.type=demo_cells", f"encoder.cell_positions={positions}",
                          f"model.place_embedding={str(place_embedding).lower()}",
                          f"model.place_grid_edges={str(place_grid_edges).lower()}",
                          f"encoder.place_drop_prob={place_drop_prob}"])
    torch.manual_seed(0)
    return build_model(config).eval()


def one_step(model, batch, context=None, layout=None):
    source = model.context_source
    context = source(batch) if context is None else context
    layout = source.layout(batch) if layout is None else layout
    latents = model.decoder.reset_latents(model.decoder.initial_latents(len(batch["inputs"])),
                                          torch.ones(len(batch["inputs"]), dtype=torch.bool))
    _, logits, q_halt, _ = model.decoder(latents, batch["inputs"], context, None, layout)
    return logits, q_halt


def test_each_cell_token_is_its_input_plus_its_output_embedding():
    model = cells_model()
    batch = act_batch([2, 1], seed=0)
    encoder = model.context_source.encoder
    context = model.context_source(batch).view(2, MAX_DEMOS, SEQ_LEN, -1)
    d, cell = 0, int((batch["demo_inputs"][0, 0] != PAD).nonzero()[0])
    token_in, token_out = batch["demo_inputs"][0, d, cell], batch["demo_outputs"][0, d, cell]
    torch.testing.assert_close(context[0, d, cell], encoder.input_embed.weight[token_in]
                               + encoder.output_embed.weight[token_out])


@pytest.mark.parametrize("positions", ["sequence", "aligned"])
def test_masked_cells_and_padded_demos_change_nothing(positions):
    # Whatever sits at a masked context position (a cell PAD in both grids, a padded demo slot)
    # leaves every output unchanged; the real cells do change it.
    model = cells_model(positions)
    batch = act_batch([2, 1, 3], seed=1)
    layout = model.context_source.layout(batch)
    with torch.no_grad():
        context = model.context_source(batch)
        expected = one_step(model, batch, context, layout)
        masked = ~layout.key_mask
        assert masked.any() and layout.key_mask.any()
        noisy = torch.where(masked[..., None], torch.randn_like(context), context)
        for got, want in zip(one_step(model, batch, noisy, layout), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        real_changed = torch.where(masked[..., None], context, torch.randn_like(context) * context.std())
        assert not torch.allclose(one_step(model, batch, real_changed, layout)[0], expected[0], atol=1e-3)


def test_the_mask_is_applied_to_the_decoder_s_attention():
    model = cells_model()
    batch = act_batch([1, 2], seed=2)
    layout = model.context_source.layout(batch)
    with torch.no_grad():
        masked = one_step(model, batch, layout=layout)[0]
        unmasked = one_step(model, batch, layout=layout._replace(key_mask=torch.ones_like(layout.key_mask)))[0]
    assert not torch.allclose(masked, unmasked, atol=1e-4)


def test_aligned_positions_give_a_demo_cell_its_query_cell_s_angle():
    model = cells_model("aligned")
    batch = act_batch([2, 1], seed=3)
    positions = model.context_source.layout(batch).positions
    context_len = MAX_DEMOS * SEQ_LEN
    for demo in range(MAX_DEMOS):
        for row, col in ((0, 0), (1, 2), (2, 1), (5, 4)):
            cell = row * CANVAS + col
            # a query cell sits at rotary position context_len + its canvas index
            assert positions[demo * SEQ_LEN + cell] == context_len + cell
            transposed = col * CANVAS + row
            assert (positions[demo * SEQ_LEN + cell] == context_len + transposed) == (row == col)
    assert cells_model("sequence").context_source.layout(batch).positions is None


def test_aligned_outputs_do_not_depend_on_how_many_demo_slots_the_context_has():
    # With aligned positions every angle is a canvas place, so a model with room for more demos
    # (the same weights) gives the same outputs: the extra slots are masked, not attended to.
    small, large = cells_model("aligned", max_demos=2), cells_model("aligned", max_demos=3)
    large.load_state_dict(small.state_dict())
    batch = act_batch([2, 1], seed=4)
    with torch.no_grad():
        for got, want in zip(one_step(large, batch), one_step(small, batch), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_every_parameter_gets_a_gradient_and_too_many_demos_are_refused():
    model = cells_model().train()
    batch = act_batch([3, 1, 2], seed=5)
    carry, outputs = model(model.initial_carry(batch), batch)
    loss, _ = act_loss(outputs, carry.current_data["labels"], carry.halted)
    loss.backward()
    for name, parameter in model.context_source.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match="do not fit"):
        model.context_source(act_batch([4, 1], seed=6))


def _input_vectors(model, batch):
    source = model.context_source
    cells = torch.arange(SEQ_LEN)
    return model.decoder.embed_input(batch["inputs"], source(batch), cells, source.layout(batch))


def test_place_embedding_gives_a_demo_cell_the_place_of_the_query_cell_at_its_canvas_place():
    # model.place_embedding: what the decoder's input holds beyond the tokens' own embeddings is a
    # cell's place, the same vector for a demo cell and the query cell at one canvas place; a
    # transposed place gets another. Off, nothing is added.
    batch = act_batch([2, 1], seed=7)
    with torch.no_grad():
        placed, plain = cells_model(place_embedding=True), cells_model()
        plain.load_state_dict(placed.state_dict(), strict=False)
        extra = (_input_vectors(placed, batch) - _input_vectors(plain, batch))[0] / placed.decoder.embed_scale
    context_len = MAX_DEMOS * SEQ_LEN
    for demo in range(MAX_DEMOS):
        for row, col in ((0, 1), (1, 0), (2, 5), (5, 2)):
            cell = row * CANVAS + col
            torch.testing.assert_close(extra[demo * SEQ_LEN + cell], extra[context_len + cell])
            assert not torch.allclose(extra[context_len + cell], extra[context_len + col * CANVAS + row])
    # a place is its row's vector plus its column's: cells of one row differ by their columns' difference
    torch.testing.assert_close(extra[context_len + 1] - extra[context_len + 0],
                               extra[context_len + 2 * CANVAS + 1] - extra[context_len + 2 * CANVAS])
    assert not hasattr(plain.decoder, "embed_place")


def test_place_embedding_gets_a_gradient_and_masked_cells_still_change_nothing():
    model = cells_model(place_embedding=True).train()
    batch = act_batch([3, 1, 2], seed=8)
    carry, outputs = model(model.initial_carry(batch), batch)
    act_loss(outputs, carry.current_data["labels"], carry.halted)[0].backward()
    assert model.decoder.embed_place.weight.grad.abs().sum() > 0
    model.eval()
    layout = model.context_source.layout(batch)
    with torch.no_grad():
        context = model.context_source(batch)
        noisy = torch.where(~layout.key_mask[..., None], torch.randn_like(context), context)
        for got, want in zip(one_step(model, batch, noisy, layout), one_step(model, batch, context, layout),
                             strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_grid_edges_give_a_demo_cell_its_demo_input_s_edges_and_a_query_cell_its_own():
    from etrm.models.decoder import grid_edges

    batch = act_batch([2, 1], seed=9)
    with torch.no_grad():
        edged, placed = cells_model(place_embedding=True, place_grid_edges=True), cells_model(place_embedding=True)
        placed.load_state_dict(edged.state_dict(), strict=False)
        extra = (_input_vectors(edged, batch) - _input_vectors(placed, batch)) / edged.decoder.embed_scale
        decoder = edged.decoder
        query_edges = grid_edges(batch["inputs"], CANVAS)
        torch.testing.assert_close(extra[:, MAX_DEMOS * SEQ_LEN:], decoder.grid_edges_embedding(query_edges))
        demo_edges = grid_edges(batch["demo_inputs"][0, 1], CANVAS)
        torch.testing.assert_close(extra[0, SEQ_LEN:2 * SEQ_LEN], decoder.grid_edges_embedding(demo_edges))
    assert demo_edges.lt(CANVAS).any() and demo_edges.eq(CANVAS).any()
    with pytest.raises(ConfigError, match="place_grid_edges"):
        cells_model(place_grid_edges=True)


def test_a_dropped_sample_gets_none_of_the_place_features_and_only_in_training():
    # encoder.place_drop_prob: a training sample drawn `unplaced` gets neither the place nor the
    # far edges, on its demo cells and its query cells alike; the rest get both; evaluation
    # never drops.
    batch = act_batch([2, 1, 3, 2], seed=10)
    with torch.no_grad():
        dropping = cells_model(place_embedding=True, place_grid_edges=True, place_drop_prob=0.5)
        plain = cells_model()
        plain.load_state_dict(dropping.state_dict(), strict=False)
        assert dropping.context_source.layout(batch).unplaced is None
        placed_input, plain_input = _input_vectors(dropping, batch), _input_vectors(plain, batch)
        dropping.train()
        torch.manual_seed(1)
        layout = dropping.context_source.layout(batch)
        unplaced = layout.unplaced
        assert unplaced.any() and not unplaced.all()
        got = dropping.decoder.embed_input(batch["inputs"], dropping.context_source(batch), torch.arange(SEQ_LEN),
                                           layout)
    torch.testing.assert_close(got[unplaced], plain_input[unplaced])
    torch.testing.assert_close(got[~unplaced], placed_input[~unplaced])
    assert not torch.allclose(plain_input, placed_input)
    for prob, expected in ((1.0, True), (0.0, None)):
        model = cells_model(place_embedding=True, place_drop_prob=prob).train()
        drawn = model.context_source.layout(batch).unplaced
        assert drawn is expected if expected is None else bool(drawn.all())
    with pytest.raises(ConfigError, match="place_drop_prob"):
        cells_model(place_embedding=True, place_drop_prob=1.5)


def test_an_unplaced_sample_runs_as_without_the_place_features_in_its_length_group():
    # The flag follows each sample into the group it runs in (the batch's demos differ in length).
    batch = act_batch([2, 1, 3], seed=11)
    unplaced = torch.tensor([True, False, True])
    with torch.no_grad():
        model = cells_model(place_embedding=True, place_grid_edges=True)
        plain = cells_model()
        plain.load_state_dict(model.state_dict(), strict=False)
        got = one_step(model, batch, layout=model.context_source.layout(batch)._replace(unplaced=unplaced))
        without, placed = one_step(plain, batch), one_step(model, batch)
    for mixed, plain_out, placed_out in zip(got, without, placed, strict=True):
        torch.testing.assert_close(mixed[unplaced], plain_out[unplaced], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mixed[~unplaced], placed_out[~unplaced], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(without[0][1], placed[0][1], atol=1e-4)
