"""Evaluation by the ARC Prize rules (augment, predict, invert, vote, score), test-time
optimisation, and the collapse diagnostics of an encoder."""
