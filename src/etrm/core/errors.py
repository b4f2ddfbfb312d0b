"""Errors a user can cause and fix. The CLI prints them as one line, without a traceback."""


class EtrmError(Exception):
    """Base class for errors reported to the user as a single line."""


class DataError(EtrmError):
    """A task file, task or grid is malformed; the message names the file and the task."""


class ConfigError(EtrmError):
    """A configuration key or value is wrong; the message names the key."""
