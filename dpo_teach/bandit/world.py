"""The tabular world: policies and rewards as (C, K) tables, and the quantities defined on them.

A policy is a table ``pi`` of shape ``(C, K)`` whose rows sum to 1 (C contexts, K responses); a
reward is a table ``reward`` of shape ``(C, K)``. Everything is float64 so that checks can be made
to 1e-10. The input checks live here and every other module of ``dpo_teach.bandit`` uses them.
"""

from __future__ import annotations

import math
import numbers

import torch

DTYPE = torch.float64


def as_table(name: str, value: torch.Tensor) -> torch.Tensor:
    """Check that ``value`` is a (C, K) tensor with C, K >= 1 and return it as float64."""
    value = torch.as_tensor(value, dtype=DTYPE)
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (C, K), got {tuple(value.shape)}")
    if value.shape[0] < 1 or value.shape[1] < 1:
        raise ValueError(
            f"{name} must have at least one context and one response, got shape (C, K) = {tuple(value.shape)}"
        )
    return value


def as_pair_table(name: str, value: torch.Tensor, table_shape: torch.Size) -> torch.Tensor:
    """Check that ``value`` is (C, K, K) for a (C, K) table and return it as float64."""
    value = torch.as_tensor(value, dtype=DTYPE)
    num_contexts, num_responses = table_shape
    expected = (num_contexts, num_responses, num_responses)
    if value.shape != expected:
        raise ValueError(f"{name} must have shape (C, K, K) = {expected}, got {tuple(value.shape)}")
    return value


def as_wins(wins: torch.Tensor) -> torch.Tensor:
    """Check that ``wins`` is a (C, K, K) table of comparisons with C >= 1, K >= 2; return it as float64."""
    wins = torch.as_tensor(wins, dtype=DTYPE)
    if wins.dim() != 3 or wins.shape[1] != wins.shape[2]:
        raise ValueError(f"wins must have shape (C, K, K), got {tuple(wins.shape)}")
    if wins.shape[0] < 1 or wins.shape[1] < 2:
        raise ValueError(
            f"wins must have at least one context and two responses to compare, got shape {tuple(wins.shape)}"
        )
    return wins


def check_beta(beta: float) -> None:
    """beta must be > 0 and finite (beta -> inf is the limit pi* = pi_ref, which needs no computation)."""
    try:
        valid = math.isfinite(float(beta)) and float(beta) > 0
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(f"beta must be > 0 and finite, got {beta}")


def check_counts(**counts: int) -> None:
    """Each named count must be an integer >= 1; the message names the first that is not."""
    for name, count in counts.items():
        if not isinstance(count, numbers.Integral) or isinstance(count, bool) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")


def random_instance(
    num_contexts: int, num_responses: int, seed: int = 0, concentration: float = 1.0, reward_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random bandit: ``pi_ref ~ Dirichlet(concentration)`` per context, ``reward ~ N(0, reward_scale^2)``.

    Returns ``(pi_ref, reward)``, each ``(C, K)`` float64.
    """
    check_counts(num_contexts=num_contexts, num_responses=num_responses)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        alphas = torch.full((num_contexts, num_responses), concentration, dtype=DTYPE)
        pi_ref = torch.distributions.Dirichlet(alphas).sample()
        reward = reward_scale * torch.randn(num_contexts, num_responses, dtype=DTYPE)
    return pi_ref, reward


def kl_divergence(pi: torch.Tensor, pi_ref: torch.Tensor) -> torch.Tensor:
    """KL(pi(. | x) || pi_ref(. | x)) = sum_y pi log(pi / pi_ref), with 0 log 0 = 0; shape ``(C,)``."""
    pi, pi_ref = as_table("pi", pi), as_table("pi_ref", pi_ref)
    return (torch.xlogy(pi, pi) - torch.xlogy(pi, pi_ref)).sum(-1)


def rlhf_objective(pi: torch.Tensor, pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref) per context (notebook 2, Eq. 2.1; DPO Eq. 3); shape ``(C,)``.

    At the optimum pi* it equals beta log Z(x) (notebook 2, Eq. 2.4).
    """
    check_beta(beta)
    pi, reward = as_table("pi", pi), as_table("reward", reward)
    return (pi * reward).sum(-1) - beta * kl_divergence(pi, pi_ref)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = (1/2) sum_y |p(y) - q(y)| per context; shape ``(C,)``."""
    return 0.5 * (as_table("p", p) - as_table("q", q)).abs().sum(-1)


def bradley_terry(reward: torch.Tensor) -> torch.Tensor:
    """P[c, i, j] = sigma(r_i - r_j), the probability that i is preferred to j (notebook 1, Eq. 1.1; DPO Eq. 1).

    Shape ``(C, K, K)``; ``P + P^T = 1`` and the diagonal is 1/2.
    """
    reward = as_table("reward", reward)
    return torch.sigmoid(reward[:, :, None] - reward[:, None, :])


def deterministic_preferences(reward: torch.Tensor) -> torch.Tensor:
    """P[c, i, j] = 1 if r_i > r_j, 0 if r_i < r_j, 1/2 on ties: the beta -> 0 limit of Bradley-Terry.

    Shape ``(C, K, K)``. DPO has no finite minimizer on these (notebook 4).
    """
    reward = as_table("reward", reward)
    difference = reward[:, :, None] - reward[:, None, :]
    return (difference > 0).to(DTYPE) + 0.5 * (difference == 0).to(DTYPE)
