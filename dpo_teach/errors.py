"""The project's own errors: each names what was wrong (file, row, field, setting) and what would be accepted.

They subclass ``ValueError``, so code that catches a ``ValueError`` still catches them; the command line
prints them as one line instead of a traceback and exits with their ``exit_code``: 2 for a problem with the
command or its input (as argparse does for a bad option), 1 for one that arose while running (a full disk, a
diverged run).
"""

from __future__ import annotations


class DpoTeachError(ValueError):
    """A problem with the user's input or setup that the message explains; never a bug in dpo-teach."""

    exit_code = 2


class ConfigError(DpoTeachError):
    """A setting out of its range or of the wrong type; the message names the field, and so does :attr:`field`
    when the error is about one field (a config file's reader adds the file's name to those from the file)."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


class DataError(DpoTeachError):
    """An example that cannot be used; the message names source, row, field and what is accepted."""


class ResumeError(DpoTeachError):
    """A run directory holds work that this command would not continue faithfully or would overwrite: checkpoints
    or stages of other settings or inputs, a run longer than asked, checkpoints that no longer load."""


class DiskFullError(DpoTeachError):
    """The disk filled up while writing; the message names the path and what is still intact."""

    exit_code = 1


class NonFiniteError(DpoTeachError, FloatingPointError):
    """A loss, gradient norm, reward or weight that is not finite; the message names the last good checkpoint."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """A run stopped cleanly by Ctrl-C (SIGINT) after writing a checkpoint of its last finished step; the message
    names it. A ``KeyboardInterrupt``, so whatever stops on Ctrl-C (a notebook, a sweep) stops on it too."""


def require(condition: bool, field: str, message: str) -> None:
    """Raise :class:`ConfigError` ``"{field}: {message}"`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{field}: {message}", field)
