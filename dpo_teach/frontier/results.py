"""The frontier's results table: one row per evaluated checkpoint, written as ``results.csv``.

Every method run keeps its own rows in ``RUN/<run>/evaluations.jsonl`` (so a restarted stage drops its
rows with it); :func:`write_results` gathers them into one CSV in a fixed column order, and
:func:`summary_table` prints the last checkpoint of every run.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from dpo_teach import io

COLUMNS = (
    "method", "parameter", "value", "seed", "run", "step", "reward", "reward_sem", "kl", "kl_sem",
    "kl_log_ratio", "kl_log_ratio_sem", "samples",
)  # fmt: skip
"""Columns of ``results.csv``. ``reward`` is the mean ground-truth reward of the samples, ``kl`` the mean sequence
KL(pi || pi_ref) (token-level estimator, the x-axis), ``kl_log_ratio`` the k1 estimate of the same KL; ``*_sem`` are
standard errors over prompts; ``samples`` counts the completions scored; ``step`` is the trainer's optimizer step
(PPO: its rollout iteration); ``seed`` the trainer's. Best-of-N rows (method ``best-of-n``, value N) give as ``kl``
the bound log N - (N - 1) / N, with ``kl_sem`` 0 and no ``kl_log_ratio``: an upper bound, not an estimate."""


def read_rows(path: Path) -> list[dict]:
    """The rows of an ``evaluations.jsonl`` file (none if it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_row(path: Path, row: dict) -> None:
    """Append one row to ``path``, flushed, so an interruption keeps every finished evaluation."""
    missing = [column for column in COLUMNS if column not in row]
    if missing:
        raise ValueError(f"result row is missing {missing}")
    with path.open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def write_results(rows: list[dict], path: Path) -> None:
    """``results.csv`` with :data:`COLUMNS`, rows in the order given, written atomically."""

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    io.write_atomically(path, write)


def _number(text: str) -> float | int | None:
    if text == "":
        return None
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def load_results(path: str | Path) -> list[dict]:
    """Rows of a ``results.csv`` with numbers parsed (``value`` is None for methods without a hyper-parameter)."""
    with Path(path).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    textual = {"method", "parameter", "run"}
    return [{key: value if key in textual else _number(value) for key, value in row.items()} for row in rows]


def final_rows(rows: list[dict]) -> list[dict]:
    """The row of the last evaluated step of every run, in first-appearance order."""
    last: dict[str, dict] = {}
    for row in rows:
        if row["run"] not in last or row["step"] >= last[row["run"]]["step"]:
            last[row["run"]] = row
    return list(last.values())


def _with_error(value: float, error: float) -> str:
    return f"{value:.3f} ± {error:.3f}" if error is not None and math.isfinite(error) else f"{value:.3f}"


def summary_table(rows: list[dict]) -> str:
    """A plain-text table of every run's last checkpoint: reward and KL with standard errors."""
    header = ("run", "step", "reward", "KL (nats)", "samples")
    lines = [
        (row["run"], str(row["step"]), _with_error(row["reward"], row["reward_sem"]),
         _with_error(row["kl"], row["kl_sem"]), str(row["samples"]))
        for row in final_rows(rows)
    ]  # fmt: skip
    widths = [max(len(cells[index]) for cells in [header, *lines]) for index in range(len(header))]
    table = [header, tuple("-" * width for width in widths), *lines]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)) for cells in table)
