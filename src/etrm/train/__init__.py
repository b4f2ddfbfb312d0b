"""Training: typed config, optimisation, checkpoints, metrics, and the loop."""
