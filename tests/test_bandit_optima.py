"""Closed forms added for the later bandit notebooks: Theorem 1's projection and the optimum of DPO on
per-token mean log-probs; and iterative DPO with the reference reset to the last policy.

Tolerances: identities to 1e-12; optimizers from scratch (L-BFGS) to 1e-7; Newton's solve to 1e-8.
"""

from __future__ import annotations

import pytest
import torch

from dpo_teach import bandit, losses

DTYPE = torch.float64


@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_projection_of_theorem_1(beta):
    """f(r) = r - beta log sum pi_ref exp(r / beta): same preferences as r, the implicit reward of pi_r,
    idempotent, and sum_y pi_ref exp(f(r) / beta) = 1."""
    pi_ref, reward = bandit.random_instance(5, 6, seed=0, reward_scale=2.0)
    projected = bandit.project_reward(reward, pi_ref, beta)
    torch.testing.assert_close(bandit.bradley_terry(projected), bandit.bradley_terry(reward), atol=1e-12, rtol=0)
    implicit = bandit.implicit_reward(bandit.optimal_policy(pi_ref, reward, beta), pi_ref, beta)
    torch.testing.assert_close(projected, implicit, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(bandit.project_reward(projected, pi_ref, beta), projected, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(
        (pi_ref * torch.exp(projected / beta)).sum(-1), torch.ones(5, dtype=DTYPE), atol=1e-12, rtol=0
    )


def test_length_normalized_optimum_minimizes_dpo_on_mean_log_probs():
    """L-BFGS on the population DPO loss fed log pi(y) / L_y reaches length_normalized_optimum, which is not pi*."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=1)
    lengths = torch.tensor([[1.0, 3.0, 5.0, 9.0]], dtype=DTYPE).expand(3, 4)
    beta = 0.5
    preferences = bandit.bradley_terry(reward)
    theta = pi_ref.log().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta], max_iter=1000, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )
    pairs = (3, 4, 4)

    def closure():
        optimizer.zero_grad()
        mean_pi = torch.log_softmax(theta, -1) / lengths  # (C, K) per-token mean log-probs
        mean_ref = pi_ref.log() / lengths
        out = losses.dpo_loss(
            mean_pi[:, :, None].expand(pairs).reshape(-1),
            mean_pi[:, None, :].expand(pairs).reshape(-1),
            mean_ref[:, :, None].expand(pairs).reshape(-1),
            mean_ref[:, None, :].expand(pairs).reshape(-1),
            beta=beta,
        )
        value = (preferences * (1 - torch.eye(4, dtype=DTYPE)) * out.losses.view(pairs)).sum()
        value.backward()
        return value

    optimizer.step(closure)
    expected = bandit.length_normalized_optimum(pi_ref, reward, lengths, beta)
    torch.testing.assert_close(torch.softmax(theta.detach(), -1), expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(expected.sum(-1), torch.ones(3, dtype=DTYPE), atol=1e-12, rtol=0)
    assert bandit.total_variation(expected, bandit.optimal_policy(pi_ref, reward, beta)).max() > 0.2
    equal_lengths = torch.full((3, 4), 4.0, dtype=DTYPE)  # one length for all: the mean is the sum / 4
    torch.testing.assert_close(
        bandit.length_normalized_optimum(pi_ref, reward, equal_lengths, beta),
        bandit.optimal_policy(pi_ref, reward, beta / 4),
        atol=1e-12,
        rtol=0,
    )


def test_iterative_dpo_with_reference_reset_walks_down_beta():
    """Round k of DPO with pi_ref reset to round k - 1's policy, on Bradley-Terry preferences: pi*_{beta / k}."""
    pi_ref, reward = bandit.random_instance(4, 5, seed=2)
    preferences = bandit.bradley_terry(reward)
    beta, reference = 2.0, pi_ref
    for round_number in range(1, 4):
        result = bandit.solve(reference, preferences, beta)
        assert result.converged, result.message
        torch.testing.assert_close(
            result.policy, bandit.optimal_policy(pi_ref, reward, beta / round_number), atol=1e-8, rtol=0
        )
        reference = result.policy


def test_length_normalized_optimum_refuses_zero_lengths():
    """A length must be positive."""
    pi_ref, reward = bandit.random_instance(1, 3, seed=3)
    with pytest.raises(ValueError, match="lengths must be > 0"):
        bandit.length_normalized_optimum(pi_ref, reward, torch.zeros(1, 3, dtype=DTYPE), 1.0)


def test_mean_and_summed_margins_differ_by_the_normalizer():
    """With per-token means the margin is not invariant to adding a constant to log pi: that constant (the
    softmax normalizer) becomes a length bonus c (1 / L_i - 1 / L_j), which is why the optimum has a c."""
    log_pi = torch.tensor([-1.0, -2.0], dtype=DTYPE)
    lengths = torch.tensor([2.0, 5.0], dtype=DTYPE)
    shift = 0.7
    moved = log_pi + shift
    assert (moved[0] - moved[1]).item() == pytest.approx((log_pi[0] - log_pi[1]).item(), abs=1e-15)
    mean_change = (moved / lengths).diff() - (log_pi / lengths).diff()
    assert mean_change.item() == pytest.approx(-shift * (1 / 2 - 1 / 5), abs=1e-15)
