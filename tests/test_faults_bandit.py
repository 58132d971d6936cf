"""Bad input to the bandit's command and API gets a message for people, not a library traceback.

One test per case: a seed beyond int64 and zero threads are argparse usage errors (exit status 2, the
option named); a non-finite beta is refused before anything is solved; zero contexts are refused by name
instead of failing inside a reshape.
"""

import math

import pytest
import torch

from dpo_teach import bandit, cli
from dpo_teach.cli import MAX_SEED


def _usage_error(argv: list[str], capsys) -> str:
    """Run the command, require argparse's exit status 2, return what it printed to stderr."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_seed_beyond_int64_is_a_usage_error(capsys, tmp_path):
    """--seed 2^63 (and -1) exit 2 naming --seed and its range; the largest int64 seed runs and passes."""
    for seed in (str(MAX_SEED + 1), "-1"):
        printed = _usage_error(["bandit", "--seed", seed, "--out", str(tmp_path)], capsys)
        assert f"argument --seed: must be an integer in [0, {2**63 - 1}]" in printed, printed
    assert cli.main(["bandit", "--seed", str(MAX_SEED), "--out", str(tmp_path)]) == 0


def test_zero_threads_is_a_usage_error(capsys, tmp_path):
    """--threads 0 exits 2 naming --threads (torch.set_num_threads(0) would raise a RuntimeError)."""
    printed = _usage_error(["bandit", "--threads", "0", "--out", str(tmp_path)], capsys)
    assert "argument --threads: must be an integer >= 1, got 0" in printed, printed
    assert not (tmp_path / "bandit_checks.csv").exists(), "nothing runs after a usage error"


@pytest.mark.parametrize("beta", [math.inf, -math.inf, math.nan])
def test_solve_refuses_non_finite_beta(beta):
    """solve(beta=inf) used to report 'no finite minimizer ... none was ever preferred', which is false."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=0)
    with pytest.raises(ValueError, match=r"beta must be > 0 and finite, got"):
        bandit.solve(pi_ref, bandit.bradley_terry(reward), beta)
    with pytest.raises(ValueError, match=r"beta must be > 0 and finite"):
        bandit.optimal_policy(pi_ref, reward, beta)


def test_zero_contexts_are_refused_by_name():
    """C = 0 is refused with a message naming the argument, by every entry point that takes C."""
    with pytest.raises(ValueError, match=r"num_contexts must be an integer >= 1, got 0"):
        bandit.random_instance(0, 4)
    empty_table = torch.zeros(0, 4, dtype=torch.float64)
    empty_wins = torch.zeros(0, 4, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pi_ref must have at least one context and one response, got shape"):
        bandit.solve(empty_table, empty_wins, 1.0)
    with pytest.raises(ValueError, match=r"wins must have at least one context and two responses"):
        bandit.fit_reward_model(empty_wins)
    with pytest.raises(ValueError, match=r"wins must have at least one context and two responses"):
        bandit.has_finite_minimizer(empty_wins)
    with pytest.raises(ValueError, match=r"sampling_policy must have at least one context and one response"):
        bandit.sample_comparisons(empty_wins, empty_table, 5)
