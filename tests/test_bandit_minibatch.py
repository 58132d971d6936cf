"""The plain minibatch DPO loop on the table (dpo_teach.bandit.minibatch_dpo): its start, an independent
re-implementation, where it ends offline and online, and the unweighted ablation.

Tolerances: the start and the re-implementation are exact (1e-12); the end points are sampling results and
are held to total variation 0.05 (the runs here end at 0.01-0.03), against the exact minimizer of the same
data (offline) or the closed form pi* (online, where the data never run out).
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from dpo_teach import bandit, losses

DTYPE = torch.float64
BETA = 0.5
SAMPLING_TOLERANCE = 0.05


@functools.cache
def _world():
    pi_ref, reward = bandit.random_instance(5, 4, seed=0, concentration=3.0)
    preferences = bandit.bradley_terry(reward)
    wins = bandit.sample_comparisons(preferences, pi_ref, 5000, seed=0)
    return pi_ref, reward, preferences, wins, bandit.comparison_rows(wins)


def test_first_step_logs_ln2_and_zero_rewards():
    """At pi = pi_ref every margin is exactly 0: loss ln 2, rewards 0, accuracy 0 (no chosen reward above its
    rejected one), KL 0."""
    pi_ref, _, _, _, rows = _world()
    history = bandit.minibatch_dpo(pi_ref, BETA, bandit.dataset_batches(rows, 16), steps=1).history
    assert list(history) == list(bandit.METRICS)
    assert history["loss"][0] == pytest.approx(math.log(2), abs=1e-15)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert history[name][0] == 0.0, name
    assert abs(history["kl"][0]) <= 1e-15, "KL(pi_ref || pi_ref) up to the round-off of a softmax"


def _loop_from_scratch(pi_ref, rows, steps, batch_size, learning_rate, seed):
    """The same loop written out: Adam on logits, lr annealed linearly, batches drawn with one generator."""
    theta = pi_ref.log().requires_grad_(True)
    log_ref = torch.log_softmax(pi_ref.log(), -1)
    optimizer = torch.optim.Adam([theta], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    losses_seen = []
    for step in range(steps):
        optimizer.param_groups[0]["lr"] = learning_rate * (1 - step / steps)
        picked = rows[torch.randint(len(rows), (batch_size,), generator=generator)]
        log_pi = torch.log_softmax(theta, -1)
        margin = (log_pi[picked[:, 0], picked[:, 1]] - log_ref[picked[:, 0], picked[:, 1]]) - (
            log_pi[picked[:, 0], picked[:, 2]] - log_ref[picked[:, 0], picked[:, 2]]
        )
        loss = -torch.nn.functional.logsigmoid(BETA * margin).mean()  # DPO Eq. 7
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_seen.append(loss.item())
    return torch.softmax(theta.detach(), -1), losses_seen


def test_loop_equals_a_re_implementation_from_scratch():
    """Same seed, same batches, same Adam: the same losses and final policy to 1e-12."""
    pi_ref, _, _, _, rows = _world()
    result = bandit.minibatch_dpo(pi_ref, BETA, bandit.dataset_batches(rows, 32), steps=50, learning_rate=0.1, seed=3)
    policy, losses_seen = _loop_from_scratch(pi_ref, rows, 50, 32, 0.1, seed=3)
    torch.testing.assert_close(torch.tensor(result.history["loss"]), torch.tensor(losses_seen), atol=1e-12, rtol=0)
    torch.testing.assert_close(result.policy, policy, atol=1e-12, rtol=0)


def test_offline_loop_reaches_the_exact_minimizer_of_its_data():
    """1000 Adam steps of 64 rows end within TV 0.05 of solve() on the same counts; TRL's metrics moved as expected."""
    pi_ref, _, _, wins, rows = _world()
    exact = bandit.solve(pi_ref, wins, BETA)
    assert exact.converged, exact.message
    result = bandit.minibatch_dpo(pi_ref, BETA, bandit.dataset_batches(rows, 64), steps=1000)
    assert bandit.total_variation(result.policy, exact.policy).max() <= SAMPLING_TOLERANCE
    history = {name: torch.tensor(values) for name, values in result.history.items()}
    assert history["loss"][-100:].mean() < math.log(2) - 0.05, "the loss fell from ln 2"
    assert history["rewards/accuracies"][-100:].mean() > 0.6 and history["rewards/margins"][-100:].mean() > 0.2
    assert history["rewards/chosen"][-100:].mean() > history["rewards/rejected"][-100:].mean()


def test_online_loop_reaches_the_closed_form_optimum():
    """Fresh pairs from the current policy, labelled by Bradley-Terry: within TV 0.05 of pi* in every context."""
    pi_ref, reward, preferences, _, _ = _world()
    result = bandit.minibatch_dpo(pi_ref, BETA, bandit.online_batches(preferences, 64), steps=1000)
    optimum = bandit.optimal_policy(pi_ref, reward, BETA)
    assert bandit.total_variation(result.policy, optimum).max() <= SAMPLING_TOLERANCE


def test_unweighted_update_degenerates():
    """Without sigma(-beta h) nothing stops the push: the policy turns one-hot (max pi > 0.999 in every context)
    and its KL keeps growing, while the weighted loop's KL settles near that of the exact minimizer."""
    pi_ref, _, _, wins, rows = _world()
    unweighted = bandit.minibatch_dpo(pi_ref, BETA, bandit.dataset_batches(rows, 64), steps=1000, weighted=False)
    assert (unweighted.policy.max(-1).values > 0.999).all()
    exact_kl = bandit.kl_divergence(bandit.solve(pi_ref, wins, BETA).policy, pi_ref).mean().item()
    assert unweighted.history["kl"][-1] > 1.5 * exact_kl
    assert unweighted.history["kl"][-1] > unweighted.history["kl"][500]
    weighted = bandit.minibatch_dpo(pi_ref, BETA, bandit.dataset_batches(rows, 64), steps=1000)
    assert abs(weighted.history["kl"][-1] - exact_kl) < 0.1


def test_unweighted_gradient_is_the_weighted_one_without_its_weight():
    """The ablation's per-pair gradient is -beta (grad log pi_w - grad log pi_l), DPO's divided by sigma(-beta h)."""
    logps = [torch.randn(8, dtype=DTYPE, requires_grad=True) for _ in range(2)]
    refs = [torch.randn(8, dtype=DTYPE) for _ in range(2)]
    out = losses.dpo_loss(logps[0], logps[1], refs[0], refs[1], beta=BETA)
    weighted = torch.autograd.grad(out.losses.sum(), logps[0])[0]
    unweighted = torch.autograd.grad((-BETA * (logps[0] - logps[1])).sum(), logps[0])[0]
    weight = torch.sigmoid(out.rejected_rewards - out.chosen_rewards)
    torch.testing.assert_close(weighted, weight * unweighted, atol=1e-14, rtol=0)


def test_bad_rows_are_refused():
    """dataset_batches needs (N, 3) rows."""
    with pytest.raises(ValueError, match=r"rows must be \(N, 3\)"):
        bandit.dataset_batches(torch.zeros(5, 2, dtype=torch.long), 4)
