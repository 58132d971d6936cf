"""Kill a run with SIGKILL, resume it, and get the weights of a run that was never interrupted.

Each run is its own process started the way a user starts one (``python -m dpo_teach dpo``), with a
small wrapper that sends the process SIGKILL at a chosen moment: halfway through writing a
checkpoint (after ``accelerator.save_state``, before the atomic rename), or in the middle of an
optimizer step. Nothing is caught or cleaned up: the process simply dies, as under ``kill -9``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import GPT2LMHeadModel

KILLING_LAUNCHER = textwrap.dedent(
    """
    import os, signal, sys

    from dpo_teach import cli, io
    from dpo_teach.train import dpo

    moment, step = sys.argv[1], int(sys.argv[2])
    if moment == "checkpoint":  # die after save_state, before the rename that completes the checkpoint
        original_replace = io.os.replace

        def replace(source, destination):
            if str(destination).endswith(f"step-{step:08d}"):
                os.kill(os.getpid(), signal.SIGKILL)
            original_replace(source, destination)

        io.os.replace = replace
    elif moment == "step":  # die in the forward pass of optimizer step `step` (one micro-batch per step)
        original_call, calls = dpo.DPOObjective.__call__, []

        def call(self, model, batch):
            calls.append(1)
            if len(calls) == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return original_call(self, model, batch)

        dpo.DPOObjective.__call__ = call
    sys.exit(cli.main(sys.argv[3:]))
    """
)


def launch(tmp_path, output_dir, inputs, moment="never", step=0) -> subprocess.CompletedProcess:
    """Run ``dpo-teach dpo`` on the saved tiny inputs in a fresh process that may SIGKILL itself."""
    config = {
        **inputs, "output_dir": str(output_dir), "max_steps": 6, "batch_size": 8, "learning_rate": 1e-3,
        "optimizer": "adamw", "warmup_steps": 2, "eval_every": 2, "eval_batch_size": 8, "save_every": 2,
        "keep_checkpoints": 2, "max_length": 32, "max_prompt_length": 16, "progress_bar": False,
    }  # fmt: skip
    config_path = tmp_path / "config.json"  # JSON is YAML
    config_path.write_text(json.dumps(config))
    launcher = tmp_path / "launcher.py"
    launcher.write_text(KILLING_LAUNCHER)
    command = [sys.executable, str(launcher), moment, str(step), "dpo", "--config", str(config_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def weights(directory) -> dict[str, torch.Tensor]:
    return GPT2LMHeadModel.from_pretrained(directory).state_dict()


def train_lines(output_dir) -> list[dict]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    return [{key: value for key, value in record.items() if key not in ("step_seconds", "tokens_per_second")}
            for record in records]  # fmt: skip


@pytest.fixture
def uninterrupted(tmp_path, saved_run_inputs):
    output_dir = tmp_path / "uninterrupted"
    finished = launch(tmp_path, output_dir, saved_run_inputs)
    assert finished.returncode == 0, finished.stderr
    return output_dir


@pytest.mark.parametrize(
    ("moment", "step", "surviving_checkpoint"),
    [("checkpoint", 4, "step-00000002"), ("step", 5, "step-00000004")],
    ids=["while-writing-checkpoint-4", "in-step-5"],
)
def test_sigkill_then_resume_gives_the_uninterrupted_weights(
    tmp_path, saved_run_inputs, uninterrupted, moment, step, surviving_checkpoint
):
    output_dir = tmp_path / "killed"
    killed = launch(tmp_path, output_dir, saved_run_inputs, moment, step)
    assert killed.returncode == -9, killed.stderr  # died by SIGKILL
    checkpoints = sorted(path.name for path in (output_dir / "checkpoints").iterdir())
    assert checkpoints[-1] == surviving_checkpoint
    if moment == "checkpoint":
        assert ".incomplete-step-00000004" in checkpoints  # the half-written one is never mistaken for complete
    # the last good checkpoint is whole: its policy loads like any model
    assert weights(output_dir / "checkpoints" / surviving_checkpoint / "policy")

    resumed = launch(tmp_path, output_dir, saved_run_inputs)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {int(surviving_checkpoint.removeprefix('step-'))}" in resumed.stdout
    reference, final = weights(uninterrupted / "final"), weights(output_dir / "final")
    difference = max((reference[name] - final[name]).abs().max().item() for name in reference)
    assert difference <= 1e-6
    # the same data in the same order after the resume: every logged number agrees too
    assert train_lines(output_dir) == train_lines(uninterrupted)
    assert sorted(path.name for path in (output_dir / "checkpoints").iterdir()) == ["step-00000004", "step-00000006"]
