"""Errors that mean the user asked for something gptkit cannot do.

The command line catches `GptkitError` and prints its message without a
traceback; anything else is a bug in gptkit and keeps its traceback.
"""

from __future__ import annotations


class GptkitError(Exception):
    """A user mistake: bad config, missing data, wrong checkpoint, broken plugin."""


class ConfigError(GptkitError):
    """A config value is missing, misspelt, of the wrong type or out of range."""


class RegistryError(GptkitError):
    """A component name is unknown, or a plugin registered a name already taken."""


class PluginError(GptkitError):
    """A plugin could not be imported or its hook failed."""


class DataError(GptkitError):
    """Training data is missing, empty, too short or not text."""


class CheckpointError(GptkitError):
    """A checkpoint is missing, truncated, corrupted or does not fit the model."""
