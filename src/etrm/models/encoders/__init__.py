"""Demonstration encoders: (demo inputs, demo outputs, demo mask) -> context (B, context_len, hidden).

Every encoder registers itself under a name (`encoder.type` in the config) and is built by
`build_encoder`; each is a `DemoEncoder` (its contract: `encode(...) -> ContextOutput`).
`EncoderContext` adapts any of them to the decoder's `ContextSource` (a recurrent encoder's
state rides in the ACT carry).

standard: per-pair transformer, pooled, cross-attention over the demos (the baseline);
variational: standard + a Gaussian bottleneck (KL as auxiliary loss);
lpn: CLS + pre-norm transformer per pair, one latent per demo (optionally variational), mean;
hybrid: the LPN latents + cross-attention over the demos;
cross_demo: demo vectors attend to each other before the cross-attention;
set_transformer: ISAB blocks over the demo set, then PMA;
hierarchical: cells -> grid vectors -> demo vectors -> context;
recurrent: ETRM-squared, a latent z_E refined from the demos at every ACT step;
none: a zero context (the no-encoder floor);
demo_cells: the demos as the context, one fused (input, output) token per demo cell, uncompressed;
cell_slots: context_len learned slots attending over every fused cell state of every demo.
"""

from etrm.models.encoders.cell_slots import CellSlotsEncoder
from etrm.models.encoders.common import (
    ENCODERS,
    DemoEncoder,
    EncoderContext,
    build_encoder,
    register_encoder,
    rename_legacy_keys,
)
from etrm.models.encoders.cross_demo import CrossDemoEncoder
from etrm.models.encoders.demo_cells import DemoCellsEncoder
from etrm.models.encoders.hierarchical import HierarchicalEncoder
from etrm.models.encoders.hybrid import HybridEncoder
from etrm.models.encoders.lpn import LPNEncoder
from etrm.models.encoders.none import NoContextEncoder
from etrm.models.encoders.recurrent import RecurrentEncoder
from etrm.models.encoders.set_transformer import SetTransformerEncoder
from etrm.models.encoders.standard import StandardEncoder
from etrm.models.encoders.variational import VariationalEncoder, gaussian_kl

__all__ = [
    "ENCODERS",
    "CellSlotsEncoder",
    "CrossDemoEncoder",
    "DemoCellsEncoder",
    "DemoEncoder",
    "EncoderContext",
    "HierarchicalEncoder",
    "HybridEncoder",
    "LPNEncoder",
    "NoContextEncoder",
    "RecurrentEncoder",
    "SetTransformerEncoder",
    "StandardEncoder",
    "VariationalEncoder",
    "build_encoder",
    "gaussian_kl",
    "register_encoder",
    "rename_legacy_keys",
]
