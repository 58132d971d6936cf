"""Atomic writes: a file or a directory appears under its name only when it is complete.

Everything a run keeps (checkpoints, the best reward model, preference pairs, stage records, the
results table, the reference log-prob cache) is written under a temporary name in the same directory
and renamed when complete. A rename within one filesystem is atomic on POSIX (``os.replace``), so a
run killed at any moment leaves either the old content or the new one, never a half-written file.

A directory that already exists is first set aside under another temporary name and deleted only
after the new one is in place, so at no moment is neither on disk.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dpo_teach.errors import ConfigError

TEMPORARY_PREFIX = ".incomplete-"
"""Names starting with this are work in progress: never read, removed when the same path is written again."""


def make_directory(path: str | Path, field: str) -> Path:
    """Create the directory ``path`` (and its parents) if missing; returns it. A file in its place is a
    :class:`ConfigError` naming ``field`` (the option that gave the path), not an ``OSError`` deep in a run."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        message = f"{field}: {path} is a file, or lies under one; give a directory (it is created if missing)"
        raise ConfigError(message, field) from None
    return path


def temporary_path(path: str | Path) -> Path:
    """The sibling of ``path`` under which it is written before being renamed: ``DIR/.incomplete-NAME``."""
    path = Path(path)
    return path.with_name(TEMPORARY_PREFIX + path.name)


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary)`` to write a file, then rename it to ``path``; returns ``path``.

    The parent directory is created if needed. If ``write`` raises, the temporary file is removed and
    ``path`` keeps its old content (if any).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def remove_temporary_directory(path: str | Path) -> Path:
    """Delete what a killed writer left at ``temporary_path(path)``; returns that (now absent) path."""
    temporary = temporary_path(path)
    shutil.rmtree(temporary, ignore_errors=True)
    return temporary


def replace_directory(temporary: str | Path, path: str | Path) -> Path:
    """Rename the complete directory ``temporary`` to ``path``, replacing what is there; returns ``path``.

    An existing ``path`` is first renamed aside and deleted last, so either the old or the new directory
    is always on disk under ``path`` or its aside name.
    """
    path = Path(path)
    aside = path.with_name(TEMPORARY_PREFIX + "replaced-" + path.name)
    shutil.rmtree(aside, ignore_errors=True)
    if path.exists():
        os.replace(path, aside)
    os.replace(temporary, path)
    shutil.rmtree(aside, ignore_errors=True)
    return path
