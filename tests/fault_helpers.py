"""What the fault tests (tests/test_faults_*.py) share: a small `dpo-teach dpo` run on the saved tiny inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from dpo_teach import cli

SMALL_RUN = {
    "max_steps": 6, "batch_size": 8, "learning_rate": 1e-3, "optimizer": "adamw", "warmup_steps": 2, "eval_every": 2,
    "eval_batch_size": 8, "save_every": 2, "keep_checkpoints": 2, "max_length": 32, "max_prompt_length": 16,
    "progress_bar": False, "disable_dropout": False,
}  # fmt: skip
"""Six steps with a checkpoint every two; dropout stays on, so a resumed run that lost its random streams differs."""


def write_config(path: Path, inputs: dict, output_dir: Path, **overrides) -> Path:
    """A `dpo-teach dpo` config (JSON is YAML) of :data:`SMALL_RUN` on ``inputs`` (conftest's saved_run_inputs)."""
    path.write_text(json.dumps({**inputs, **SMALL_RUN, "output_dir": str(output_dir), **overrides}))
    return path


def dpo(config: Path, *options: str) -> int:
    """``dpo-teach dpo --config CONFIG OPTIONS...`` in this process; returns its exit status."""
    return cli.main(["dpo", "--config", str(config), *options])


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return GPT2LMHeadModel.from_pretrained(directory).state_dict()


def same_weights(first: Path, second: Path) -> bool:
    """Bit-for-bit equal weights (tolerance 0: resuming is exact)."""
    a, b = weights(first), weights(second)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def metrics_without_timing(output_dir: Path) -> list[dict]:
    lines = (output_dir / "metrics.jsonl").read_text().splitlines()
    timing = ("step_seconds", "tokens_per_second")
    return [{key: value for key, value in json.loads(line).items() if key not in timing} for line in lines]


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` by relative path (directories as ``"dir"``): equal snapshots mean
    nothing was added, removed or changed."""
    return {
        str(path.relative_to(directory)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
    }
