"""Finite preference data on the table: rows from counts, the chosen-response reference, online pairs.

Tolerances: exact identities to 1e-12; sampled frequencies within 5 standard errors of their probabilities.
"""

from __future__ import annotations

import pytest
import torch

from dpo_teach import bandit

DTYPE = torch.float64


def test_comparison_rows_list_every_count_once():
    """Rows (context, chosen, rejected) recount to the same wins table, sorted by context."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=0)
    wins = bandit.sample_comparisons(bandit.bradley_terry(reward), pi_ref, 50, seed=0)
    rows = bandit.comparison_rows(wins)
    assert rows.shape == (150, 3) and rows.dtype == torch.long
    recounted = torch.zeros_like(wins)
    for context, chosen, rejected in rows.tolist():
        recounted[context, chosen, rejected] += 1
    torch.testing.assert_close(recounted, wins, atol=0, rtol=0)
    assert (rows[1:, 0] >= rows[:-1, 0]).all()
    with pytest.raises(ValueError, match="whole, non-negative counts"):
        bandit.comparison_rows(wins * 0.5 + 0.25)


def test_chosen_policy_is_the_smoothed_mle_of_the_chosen_responses():
    """(times chosen + pseudo count) / (comparisons + K pseudo count); it maximizes the smoothed log-likelihood."""
    wins = torch.tensor([[[0, 3, 1], [0, 0, 2], [4, 0, 0]]], dtype=DTYPE)
    torch.testing.assert_close(
        bandit.chosen_policy(wins, pseudo_count=1.0),
        torch.tensor([[5.0, 3.0, 5.0]], dtype=DTYPE) / 13,
        atol=1e-15,
        rtol=0,
    )
    counts = wins.sum(-1) + 0.5  # smoothed counts of chosen responses
    mle = bandit.chosen_policy(wins, pseudo_count=0.5).log().requires_grad_(True)
    (gradient,) = torch.autograd.grad(-(counts * torch.log_softmax(mle, -1)).sum(), mle)
    assert gradient.abs().max() <= 1e-12
    with pytest.raises(ValueError, match="pseudo_count must be > 0"):
        bandit.chosen_policy(wins, pseudo_count=0.0)


def test_chosen_policy_of_population_data_is_best_of_two():
    """With expected counts from pairs of pi_ref, the chosen responses follow best-of-2 sampling from pi_ref:
    p(y) = 2 sum_{j != y} pi(y) pi(j) P(y > j) / (1 - sum pi^2), up to the vanishing pseudo count."""
    pi_ref, reward = bandit.random_instance(4, 5, seed=1)
    preferences = bandit.bradley_terry(reward)
    pair = pi_ref[:, :, None] * pi_ref[:, None, :] * (1 - torch.eye(5, dtype=DTYPE))
    expected = 1e12 * pair * preferences / pair.sum((1, 2), keepdim=True)  # counts of 1e12 comparisons
    best_of_two = 2 * (pair * preferences).sum(-1) / pair.sum((1, 2))[:, None]
    torch.testing.assert_close(bandit.chosen_policy(expected, pseudo_count=1e-3), best_of_two, atol=1e-12, rtol=0)


def test_sample_labelled_pairs_follow_the_policy_and_the_labels():
    """Pairs y1 != y2 come from the policy, the chosen one with Bradley-Terry probability (5 standard errors)."""
    policy, reward = bandit.random_instance(2, 3, seed=2, concentration=3.0)
    preferences = bandit.bradley_terry(reward)
    generator = torch.Generator().manual_seed(0)
    contexts, chosen, rejected = bandit.sample_labelled_pairs(preferences, policy, 200_000, generator)
    assert (chosen != rejected).all()
    pair = policy[:, :, None] * policy[:, None, :] * (1 - torch.eye(3, dtype=DTYPE))
    # P(context c, chosen i, rejected j) = 1/2 (q_ij + q_ji) P_ij with q the pair probabilities (symmetric)
    expected = pair / pair.sum((1, 2), keepdim=True) * preferences
    counts = torch.zeros(2, 3, 3, dtype=DTYPE).index_put_(
        (contexts, chosen, rejected), torch.ones(200_000, dtype=DTYPE), accumulate=True
    )
    frequencies = counts / 200_000
    standard_error = (expected * (1 - expected) / 200_000).sqrt()
    assert ((frequencies - expected).abs() <= 5 * standard_error + 1e-12).all()
