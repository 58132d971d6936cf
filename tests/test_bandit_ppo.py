"""PPO on the tabular bandit (dpo_teach.bandit.ppo_solve) reaches the closed-form optimum pi*.

ppo_solve trains with the same functions of dpo_teach.rl that train GPT-2, from samples, so it is
checked against pi* = pi_ref exp(r / beta) / Z with sampling-level tolerances:

- ``TV_TOLERANCE = 0.02``: total variation to pi* in every context. With the defaults the runs here
  end at TV <= 0.005 (worst of 36 random instances tried while choosing them: 0.0051), and a
  policy for the wrong beta or a run without learning-rate annealing is off by more than 0.02.
- ``OBJECTIVE_TOLERANCE = 2e-3``: J(pi*) - J(pi) per context, where J is the RLHF objective. The gap
  is beta KL(pi || pi*) >= 0 exactly (checked to 1e-12), second order in the distance to pi*; the
  runs here end below 1e-3.
"""

from __future__ import annotations

import functools

import pytest
import torch

from dpo_teach.bandit import (
    kl_divergence,
    optimal_policy,
    ppo_solve,
    random_instance,
    rlhf_objective,
    total_variation,
)

TV_TOLERANCE = 0.02
OBJECTIVE_TOLERANCE = 2e-3
# (num_contexts, num_responses, instance seed, beta)
RUNS = [(3, 8, 0, 0.5), (4, 5, 1, 1.0), (2, 10, 2, 0.1)]


@functools.cache
def _solve(num_contexts: int, num_responses: int, instance_seed: int, beta: float, **kwargs):
    pi_ref, reward = random_instance(num_contexts, num_responses, seed=instance_seed)
    return pi_ref, reward, ppo_solve(pi_ref, reward, beta, **kwargs)


@pytest.mark.parametrize(("num_contexts", "num_responses", "instance_seed", "beta"), RUNS)
def test_ppo_reaches_the_closed_form_optimum_in_every_context(num_contexts, num_responses, instance_seed, beta):
    pi_ref, reward, result = _solve(num_contexts, num_responses, instance_seed, beta)
    distance = total_variation(result.policy, optimal_policy(pi_ref, reward, beta))
    assert (distance <= TV_TOLERANCE).all(), f"TV to pi* per context: {distance.tolist()}"
    assert result.policy.dtype == torch.float64 and result.policy.shape == (num_contexts, num_responses)
    torch.testing.assert_close(result.policy.sum(-1), torch.ones(num_contexts, dtype=torch.float64))
    # The recorded curves are exact functions of the policy: the last row is the final policy's.
    torch.testing.assert_close(result.total_variation[-1], distance, atol=1e-12, rtol=0)
    torch.testing.assert_close(result.kl[-1], kl_divergence(result.policy, pi_ref), atol=1e-12, rtol=0)
    assert result.total_variation.shape == (101, num_contexts)  # iterations + 1 rows, row 0 is pi_ref
    torch.testing.assert_close(result.kl[0], torch.zeros(num_contexts, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize(("num_contexts", "num_responses", "instance_seed", "beta"), RUNS)
def test_ppo_attains_the_optimal_regularized_objective(num_contexts, num_responses, instance_seed, beta):
    pi_ref, reward, result = _solve(num_contexts, num_responses, instance_seed, beta)
    pi_star = optimal_policy(pi_ref, reward, beta)
    gap = rlhf_objective(pi_star, pi_ref, reward, beta) - rlhf_objective(result.policy, pi_ref, reward, beta)
    torch.testing.assert_close(gap, beta * kl_divergence(result.policy, pi_star), atol=1e-12, rtol=0)
    assert (gap >= 0).all() and (gap <= OBJECTIVE_TOLERANCE).all(), f"J(pi*) - J(pi) per context: {gap.tolist()}"
    start = rlhf_objective(pi_ref, pi_ref, reward, beta)
    assert (rlhf_objective(result.policy, pi_ref, reward, beta) > start).all()  # it learned


def test_the_tolerance_rejects_the_optimum_of_another_beta():
    """PPO at beta = 1 is far from the optimum at beta = 0.5, so the TV check above discriminates."""
    pi_ref, reward, result = _solve(4, 5, 1, 1.0)
    distance = total_variation(result.policy, optimal_policy(pi_ref, reward, 0.5))
    assert distance.max() > 2 * TV_TOLERANCE, f"TV to the beta = 0.5 optimum per context: {distance.tolist()}"


def test_without_learning_rate_annealing_ppo_jitters_beyond_the_tolerance():
    """With a constant step, Adam's steps on noisy minibatch gradients keep the policy off pi* (the noise floor)."""
    pi_ref, reward, result = _solve(4, 5, 1, 1.0, anneal_lr=False)
    distance = total_variation(result.policy, optimal_policy(pi_ref, reward, 1.0))
    assert distance.max() > TV_TOLERANCE, f"TV to pi* per context: {distance.tolist()}"


def test_ppo_is_deterministic_given_the_seed():
    pi_ref, reward = random_instance(2, 4, seed=3)
    first = ppo_solve(pi_ref, reward, 0.5, iterations=3, samples_per_context=16, seed=7)
    second = ppo_solve(pi_ref, reward, 0.5, iterations=3, samples_per_context=16, seed=7)
    other = ppo_solve(pi_ref, reward, 0.5, iterations=3, samples_per_context=16, seed=8)
    assert torch.equal(first.policy, second.policy) and torch.equal(first.value, second.value)
    assert not torch.equal(first.policy, other.policy)


def test_ppo_rejects_bad_arguments():
    pi_ref, reward = random_instance(2, 4, seed=3)
    with pytest.raises(ValueError, match="reward has shape"):
        ppo_solve(pi_ref, reward[:, :3], 0.5)
    with pytest.raises(ValueError, match="samples_per_context"):
        ppo_solve(pi_ref, reward, 0.5, samples_per_context=1)
    with pytest.raises(ValueError, match="minibatches"):
        ppo_solve(pi_ref, reward, 0.5, samples_per_context=2, minibatches=5)
    with pytest.raises(ValueError, match="beta"):
        ppo_solve(pi_ref, reward, 0.0)
