"""Two processes under ``accelerate launch`` on the CPU (gloo DDP) reach the weights of one process on the whole batch.

The launch is ``ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2``: with
accelerate 1.x, ``accelerate launch --cpu --num_processes 2`` starts ONE process (``--cpu`` selects
the single-process launcher; huggingface/accelerate#2741), which the first assertion would catch.

Each process takes half of every global batch; the loss is scaled by the pairs of the whole step
times the process count, and DDP averages the gradients, so the update is the one-process update.
The tolerance covers float32 summation order (the all-reduce adds the halves in a different order)
amplified by AdamW's g / sqrt(v) over 4 steps.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import GPT2LMHeadModel


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def dpo_command(tmp_path, inputs, name, processes) -> tuple[list[str], Path]:
    output_dir = tmp_path / name
    config = {
        **inputs, "output_dir": str(output_dir), "max_steps": 4, "batch_size": 8, "learning_rate": 1e-3,
        "optimizer": "adamw", "warmup_steps": 1, "eval_every": 2, "eval_batch_size": 3, "save_every": 0,
        "max_length": 32, "max_prompt_length": 16, "progress_bar": False,
        # online reference: policy and reference see the same micro-batch, so at step 1 every reward is exactly 0
        # and every pair a tie in both runs. (A precomputed reference is taken in other batches, whose padding
        # changes float32 rounding: step-1 rewards are ~1e-8 noise whose signs differ between the splits.)
        "precompute_ref": False,
    }  # fmt: skip
    config_path = tmp_path / f"{name}.json"
    config_path.write_text(json.dumps(config))
    arguments = ["-m", "dpo_teach", "dpo", "--config", str(config_path)]
    if processes == 1:
        return [sys.executable, *arguments], output_dir
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    return [*launch, *arguments], output_dir


def records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_reach_the_weights_of_one(tmp_path, saved_run_inputs):
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    outputs = {}
    for processes in (1, 2):
        command, outputs[processes] = dpo_command(tmp_path, saved_run_inputs, f"processes-{processes}", processes)
        finished = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert f"{processes} process(es) on cpu" in finished.stdout

    one, two = records(outputs[1]), records(outputs[2])
    assert [sorted(record) for record in one] == [sorted(record) for record in two]
    for single, distributed in zip(one, two, strict=True):
        for name, value in single.items():
            if name in ("step_seconds", "tokens_per_second"):
                continue
            # metrics are means over the pairs of both processes: an accuracy stays in [0, 1], and equals one process's
            assert distributed[name] == pytest.approx(value, rel=1e-5, abs=1e-6), (single["step"], name)
    assert all(0.0 <= record["rewards/accuracies"] <= 1.0 for record in two if "rewards/accuracies" in record)
    # held-out pairs: 4 per process in eval batches of 3 and 1; each pair counted once, at steps 0, 2 and 4
    assert [record["step"] for record in two if "eval/loss" in record] == [0, 2, 4]

    single = GPT2LMHeadModel.from_pretrained(outputs[1] / "final").state_dict()
    distributed = GPT2LMHeadModel.from_pretrained(outputs[2] / "final").state_dict()
    difference = max((single[name] - distributed[name]).abs().max().item() for name in single)
    assert difference <= 1e-5
    trained = GPT2LMHeadModel.from_pretrained(saved_run_inputs["model"]).state_dict()
    assert max((single[name] - trained[name]).abs().max().item() for name in single) > 1e-4
