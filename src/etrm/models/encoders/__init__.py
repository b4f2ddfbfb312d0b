"""Demonstration encoders: (demo inputs, demo outputs, demo mask) -> context (B, context_len, hidden).

Every encoder registers itself under a name (`encoder.type` in the config) and is built by
`build_encoder`. `EncoderContext` adapts any of them to the decoder's `ContextSource`.
"""

from etrm.models.encoders.common import ENCODERS, EncoderContext, build_encoder, register_encoder
from etrm.models.encoders.standard import StandardEncoder

__all__ = ["ENCODERS", "EncoderContext", "StandardEncoder", "build_encoder", "register_encoder"]
