"""Faults of a training run, issue 12 items 2-6: what resuming checks (the inputs' content, checkpoints that load), what
bad input gets (long prompts), and what a run never leaves behind (non-finite checkpoints, a torn metrics line).

Each run is ``dpo-teach dpo`` on the tiny saved inputs in this process (tests/fault_helpers.py), dropout on: a resume
that lost or mixed up anything would not give the uninterrupted run's weights bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fault_helpers import dpo, metrics_without_timing, same_weights, weights, write_config
from test_train_distributed import free_port
from transformers import AutoTokenizer

from dpo_teach import cli
from dpo_teach.data import load_and_tokenize
from dpo_teach.errors import NonFiniteError
from dpo_teach.train.dpo import train_dpo
from dpo_teach.train.options import config_from_arguments


@pytest.fixture
def uninterrupted(tmp_path, saved_run_inputs):
    """The six steps of the small run, never interrupted."""
    output_dir = tmp_path / "uninterrupted"
    assert dpo(write_config(tmp_path / "uninterrupted.json", saved_run_inputs, output_dir)) == 0
    return output_dir


def test_2_resume_refuses_other_data_model_or_tokenizer_naming_them(tmp_path, saved_run_inputs, make_tiny_gpt2, capsys):
    """Item 2: the content of the training data, the starting model and its tokenizer are part of what resuming checks
    (same paths, other content: refused, naming it); identical content under a new modification time resumes."""
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir)
    assert dpo(config, "--max-steps", "2") == 0
    train, model = tmp_path / "inputs" / "train.jsonl", tmp_path / "inputs" / "model"
    original_data, original_model = train.read_bytes(), {path.name: path.read_bytes() for path in model.iterdir()}

    def restore_model() -> None:
        shutil.rmtree(model)
        model.mkdir()
        for name, content in original_model.items():
            (model / name).write_bytes(content)

    capsys.readouterr()
    train.write_bytes(original_data.replace(b"was great", b"was GREAT", 1))  # one word of one pair
    assert dpo(config) == 2
    message = capsys.readouterr().err
    assert f"the training examples {train} (fingerprint " in message and "Traceback" not in message
    assert "step-00000002 was written by a run that started from other inputs" in message

    train.write_bytes(original_data)  # the same content again, with a newer modification time
    make_tiny_gpt2(seed=1).save_pretrained(model)  # other weights under the same path
    assert dpo(config) == 2
    message = capsys.readouterr().err
    assert f": model {model} (fingerprint " in message and "training examples" not in message

    restore_model()
    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.add_tokens(["<extra>"])  # not in the data: only the tokenizer differs
    tokenizer.save_pretrained(model)
    assert dpo(config) == 2
    message = capsys.readouterr().err
    assert f": the tokenizer of model {model} (fingerprint " in message and "training examples" not in message

    restore_model()
    assert dpo(config) == 0  # everything as it was: the run continues
    assert "resuming from step 2" in capsys.readouterr().out


def test_3_long_prompts_are_truncated_and_counted(tmp_path, saved_run_inputs, tiny_tokenizer, capsys):
    """Item 3: a prompt of 200 tokens no longer stops the run; it is cut to max_prompt_length (keep_end: its last
    tokens) and the run says how many were."""
    train = tmp_path / "inputs" / "train.jsonl"
    pairs = [json.loads(line) for line in train.read_text().splitlines()]
    long_prompt = " ".join(f"word{index}" for index in range(100))
    prompt_ids = tiny_tokenizer(long_prompt, add_special_tokens=False)["input_ids"]
    assert len(prompt_ids) >= 200
    for pair in pairs[:5]:
        pair["prompt"] = long_prompt
    train.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    config = write_config(tmp_path / "config.json", saved_run_inputs, tmp_path / "run", max_steps=1, eval_every=0)
    assert dpo(config) == 0
    output = capsys.readouterr().out
    assert f"DPO: 5 of {len(pairs)} training prompts truncated to max_prompt_length=16 tokens (keep_end)" in output
    tokenized, truncated = load_and_tokenize(str(train), "preference", tiny_tokenizer, 32, 16, progress_bar=False)
    assert truncated == 5 and tokenized[0]["prompt_input_ids"] == prompt_ids[-16:]
    assert tokenized[5]["prompt_input_ids"] == tiny_tokenizer(pairs[5]["prompt"], add_special_tokens=False)["input_ids"]


BROKEN_FILES = ["state/model.safetensors", "state/optimizer.bin", "state/scheduler.bin", "state/random_states_0.pkl",
                "trainer_state.json"]  # fmt: skip


def test_4_a_broken_checkpoint_is_named_and_the_newest_intact_one_resumed(
    tmp_path, saved_run_inputs, uninterrupted, capsys
):
    """Item 4: half of any file of the newest checkpoint cut off (weights, optimizer, scheduler, trainer state, random
    streams): resuming names the file, continues from the older checkpoint and ends bit for bit where the
    uninterrupted run did (dropout on, so random streams that were not restored would show). With no checkpoint
    left that loads, it refuses."""
    stopped = tmp_path / "stopped"  # the run stopped after its checkpoint of step 4
    assert dpo(write_config(tmp_path / "stopped.json", saved_run_inputs, stopped), "--max-steps", "4") == 0
    for broken in BROKEN_FILES:
        output_dir = tmp_path / broken.replace("/", "-")
        shutil.copytree(stopped, output_dir)
        path = output_dir / "checkpoints" / "step-00000004" / broken
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        capsys.readouterr()
        assert dpo(write_config(tmp_path / "config.json", saved_run_inputs, output_dir)) == 0, broken
        output = capsys.readouterr().out
        assert f"step-00000004 is broken ({path}: " in output, (broken, output)
        assert "resuming from step-00000002, the newest that loads" in output and "resuming from step 2" in output
        assert same_weights(output_dir / "final", uninterrupted / "final"), broken
        assert metrics_without_timing(output_dir) == metrics_without_timing(uninterrupted), broken

    for step in ("step-00000002", "step-00000004"):
        path = stopped / "checkpoints" / step / "state" / "random_states_0.pkl"
        path.write_bytes(path.read_bytes()[:10])
    assert dpo(write_config(tmp_path / "config.json", saved_run_inputs, stopped)) == 2
    message = capsys.readouterr().err
    assert (
        "no checkpoint in" in message and "step-00000004 is broken" in message and "step-00000002 is broken" in message
    )


@pytest.mark.parametrize("field", ["learning_rate", "beta", "nll_weight", "simpo_gamma", "label_smoothing"])
def test_5_non_finite_settings_are_refused(field, capsys):
    """Item 5, settings: every float setting must be finite."""
    assert cli.main(["dpo", "--" + field.replace("_", "-"), "inf"]) == 2
    assert capsys.readouterr().err == f"dpo-teach dpo: error: {field}: must be a finite number, got inf\n"


def test_5_weights_that_are_not_finite_are_never_checkpointed(tmp_path, saved_run_inputs, capsys):
    """Item 5, weights: an update that overflows the weights (a finite but huge learning rate; the loss and gradient of
    step 1 are finite) writes no checkpoint; a run whose weights turn to inf after step 3 names step 2's checkpoint
    as the last good one, and that checkpoint is finite."""
    overflowing = write_config(tmp_path / "huge.json", saved_run_inputs, tmp_path / "huge", warmup_steps=0)
    # RMSprop's first update is about 10 x lr: 1e39, beyond float32's largest, 3.4e38
    assert dpo(overflowing, "--optimizer", "rmsprop", "--learning-rate", "1e38", "--save-every", "1") == 1
    message = capsys.readouterr().err
    assert "the weights are not finite after the update of step 1" in message
    assert "no checkpoint was written from them. Last good checkpoint: none yet" in message
    assert not list((tmp_path / "huge" / "checkpoints").glob("step-*"))

    def poison_after_step_3(step: int, model: torch.nn.Module) -> None:
        if step == 3:
            with torch.no_grad():
                next(model.parameters())[0, 0] = float("inf")

    config_file = write_config(tmp_path / "config.json", saved_run_inputs, tmp_path / "run", save_every=1)
    args = cli.build_parser().parse_args(["dpo", "--config", str(config_file)])
    good = tmp_path / "run" / "checkpoints" / "step-00000002"
    with pytest.raises(NonFiniteError, match=rf"after the update of step 3 .*Last good checkpoint: {good}\."):
        train_dpo(config_from_arguments(args.config_class, args), callbacks=[poison_after_step_3])
    assert sorted(path.name for path in good.parent.iterdir()) == ["step-00000001", "step-00000002"]
    assert all(torch.isfinite(tensor).all() for tensor in weights(good / "policy").values())


def test_6_a_torn_metrics_line_is_dropped_with_a_warning_and_rewritten(tmp_path, saved_run_inputs, uninterrupted):
    """Item 6: a run killed while appending to metrics.jsonl left half a line; resuming drops it with a warning naming
    the file and line, and rewrites the metrics from the checkpoint on: the file ends as the uninterrupted run's."""
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir)
    assert dpo(config, "--max-steps", "4") == 0
    metrics = output_dir / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(lines) + '\n{"step": 5, "loss": 0.6')  # killed in the middle of step 5's line
    with pytest.warns(UserWarning, match=rf"{metrics}, line {len(lines) + 1}: not a metrics record .*dropped"):
        assert dpo(config) == 0
    assert metrics_without_timing(output_dir) == metrics_without_timing(uninterrupted)


@pytest.mark.slow
def test_4_two_processes_fall_back_together_when_one_of_their_random_streams_is_broken(tmp_path, saved_run_inputs):
    """Item 4 under `accelerate launch` (2 gloo processes): only process 1's random streams of step 4 are cut short;
    both processes agree to resume from step 2 (one alone would deadlock the next all-reduce) and the run finishes."""
    accelerate = Path(sys.executable).with_name("accelerate")
    launch = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port())]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir, eval_every=0, precompute_ref=False)
    command = [*launch, "-m", "dpo_teach", "dpo", "--config", str(config)]
    run = {"capture_output": True, "text": True, "timeout": 600, "env": environment}
    stopped = subprocess.run([*command, "--max-steps", "4"], **run)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    path = output_dir / "checkpoints" / "step-00000004" / "state" / "random_states_1.pkl"
    path.write_bytes(path.read_bytes()[:20])
    resumed = subprocess.run(command, **run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"step-00000004 is broken ({path}: " in resumed.stdout
    assert resumed.stdout.count("resuming from step 2") == 1  # printed by the main process, for both
    assert [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]
