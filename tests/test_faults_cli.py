"""Faults met at the command line, issue 12 items 7-10: YAML values of the wrong type, files that are not UTF-8, the
project's errors as one line with an exit code (a full disk among them), Ctrl-C and a rerun asking for fewer steps."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
from accelerate import Accelerator
from fault_helpers import dpo, metrics_without_timing, same_weights, snapshot, weights, write_config

from dpo_teach import cli
from dpo_teach.data import load_examples
from dpo_teach.errors import DataError


def error_lines(stderr: str) -> list[str]:
    """The lines the command printed about an error (stderr also holds transformers' progress bars)."""
    return [line for line in stderr.splitlines() if line.startswith("dpo-teach ") or "Traceback" in line]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("batch_size: true", "batch_size: must be an int, got True (bool)"),
        ("max_prompt_length: 16.0", "max_prompt_length: must be an int, got 16.0 (float)"),
        ("max_steps: 2.5", "max_steps: must be an int, got 2.5 (float)"),
        ("beta: [0.1]", "beta: must be a float, got [0.1] (list)"),
        ("learning_rate: null", "learning_rate: must be a float, got None (NoneType)"),
        ("disable_dropout: 1", "disable_dropout: must be a bool, got 1 (int)"),
        ("model: 3", "model: must be a str, got 3 (int)"),
    ],
)
def test_7_yaml_values_are_checked_against_their_field_types(tmp_path, line, expected, capsys):
    """Item 7: every YAML value is checked against its field's type before anything runs (a bool is no int, nor are
    2.5 and 16.0); the error names the file and the field."""
    config = tmp_path / "dpo.yaml"
    config.write_text(f"{line}\n")
    assert cli.main(["dpo", "--config", str(config)]) == 2
    assert capsys.readouterr().err == f"dpo-teach dpo: error: {config}: {expected}\n"


def test_8_lines_that_are_not_utf8_are_named_and_skippable_and_a_bom_is_accepted(tmp_path):
    """Item 8: a UTF-8 byte-order mark is accepted; a line in another encoding is a DataError naming file, row and
    line, which --skip-invalid skips like any invalid row."""
    pair = {"prompt": "The film", "chosen": " was great.", "rejected": " was dull."}
    good = json.dumps(pair).encode()
    with_bom = tmp_path / "bom.jsonl"
    with_bom.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + good + b"\n")
    assert load_examples(with_bom) == ([pair, pair], 0)

    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(good + b"\n" + good + b"\n" + '{"prompt": "Caf\u00e9", "chosen": " a"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match=rf"^{latin}, row 2 \(line 3\): not UTF-8 \(byte 0xe9 at byte 16 of the line\)"):
        load_examples(latin)
    with pytest.warns(UserWarning, match=r"skipped 1 invalid examples from .*latin\.jsonl"):
        assert load_examples(latin, skip_invalid=True) == ([pair, pair], 1)


def test_9_errors_are_one_line_with_exit_code_2_and_a_traceback_only_with_debug(tmp_path, saved_run_inputs, capsys):
    """Item 9: the project's errors (data, config, a run directory it will not continue, an output path that is a file)
    are one line naming what to change, with exit code 2; --debug raises them with their traceback instead."""
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "Caf\xe9", "chosen": " a", "rejected": " b"}\n')
    config = write_config(tmp_path / "config.json", saved_run_inputs, tmp_path / "run", train_data=str(latin))
    cases = {
        "data": ([], f"{latin}, row 0 (line 1): not UTF-8"),
        "config": (["--batch-size", "0"], "batch_size: must be > 0, got 0"),
        "model": (["--model", str(tmp_path / "nowhere")], f"model: cannot load '{tmp_path / 'nowhere'}' ("),
        "output_dir": (["--output-dir", str(latin)], f"output_dir: {latin} is a file, or lies under one"),
    }
    for what, (options, fragment) in cases.items():
        capsys.readouterr()
        assert dpo(config, *options) == 2, what
        printed = error_lines(capsys.readouterr().err)
        assert len(printed) == 1 and printed[0].startswith("dpo-teach dpo: error: ") and fragment in printed[0], what
    assert cli.main(["frontier", "--out", str(latin)]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"dpo-teach frontier: error: --out: {latin} is a file, or lies under one; give a directory (it is created if "
        "missing)"
    ]
    with pytest.raises(DataError, match=rf"^{latin}, row 0 \(line 1\): not UTF-8"):
        dpo(config, "--debug")


