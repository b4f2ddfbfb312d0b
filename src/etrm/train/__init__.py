"""Training: optimisation, metrics, verdicts, and the loop (the run config lives in `etrm.core`)."""
