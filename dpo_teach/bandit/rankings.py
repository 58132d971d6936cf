"""Rankings of K responses: the Plackett-Luce model and DPO's loss on rankings (DPO paper App. A.3; notebook 4e).

A ranking tau of one context's K responses lists them best first, tau = (tau_1, ..., tau_K). Plackett-Luce
picks the best response with probability proportional to exp(r), then the best of the rest, and so on:

    p(tau | x) = prod_{k=1}^{K} exp(r(x, tau_k)) / sum_{j=k}^{K} exp(r(x, tau_j)),

which for K = 2 is Bradley-Terry (notebook 1, Eq. 1.1). With r = beta log(pi / pi_ref) + beta log Z(x) the
beta log Z(x) of every factor cancels between numerator and denominator, as in a pair, which gives DPO's
loss on rankings, :func:`plackett_luce_dpo_loss`.
"""

from __future__ import annotations

import itertools
import math

import torch

from dpo_teach.bandit.world import DTYPE, as_table, check_beta, check_counts


def all_rankings(num_responses: int) -> torch.Tensor:
    """Every ranking of K responses, in lexicographic order: (K!, K) long. Meant for small K (K! rows)."""
    check_counts(num_responses=num_responses)
    if num_responses > 8:
        raise ValueError(f"all_rankings lists K! rankings; K = {num_responses} gives {math.factorial(num_responses)}")
    return torch.tensor(list(itertools.permutations(range(num_responses))), dtype=torch.long)


def _suffix_logsumexp(scores: torch.Tensor) -> torch.Tensor:
    """out[..., k] = log sum_{j >= k} exp(scores[..., j]); (..., K) -> (..., K)."""
    return torch.logcumsumexp(scores.flip(-1), dim=-1).flip(-1)


def plackett_luce_log_likelihood(scores: torch.Tensor) -> torch.Tensor:
    """log p(tau) = sum_k [s_k - log sum_{j >= k} exp(s_j)] for scores listed in ranking order; (N, K) -> (N,).

    ``scores[n, k]`` is the reward of the response ranked k-th in ranking n (so the order of the columns *is*
    the ranking). Plackett-Luce, as in the module docstring.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (N, K), listed in ranking order, got {tuple(scores.shape)}")
    return (scores - _suffix_logsumexp(scores)).sum(-1)


def plackett_luce_probabilities(reward: torch.Tensor, rankings: torch.Tensor | None = None) -> torch.Tensor:
    """p(tau | x_c) for every context c and ranking tau of ``rankings`` (default :func:`all_rankings`); (C, R).

    ``reward`` (C, K); ``rankings`` (R, K) long.
    """
    reward = as_table("reward", reward)
    rankings = all_rankings(reward.shape[1]) if rankings is None else rankings
    ordered = reward[:, rankings]  # (C, R, K): reward of the k-th ranked response
    return plackett_luce_log_likelihood(ordered.reshape(-1, reward.shape[1])).reshape(ordered.shape[:2]).exp()


def sample_rankings(reward: torch.Tensor, num_rankings: int, seed: int = 0) -> torch.Tensor:
    """Draw ``num_rankings`` Plackett-Luce rankings per context; (C, K) -> (C, n, K) long, best first.

    Gumbel trick: sorting r + G, with G i.i.d. standard Gumbel, in decreasing order gives a Plackett-Luce
    ranking (the argmax of r + G is response y with probability softmax(r)_y, and the rest is again Gumbel).
    """
    reward = as_table("reward", reward)
    check_counts(num_rankings=num_rankings)
    generator = torch.Generator().manual_seed(seed)
    uniform = torch.rand((*reward.shape[:1], num_rankings, reward.shape[1]), generator=generator, dtype=DTYPE)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(DTYPE).tiny)))  # (C, n, K)
    return torch.argsort(reward[:, None, :] + gumbel, dim=-1, descending=True)


def plackett_luce_dpo_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's loss on a ranking (DPO paper App. A.3), per ranking; (N, K), (N, K) -> (N,).

        loss = -sum_{k=1}^{K} log [ exp(beta u_k) / sum_{j=k}^{K} exp(beta u_j) ]

    with u_k = log pi(tau_k) - log pi_ref(tau_k): the negative Plackett-Luce log-likelihood of the implicit
    rewards beta u. ``policy_logps[n, k]`` and ``ref_logps[n, k]`` are the log-probs of the response ranked
    k-th in ranking n. For K = 2 it is ``dpo_loss``: -log sigma(beta h) with h = u_1 - u_2.
    """
    check_beta(beta)
    if policy_logps.dim() != 2 or policy_logps.shape != ref_logps.shape:
        raise ValueError(
            f"policy_logps and ref_logps must both have shape (N, K), got {tuple(policy_logps.shape)} and "
            f"{tuple(ref_logps.shape)}"
        )
    return -plackett_luce_log_likelihood(beta * (policy_logps - ref_logps))
