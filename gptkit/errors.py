"""Errors that mean the user asked for something gptkit cannot do.

The command line catches `GptkitError` and prints its message without a
traceback; anything else is a bug in gptkit and keeps its traceback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class GptkitError(Exception):
    """A user mistake: bad config, missing data, wrong checkpoint, broken plugin."""


class UsageError(GptkitError):
    """The command line itself is wrong: an unknown command, option or option value."""


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


def validation_problems(err: ValidationError) -> list[tuple[str, str]]:
    """(dotted location, message) for each problem pydantic found, in its order."""
    return [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.errors()]


def problems_line(err: ValidationError, empty_location: str = "") -> str:
    """pydantic's problems on one line, "location: message; ...": pydantic's own text spans lines and links its docs."""
    return "; ".join(f"{loc or empty_location}: {msg}" for loc, msg in validation_problems(err))
