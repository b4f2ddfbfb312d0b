"""The recursive decoder, its context sources, the ACT loss and TRM checkpoint loading."""

from etrm.models.decoder import (
    ACTCarry,
    ACTModel,
    ContextOutput,
    ContextSource,
    DecoderConfig,
    Latents,
    RecursiveDecoder,
)
from etrm.models.losses import act_loss
from etrm.models.puzzle_embedding import PuzzleEmbedding, SparseSignSGD
from etrm.models.trm_checkpoint import load_trm_checkpoint

__all__ = [
    "ACTCarry",
    "ACTModel",
    "ContextOutput",
    "ContextSource",
    "DecoderConfig",
    "Latents",
    "PuzzleEmbedding",
    "RecursiveDecoder",
    "SparseSignSGD",
    "act_loss",
    "load_trm_checkpoint",
]
