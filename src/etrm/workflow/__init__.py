"""The research workflow around runs: the experiment queue and experiment records."""
