"""A cached stage of a run: a directory whose contents are a function of its inputs.

``RUN/<stage>/stage.json`` records a hash of the inputs and whether the stage finished. Unchanged inputs
reuse a finished stage, or resume an interrupted one from what it left (its trainer's checkpoints).
Changed inputs never delete or overwrite what is there: a directory holding a stage of other inputs
(finished or not, made by other settings or an older version of the code) is refused with a
``ResumeError`` naming the inputs that differ, before anything is written. Inside :func:`replacing`
(``dpo-teach frontier --replace``) such a stage is deleted and computed afresh instead. Each finished
stage gets a fresh output id, which the stages downstream of it key on, so recomputing a stage
invalidates everything that used its output.

Under ``accelerate launch`` every process calls :meth:`Stage.start` and :meth:`Stage.finish`; the main process
alone empties the directory and writes ``stage.json``, and both end with a barrier, so every process sees the
same record afterwards (``dpo_teach.frontier.processes``).
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from dpo_teach import io
from dpo_teach.errors import ResumeError
from dpo_teach.frontier import processes

STAGE_VERSION = 1
"""Part of every stage's inputs: bump it when a change to the code changes what a stage produces."""


_REPLACING = contextvars.ContextVar("replacing_stages", default=False)


@contextlib.contextmanager
def replacing() -> Iterator[None]:
    """Within this block a stage whose directory holds a stage of other inputs deletes it and starts afresh, when the
    sweep reaches it; outside, that is refused (:meth:`Stage.start`). ``dpo-teach frontier --replace`` runs in it."""
    token = _REPLACING.set(True)
    try:
        yield
    finally:
        _REPLACING.reset(token)


class Stage:
    """A directory whose contents are a function of ``inputs``; ``stage.json`` records them and completion."""

    def __init__(self, directory: Path, inputs: dict) -> None:
        self.directory = directory
        inputs = {"version": STAGE_VERSION, **inputs}
        self.key = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
        self.inputs = inputs
        self.record = directory / "stage.json"

    def _recorded(self) -> dict:
        return json.loads(self.record.read_text()) if self.record.exists() else {}

    @property
    def done(self) -> bool:
        recorded = self._recorded()
        return recorded.get("key") == self.key and recorded.get("done", False)

    @staticmethod
    def output_id(directory: Path) -> str:
        """A fresh id written when the stage in ``directory`` finished: later stages key on it, so a stage
        computed again (even from the same inputs) invalidates everything downstream of it."""
        return json.loads((directory / "stage.json").read_text())["output"]

    def start(self) -> None:
        """Keep the directory when it holds an interrupted run of the same inputs. One holding work of other inputs
        (:meth:`_holds_work`) is refused (:class:`ResumeError`, nothing touched), or emptied inside :func:`replacing`.
        Every process checks, all reading the same record; the main one writes while the others wait."""
        recorded = self._recorded()
        other = recorded.get("key") != self.key and self._holds_work(recorded)
        if other and not _REPLACING.get():
            raise ResumeError(self._conflict(recorded))
        processes.wait_for_everyone()  # every process has read the record before the main one changes it
        if processes.is_main_process():
            if other:
                shutil.rmtree(self.directory)
            self._write(done=False)
        processes.wait_for_everyone()

    def _holds_work(self, recorded: dict) -> bool:
        """Whether the directory holds anything to lose: a finished stage, or files beside its record (a stage that
        started but wrote no file, e.g. whose model failed to load, is free for another)."""
        files = self.directory.rglob("*")  # nothing when the directory does not exist
        return recorded.get("done", False) or any(path.is_file() and path != self.record for path in files)

    def _conflict(self, recorded: dict) -> str:
        """Why the directory is not this stage's, naming up to 8 inputs that differ, and the ways out."""
        ways_out = (
            "Use another --out for these settings, or rerun with --replace to delete and recompute every stage whose "
            "settings differ (in Python: within dpo_teach.frontier.stage.replacing())"
        )
        if not recorded:
            return f"{self.directory} holds files but no stage.json (no stage of a sweep); nothing changed. {ways_out}"
        current = json.loads(json.dumps(self.inputs, default=str))  # as recorded: tuples are lists, paths strings
        differences = _differences(recorded.get("inputs", {}), current)
        shown = ", ".join(differences[:8]) + (f" and {len(differences) - 8} more" if len(differences) > 8 else "")
        state = "a finished" if recorded.get("done") else "an unfinished"
        return f"{self.directory} holds {state} stage of other settings ({shown}); nothing was changed. {ways_out}"

    def finish(self) -> None:
        """Record the stage as done with a fresh output id (every process calls this; the main one writes)."""
        if processes.is_main_process():
            self._write(done=True)
        processes.wait_for_everyone()

    def _write(self, done: bool) -> None:
        record = {"key": self.key, "done": done, "output": uuid.uuid4().hex if done else None, "inputs": self.inputs}
        io.write_text_atomically(self.record, json.dumps(record, indent=2, default=str))


def _differences(recorded: dict, current: dict, prefix: str = "") -> list[str]:
    """``"name: recorded -> current"`` for every input that differs, nested inputs named with dots."""
    differences = []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, "(none)"), current.get(name, "(none)")
        if isinstance(old, dict) and isinstance(new, dict):
            differences += _differences(old, new, f"{prefix}{name}.")
        elif old != new:
            differences.append(f"{prefix}{name}: {_short(old)} -> {_short(new)}")
    return differences


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
