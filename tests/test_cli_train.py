"""`dpo-teach sft` and `dpo-teach dpo`: config file plus overrides, documented options, errors that name the field."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from dpo_teach import cli
from dpo_teach.train.config import DPOConfig, SFTConfig
from dpo_teach.train.options import field_docs


@pytest.mark.parametrize(("command", "config_class"), [("sft", SFTConfig), ("dpo", DPOConfig)])
def test_help_documents_every_option_with_its_default(command, config_class, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--help"])
    assert stopped.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    docs = field_docs(config_class)
    for field in dataclasses.fields(config_class):
        assert f"--{field.name.replace('_', '-')}" in printed
        assert docs[field.name], f"{field.name} has no docstring"
        assert " ".join(docs[field.name].split()[:6]) in printed
        assert f"(default: {field.default})" in printed


def test_a_config_file_with_command_line_overrides_trains(tmp_path, saved_run_inputs, capsys):
    config_path = tmp_path / "dpo.yaml"
    config_path.write_text(
        yaml.safe_dump({**saved_run_inputs, "output_dir": str(tmp_path / "run"), "max_steps": 50, "batch_size": 8,
                        "eval_every": 0, "progress_bar": False, "max_length": 32, "max_prompt_length": 16})
    )  # fmt: skip
    status = cli.main(["dpo", "--config", str(config_path), "--max-steps", "2", "--loss", "ipo", "--resume", "false"])
    assert status == 0
    assert "final model:" in capsys.readouterr().out
    state = json.loads((tmp_path / "run" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["config"]["max_steps"] == 2 and state["config"]["loss"] == "ipo"  # overrides win
    assert state["config"]["batch_size"] == 8 and state["config"]["resume"] is False  # the file's values stay


def test_an_unknown_key_in_the_config_file_names_the_file_and_key(tmp_path, capsys):
    config_path = tmp_path / "sft.yaml"
    config_path.write_text("learning_rat: 0.1\n")
    assert cli.main(["sft", "--config", str(config_path)]) == 2
    assert "sft.yaml: unknown config field(s) ['learning_rat']" in capsys.readouterr().err


def test_a_bad_value_names_the_field(capsys):
    assert cli.main(["dpo", "--beta", "-1"]) == 2
    assert capsys.readouterr().err == "dpo-teach dpo: error: beta: must be > 0, got -1.0\n"
    with pytest.raises(SystemExit):
        cli.main(["dpo", "--precompute-ref", "maybe"])


def test_yaml_numbers_are_read_as_the_field_types(tmp_path):
    """YAML 1.1 reads `1e-6` as a string and `1` as an int: both become the field's type, as on the command line."""
    from dpo_teach.train.options import config_from_arguments

    config_path = tmp_path / "dpo.yaml"
    config_path.write_text("learning_rate: 1e-6\nbeta: 1\nmax_steps: '20'\nprecompute_ref: 'false'\n")
    args = cli.build_parser().parse_args(["dpo", "--config", str(config_path)])
    config = config_from_arguments(DPOConfig, args)
    assert (config.learning_rate, config.beta, config.max_steps, config.precompute_ref) == (1e-6, 1.0, 20, False)
    config_path.write_text("max_steps: many\n")
    with pytest.raises(ValueError, match=r"dpo\.yaml: max_steps: invalid literal"):
        config_from_arguments(DPOConfig, cli.build_parser().parse_args(["dpo", "--config", str(config_path)]))
