"""The `dpo-teach` command: its checks pass, it writes its table and figure, its help documents it."""

import csv

import pytest

from dpo_teach import cli


def test_bandit_command_passes_and_writes_outputs(tmp_path, capsys):
    """`dpo-teach bandit` exits 0, prints every check as passed and writes the CSV and the PNG."""
    status = cli.main(["bandit", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert status == 0, printed
    with (tmp_path / "bandit_checks.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(row["passed"] == "True" for row in rows)
    assert {"max|pi_DPO - pi*|", "max|J(pi*) - beta log Z|", "max|pi_IPO - closed form|"} <= {r["name"] for r in rows}
    assert any(row["name"] == "max|pi_DPO - pi*|" and row["contexts"] == "100" for row in rows)
    assert "slowest DPO solve at C=100, K=50" in printed
    assert (tmp_path / "bandit.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_documents_every_bandit_option(capsys):
    """`dpo-teach bandit --help` names every option with its help text."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bandit", "--help"])
    assert stopped.value.code == 0
    printed = capsys.readouterr().out
    for option in ("--out", "--seed", "--threads"):
        assert option in printed


def test_unknown_command_is_an_error(capsys):
    """An unknown command exits with argparse's usage error, not a traceback."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["frontier-typo"])
    assert stopped.value.code == 2
