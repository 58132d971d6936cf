"""``metrics.jsonl``: one JSON object per line, appended as a run goes, and cut back when it resumes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from accelerate import Accelerator

from dpo_teach import io


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl`` (main process) and to accelerate's trackers.

    On resume from step s, lines after s are dropped: they are about to be computed again. A line that is not a
    JSON record, the torn last line of a run killed while appending it, is dropped too, with a warning naming the
    file and line. The file is rewritten atomically, so a run killed meanwhile loses none of the kept lines.
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, resumed_step: int) -> None:
        self.accelerator = accelerator
        self.path = output_dir / "metrics.jsonl"
        if accelerator.is_main_process:
            kept = self._lines_up_to(resumed_step) if resumed_step and self.path.exists() else []
            io.write_text_atomically(self.path, "".join(line + "\n" for line in kept))

    def _lines_up_to(self, step: int) -> list[str]:
        kept = []
        for number, line in enumerate(self.path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
            try:
                record = json.loads(line)
                record_step = record["step"]
            except (ValueError, TypeError, KeyError):
                warnings.warn(
                    f"{self.path}, line {number}: not a metrics record ({line[:60]!r}), probably cut short by a crash "
                    "while it was written; dropped",
                    stacklevel=3,
                )
                continue
            if record_step <= step:
                kept.append(line)
        return kept

    def write(self, record: dict) -> None:
        if self.accelerator.is_main_process:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.accelerator.log({key: value for key, value in record.items() if key != "step"}, step=record["step"])