def test_9_a_full_disk_during_a_checkpoint_is_named_and_the_previous_one_kept(
    tmp_path, saved_run_inputs, monkeypatch, capsys
):
    """Item 9, disk full: writing the checkpoint of step 4 fails with ENOSPC. The command says so in one line naming the
    path and the intact previous checkpoint, exits 1, leaves no half checkpoint; with space again, the same command
    resumes from step 2."""
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir, eval_every=0)
    save_state = Accelerator.save_state

    def full_disk_at_step_4(self, output_dir: str, **kwargs):
        if "step-00000004" in output_dir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{output_dir}/optimizer.bin")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_disk_at_step_4)
    assert dpo(config) == 1
    checkpoints = output_dir / "checkpoints"
    partial = checkpoints / ".incomplete-step-00000004"
    assert error_lines(capsys.readouterr().err) == [
        f"dpo-teach dpo: error: disk full while writing the checkpoint of step 4 to {partial} "
        f"({partial}/state/optimizer.bin); the previous checkpoint, {checkpoints / 'step-00000002'}, is intact. "
        "Free space on that disk and run the same command again to resume"
    ]
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step-00000002"]
    assert weights(checkpoints / "step-00000002" / "policy")
    monkeypatch.undo()
    assert dpo(config) == 0
    assert "resuming from step 2" in capsys.readouterr().out


INTERRUPTING_LAUNCHER = textwrap.dedent(
    """
    import os, signal, sys

    from dpo_teach import cli
    from dpo_teach.train import dpo

    step = int(sys.argv[1])  # Ctrl-C in the forward pass of optimizer step `step` (one micro-batch per step)
    original_call, calls = dpo.DPOObjective.__call__, []

    def call(self, model, batch):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGINT)
        return original_call(self, model, batch)

    dpo.DPOObjective.__call__ = call
    sys.exit(cli.main(sys.argv[2:]))
    """
)


def launch(tmp_path, config, step: int = 0) -> subprocess.CompletedProcess:
    """``dpo-teach dpo --config CONFIG`` in a fresh process that receives SIGINT in step ``step`` (never if 0)."""
    launcher = tmp_path / "launcher.py"
    launcher.write_text(INTERRUPTING_LAUNCHER)
    command = [sys.executable, str(launcher), str(step), "dpo", "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_10_ctrl_c_stops_after_the_step_with_its_checkpoint_and_resuming_is_exact(tmp_path, saved_run_inputs):
    """Item 10, SIGINT: Ctrl-C in the middle of step 3 lets step 3 finish, writes its checkpoint (off the save_every
    schedule), prints the command that resumes and exits 130; resuming ends bit for bit as the uninterrupted run, with
    dropout on (the random streams saved are those the uninterrupted step 4 starts from)."""
    uninterrupted = tmp_path / "uninterrupted"
    finished = launch(tmp_path, write_config(tmp_path / "uninterrupted.json", saved_run_inputs, uninterrupted))
    assert finished.returncode == 0, finished.stderr

    output_dir = tmp_path / "interrupted"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir)
    interrupted = launch(tmp_path, config, step=3)
    assert interrupted.returncode == 130, interrupted.stderr
    checkpoint = output_dir / "checkpoints" / "step-00000003"
    assert "Traceback" not in interrupted.stderr
    assert (
        f"dpo-teach dpo: DPO: stopped by Ctrl-C after step 3 of 6; its checkpoint {checkpoint} lets the same run "
        f"(resume: true) continue as if never stopped; to resume, run the same command again: dpo-teach dpo --config "
        f"{config}" in interrupted.stderr
    )
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == ["step-00000002", "step-00000003"]

    resumed = launch(tmp_path, config)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step 3" in resumed.stdout
    assert same_weights(output_dir / "final", uninterrupted / "final")
    assert metrics_without_timing(output_dir) == metrics_without_timing(uninterrupted)


def test_10_a_rerun_with_fewer_steps_than_done_is_refused(tmp_path, saved_run_inputs, capsys):
    """Item 10, a smaller --max-steps: a finished run of 4 steps is not turned into a "2-step" run with the 4-step
    final model; it is refused, naming max_steps, and nothing in the run directory changes."""
    output_dir = tmp_path / "run"
    config = write_config(tmp_path / "config.json", saved_run_inputs, output_dir, max_steps=4)
    assert dpo(config) == 0
    before = snapshot(output_dir)
    capsys.readouterr()
    assert dpo(config, "--max-steps", "2") == 2
    assert error_lines(capsys.readouterr().err) == [
        f"dpo-teach dpo: error: max_steps: {output_dir / 'checkpoints' / 'step-00000004'} has already taken 4 steps, "
        "more than max_steps=2; a run is not shortened by rewriting its final model. Use another output_dir (or give "
        "max_steps >= 4)."
    ]
    assert snapshot(output_dir) == before
