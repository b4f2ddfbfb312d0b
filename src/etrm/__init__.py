"""ETRM: the Tiny Recursive Model with a demonstration encoder, for few-shot ARC."""

__version__ = "0.1.0"
