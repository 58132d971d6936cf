"""The project's own errors: each names what was wrong (file, row, field, setting) and what would be accepted.

They subclass ``ValueError``, so code that catches a ``ValueError`` still catches them; the command line
prints them as one line instead of a traceback.
"""

from __future__ import annotations


class DpoTeachError(ValueError):
    """A problem with the user's input or setup that the message explains; never a bug in dpo-teach."""


class ConfigError(DpoTeachError):
    """A setting out of its range or of the wrong type; the message names the field."""


class DataError(DpoTeachError):
    """An example that cannot be used; the message names source, row, field and what is accepted."""


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"{field}: {message}"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}")
