"""Plackett-Luce on the table (dpo_teach.bandit.rankings), and DPO on rankings recovering pi*.

Tolerances: identities to 1e-12; sampled frequencies within 5 standard errors; Newton's minimizer of the
ranking loss to 1e-8 of pi* (the acceptance of the pairwise checks).
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_teach import bandit, losses

DTYPE = torch.float64


def test_probabilities_sum_to_one_and_match_the_sequential_definition():
    """sum over all K! rankings is 1; each equals the product of 'best of the remaining' choices, by a loop."""
    _, reward = bandit.random_instance(3, 4, seed=0)
    rankings = bandit.all_rankings(4)
    assert rankings.shape == (24, 4)
    probabilities = bandit.plackett_luce_probabilities(reward)  # (C, 24)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(3, dtype=DTYPE), atol=1e-12, rtol=0)
    for context in range(3):
        for index, ranking in enumerate(rankings.tolist()):
            probability, remaining = 1.0, list(ranking)
            for response in ranking:
                strengths = [math.exp(reward[context, other].item()) for other in remaining]
                probability *= math.exp(reward[context, response].item()) / sum(strengths)
                remaining.remove(response)
            assert abs(probabilities[context, index].item() - probability) <= 1e-12


def test_two_responses_is_bradley_terry_and_the_loss_is_dpo():
    """K = 2: p((i, j)) = sigma(r_i - r_j), and the ranking loss equals dpo_loss."""
    _, reward = bandit.random_instance(5, 2, seed=1)
    probabilities = bandit.plackett_luce_probabilities(reward)  # rankings (0, 1), (1, 0)
    torch.testing.assert_close(probabilities[:, 0], bandit.bradley_terry(reward)[:, 0, 1], atol=1e-12, rtol=0)
    policy, reference = torch.randn(7, 2, dtype=DTYPE), torch.randn(7, 2, dtype=DTYPE)
    ranked = bandit.plackett_luce_dpo_loss(policy, reference, beta=0.3)
    pairwise = losses.dpo_loss(policy[:, 0], policy[:, 1], reference[:, 0], reference[:, 1], beta=0.3).losses
    torch.testing.assert_close(ranked, pairwise, atol=1e-12, rtol=0)


def test_partition_function_cancels():
    """The implicit reward of pi*, r - beta log Z, gives every ranking the probability the true reward gives."""
    pi_ref, reward = bandit.random_instance(4, 4, seed=2)
    beta = 0.7
    implicit = bandit.implicit_reward(bandit.optimal_policy(pi_ref, reward, beta), pi_ref, beta)
    torch.testing.assert_close(
        bandit.plackett_luce_probabilities(implicit), bandit.plackett_luce_probabilities(reward), atol=1e-12, rtol=0
    )


def test_sampled_rankings_follow_plackett_luce():
    """Gumbel-sorted rankings: each of the 6 rankings of 3 responses within 5 standard errors of its probability."""
    _, reward = bandit.random_instance(2, 3, seed=3)
    samples = bandit.sample_rankings(reward, 100_000, seed=0)  # (C, n, K)
    rankings = bandit.all_rankings(3)
    matches = (samples[:, :, None, :] == rankings[None, None]).all(-1)  # (C, n, 6)
    frequencies = matches.double().mean(1)
    expected = bandit.plackett_luce_probabilities(reward)
    standard_error = (expected * (1 - expected) / 100_000).sqrt()
    assert ((frequencies - expected).abs() <= 5 * standard_error).all()


@pytest.mark.parametrize("beta", [0.2, 1.0])
def test_dpo_on_rankings_recovers_the_optimal_policy(beta):
    """Newton's method on the expected ranking loss (all 24 rankings of 4 responses, Plackett-Luce weights)
    ends at pi* = pi_ref exp(r / beta) / Z to 1e-8."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=4)
    rankings = bandit.all_rankings(4)
    weights = bandit.plackett_luce_probabilities(reward)  # (C, R)
    log_ref = pi_ref.log()

    def expected_loss(theta_flat: torch.Tensor) -> torch.Tensor:
        log_pi = torch.log_softmax(theta_flat.view(3, 4), -1)
        per_ranking = bandit.plackett_luce_dpo_loss(
            log_pi[:, rankings].reshape(-1, 4), log_ref[:, rankings].reshape(-1, 4), beta
        ).view(3, -1)
        return (weights * per_ranking).sum()

    theta = log_ref.flatten().clone()
    for _ in range(30):
        gradient = torch.autograd.functional.jacobian(expected_loss, theta)
        hessian = torch.autograd.functional.hessian(expected_loss, theta)
        constants = torch.block_diag(*[torch.ones(4, 4, dtype=DTYPE) / 4] * 3)  # the invisible per-context shifts
        theta = theta - torch.linalg.solve(hessian + constants, gradient)
    policy = torch.softmax(theta.view(3, 4), -1)
    torch.testing.assert_close(policy, bandit.optimal_policy(pi_ref, reward, beta), atol=1e-8, rtol=0)


def test_bad_shapes_are_refused():
    """The ranking loss needs two (N, K) tables of the same shape; all_rankings refuses a huge K."""
    with pytest.raises(ValueError, match=r"must both have shape \(N, K\)"):
        bandit.plackett_luce_dpo_loss(torch.zeros(3, 4), torch.zeros(3, 5), beta=1.0)
    with pytest.raises(ValueError, match="K! rankings"):
        bandit.all_rankings(12)
