"""Shared infrastructure, the lowest floor: the typed run config, the device/rank runtime with
autocast, checkpoint files and errors."""
