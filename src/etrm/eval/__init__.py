"""Evaluation by the ARC Prize rules: augment, predict, invert, vote, score."""
