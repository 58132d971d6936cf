"""Closed-form optima on the table: pi* of the KL-constrained objective, its implicit reward, IPO's and cDPO's.

The KL-constrained RLHF objective (notebook 2, Eq. 2.1; DPO paper Eq. 3)

    J(pi) = E_{y ~ pi}[r(x, y)] - beta KL(pi(. | x) || pi_ref(. | x))

has the closed-form maximizer (notebook 2, Eq. 2.2; DPO paper Eq. 4)

    pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x),

and each function below is one such formula, computed stably (log-sum-exp, softmax).
"""

from __future__ import annotations

import torch

from dpo_teach.bandit.world import DTYPE, as_pair_table, as_table, check_beta


def log_partition_function(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z(x) = log sum_y pi_ref(y | x) exp(r(x, y) / beta), computed stably; shape ``(C,)``."""
    check_beta(beta)
    pi_ref, reward = as_table("pi_ref", pi_ref), as_table("reward", reward)
    return torch.logsumexp(torch.log(pi_ref) + reward / beta, dim=-1)


def partition_function(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """Z(x) = sum_y pi_ref(y | x) exp(r(x, y) / beta) (notebook 2, Eq. 2.3); shape ``(C,)``."""
    return torch.exp(log_partition_function(pi_ref, reward, beta))


def optimal_policy(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x) (DPO Eq. 4; notebook 2, Eq. 2.2); ``(C, K)``."""
    check_beta(beta)
    pi_ref, reward = as_table("pi_ref", pi_ref), as_table("reward", reward)
    return torch.softmax(torch.log(pi_ref) + reward / beta, dim=-1)


def implicit_reward(pi: torch.Tensor, pi_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """r_hat(x, y) = beta log(pi(y | x) / pi_ref(y | x)) (DPO Eq. 5; notebook 3, Eq. 3.1); ``(C, K)``.

    For pi = pi* this is r(x, y) - beta log Z(x): the true reward up to a per-context constant.
    """
    check_beta(beta)
    pi, pi_ref = as_table("pi", pi), as_table("pi_ref", pi_ref)
    return beta * (torch.log(pi) - torch.log(pi_ref))


def project_reward(reward: torch.Tensor, pi_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """The projection of DPO's Theorem 1: f(r)(x, y) = r(x, y) - beta log sum_y' pi_ref(y' | x) exp(r(x, y') / beta).

    f(r) differs from r by a constant per context (the same preferences, Lemma 1), equals the implicit reward
    beta log(pi_r / pi_ref) of pi_r = :func:`optimal_policy` for r, and f(f(r)) = f(r) (notebook 4e).
    Shapes: ``reward``, ``pi_ref`` (C, K) -> (C, K).
    """
    reward = as_table("reward", reward)
    return reward - beta * log_partition_function(pi_ref, reward, beta)[:, None]


def ipo_optimal_policy(pi_ref: torch.Tensor, preferences: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO's population optimum when every pair is compared equally often (notebook 4, Eq. 4.5).

    Here P_ij = preferences[c, i, j] and the loss is weighted as in ``solve``.

    Minimizing sum_{i != j} P_ij (h_ij - 1/(2 beta))^2 with P_ij + P_ji = 1 is a least-squares
    problem on the complete graph, solved by log(pi / pi_ref)_i = mean_j P_ij / beta + const.
    Shapes: ``pi_ref`` (C, K), ``preferences`` (C, K, K) -> (C, K).
    """
    check_beta(beta)
    pi_ref = as_table("pi_ref", pi_ref)
    preferences = as_pair_table("preferences", preferences, pi_ref.shape)
    return torch.softmax(torch.log(pi_ref) + preferences.mean(-1) / beta, dim=-1)


def cdpo_optimal_margin(preferences: torch.Tensor, label_smoothing: float, beta: float) -> torch.Tensor:
    """cDPO's optimal margin h* on two responses: beta h* = logit((1 - eps) P_01 + eps P_10) (notebook 4, Eq. 4.3).

    Only for K = 2, where the one pair is its own problem. With more responses the smoothed preferences
    are no longer Bradley-Terry, the pairs cannot all reach this margin at once, and the margins between
    far-apart responses exceed log((1 - eps) / eps) (notebook 4 measures 4.28 nats against 2.20 on a
    deterministic instance with K = 5); ``solve`` finds that optimum.

    Shape: ``preferences`` (C, 2, 2) -> (C,).
    """
    check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    preferences = torch.as_tensor(preferences, dtype=DTYPE)
    if preferences.dim() != 3 or preferences.shape[1:] != (2, 2) or preferences.shape[0] < 1:
        raise ValueError(f"preferences must have shape (C, 2, 2) with C >= 1, got {tuple(preferences.shape)}")
    smoothed = (1 - label_smoothing) * preferences[:, 0, 1] + label_smoothing * preferences[:, 1, 0]
    return torch.logit(smoothed) / beta


def length_normalized_optimum(
    pi_ref: torch.Tensor, reward: torch.Tensor, lengths: torch.Tensor, beta: float, iterations: int = 200
) -> torch.Tensor:
    """The minimizer of DPO on per-token mean log-probs, with every pair compared (notebook 4b, Eq. 4b.3).

    Feeding log pi(y) / L_y to the DPO loss (L_y the length of response y) makes a pair's margin
    u_i / L_i - u_j / L_j with u = log(pi / pi_ref). On Bradley-Terry preferences every pair's term is
    smallest when beta (u_i / L_i - u_j / L_j) = r_i - r_j, reached by u_y = L_y (r_y / beta + c) with the one
    constant c per context that normalizes pi:

        pi(y) = pi_ref(y) exp(L_y (r_y / beta + c)),   sum_y pi_ref(y) exp(L_y (r_y / beta + c)) = 1.

    The sum is increasing in c, so c is found by bisection (``iterations`` halvings of a bracket that
    holds it). Shapes: ``pi_ref``, ``reward``, ``lengths`` (C, K), lengths > 0 -> (C, K).
    """
    check_beta(beta)
    pi_ref, reward, lengths = as_table("pi_ref", pi_ref), as_table("reward", reward), as_table("lengths", lengths)
    if (lengths <= 0).any():
        raise ValueError("lengths must be > 0: a response has at least one token")
    scaled = reward / beta  # (C, K)

    def log_total(c: torch.Tensor) -> torch.Tensor:  # log sum_y pi_ref exp(L (r / beta + c)), (C,)
        return torch.logsumexp(torch.log(pi_ref) + lengths * (scaled + c[:, None]), dim=-1)

    # c = -max r / beta makes every exponent <= 0 (total <= 1); c = -min r / beta makes every one >= 0 (total >= 1).
    low, high = -scaled.max(-1).values, -scaled.min(-1).values
    for _ in range(iterations):
        middle = (low + high) / 2
        too_big = log_total(middle) > 0
        high, low = torch.where(too_big, middle, high), torch.where(too_big, low, middle)
    c = (low + high) / 2
    return torch.softmax(torch.log(pi_ref) + lengths * (scaled + c[:, None]), dim=-1)
