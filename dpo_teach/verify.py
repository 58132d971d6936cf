"""The exact-optimum checks of the tabular bandit, as rows of a table (``dpo-teach bandit``).

Each check solves a loss of ``dpo_teach.losses`` on random instances with ``dpo_teach.bandit.solve``
and compares the solution with an optimum derived by hand (notebooks 2-4):

- DPO on Bradley-Terry preferences recovers pi* = pi_ref exp(r / beta) / Z (DPO Eq. 4);
- the RLHF objective at pi* equals beta log Z (notebook 2, Eq. 2.4);
- cDPO with label smoothing eps on two responses reaches beta h* = logit((1 - eps) p + eps (1 - p));
- IPO reaches pi_ref exp(pbar / beta) / Z with pbar_i = mean_j P_ij (notebook 4, Eq. 4.5);
- on deterministic preferences DPO reports that no finite minimizer exists, IPO and cDPO converge.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from dpo_teach import bandit

# The default sweep: a large instance for the timing target and smaller ones across beta.
DEFAULT_SIZES = ((100, 50), (20, 10), (5, 3))
DEFAULT_BETAS = (0.1, 0.5, 1.0, 5.0)
POLICY_TOLERANCE = 1e-8  # max |pi - pi*|: what the README promises for every solve (round-off is ~1e-15)
OBJECTIVE_TOLERANCE = 1e-10  # max |J(pi*) - beta log Z|


@dataclass
class Check:
    """One row: what was checked, on which instance, what was measured and what was required."""

    name: str
    contexts: int
    responses: int
    beta: float
    measured: float
    required: str
    iterations: int
    seconds: float
    passed: bool


def _timed_solve(pi_ref, wins, beta, **kwargs):
    start = time.perf_counter()
    result = bandit.solve(pi_ref, wins, beta, **kwargs)
    return result, time.perf_counter() - start


def _error_row(name, shape, beta, error, tolerance, result=None, seconds=0.0) -> Check:
    iterations = result.iterations if result is not None else 0
    passed = error <= tolerance and (result is None or result.converged)
    return Check(name, *shape, beta, error, f"<= {tolerance:.0e}", iterations, seconds, passed)


def run_checks(sizes=DEFAULT_SIZES, betas=DEFAULT_BETAS, seed: int = 0, label_smoothing: float = 0.1) -> list[Check]:
    """Run every check on random instances (Dirichlet pi_ref, Gaussian rewards); returns the rows."""
    rows = []
    for index, (contexts, responses) in enumerate(sizes):
        pi_ref, reward = bandit.random_instance(contexts, responses, seed=seed + index)
        shape = (contexts, responses)
        preferences = bandit.bradley_terry(reward)
        for beta in betas:
            optimum = bandit.optimal_policy(pi_ref, reward, beta)
            result, seconds = _timed_solve(pi_ref, preferences, beta)
            error = (result.policy - optimum).abs().max().item()
            rows.append(_error_row("max|pi_DPO - pi*|", shape, beta, error, POLICY_TOLERANCE, result, seconds))
            gap = bandit.rlhf_objective(optimum, pi_ref, reward, beta) - beta * bandit.log_partition_function(
                pi_ref, reward, beta
            )
            rows.append(
                _error_row("max|J(pi*) - beta log Z|", shape, beta, gap.abs().max().item(), OBJECTIVE_TOLERANCE)
            )
            result, seconds = _timed_solve(pi_ref, preferences, beta, loss="ipo")
            error = (result.policy - bandit.ipo_optimal_policy(pi_ref, preferences, beta)).abs().max().item()
            rows.append(_error_row("max|pi_IPO - closed form|", shape, beta, error, POLICY_TOLERANCE, result, seconds))

    pi_ref, reward = bandit.random_instance(50, 2, seed=seed + len(sizes))
    preferences = bandit.bradley_terry(reward)
    for beta in betas:
        result, seconds = _timed_solve(pi_ref, preferences, beta, label_smoothing=label_smoothing)
        margin = (result.theta[:, 0] - result.theta[:, 1]) - (pi_ref[:, 0].log() - pi_ref[:, 1].log())
        error = (margin - bandit.cdpo_optimal_margin(preferences, label_smoothing, beta)).abs().max().item()
        name = f"max|h_cDPO - h*|, eps={label_smoothing}"
        rows.append(_error_row(name, (50, 2), beta, error, POLICY_TOLERANCE, result, seconds))

    pi_ref, reward = bandit.random_instance(10, 5, seed=seed + len(sizes) + 1)
    hard = bandit.deterministic_preferences(reward)
    for beta in betas:
        dpo, seconds = _timed_solve(pi_ref, hard, beta)
        reported = not dpo.converged and dpo.message.startswith("no finite minimizer")
        with_minimizer = float(bandit.has_finite_minimizer(hard, beta).sum())
        rows.append(
            Check(
                "deterministic: DPO contexts w/ min", 10, 5, beta, with_minimizer, "0, reported", 0, seconds, reported
            )
        )
        for name, kwargs in (("IPO", {"loss": "ipo"}), ("cDPO", {"label_smoothing": label_smoothing})):
            result, seconds = _timed_solve(pi_ref, hard, beta, **kwargs)
            smallest = result.policy.min().item()
            rows.append(
                Check(
                    f"deterministic: {name} min pi",
                    10,
                    5,
                    beta,
                    smallest,
                    "> 0, converged",
                    result.iterations,
                    seconds,
                    result.converged and smallest > 0,
                )
            )
    return rows


def format_table(rows: list[Check]) -> str:
    """The rows as a fixed-width text table."""
    header = (
        f"{'check':<34} {'C':>4} {'K':>3} {'beta':>5} {'measured':>9} {'required':>15} {'iters':>5} {'time s':>7}  ok"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(
            f"{row.name:<34} {row.contexts:>4} {row.responses:>3} {row.beta:>5g} {row.measured:>9.2e} "
            f"{row.required:>15} {row.iterations:>5} {row.seconds:>7.3f}  {'yes' if row.passed else 'NO'}"
        )
    return "\n".join(lines)
