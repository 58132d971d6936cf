"""A cached stage of a run: a directory whose contents are a function of its inputs.

``RUN/<stage>/stage.json`` records a hash of the inputs and whether the stage finished. Unchanged inputs
reuse a finished stage, or resume an interrupted one from what it left (its trainer's checkpoints);
changed inputs start it afresh. Each finished stage gets a fresh output id, which the stages downstream
of it key on, so recomputing a stage invalidates everything that used its output.

Under ``accelerate launch`` every process calls :meth:`Stage.start` and :meth:`Stage.finish`; the main process
alone empties the directory and writes ``stage.json``, and both end with a barrier, so every process sees the
same record afterwards (``dpo_teach.frontier.processes``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from pathlib import Path

from dpo_teach import io
from dpo_teach.frontier import processes

STAGE_VERSION = 1
"""Part of every stage's inputs: bump it when a change to the code changes what a stage produces."""


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
        """Keep the directory when it holds an interrupted run of the same inputs; otherwise empty it.
        Every process calls this; the main one does it while the others wait."""
        if processes.is_main_process():
            if self._recorded().get("key") != self.key and self.directory.exists():
                shutil.rmtree(self.directory)
            self._write(done=False)
        processes.wait_for_everyone()

    def finish(self) -> None:
        """Record the stage as done with a fresh output id (every process calls this; the main one writes)."""
        if processes.is_main_process():
            self._write(done=True)
        processes.wait_for_everyone()

    def _write(self, done: bool) -> None:
        record = {"key": self.key, "done": done, "output": uuid.uuid4().hex if done else None, "inputs": self.inputs}
        io.write_text_atomically(self.record, json.dumps(record, indent=2, default=str))
