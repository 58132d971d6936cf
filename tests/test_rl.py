"""Tests of dpo_teach.rl: GAE against a naive loop and hand values, the KL-penalized rewards of ragged
rows, whitening, the clipped losses' values and gradients against the written-out formulas and autograd,
entropy against torch.distributions, and the KL controllers (the lookahead's line against numpy's polyfit).

Tolerances: the same float64 inputs computed two ways agree to round-off (``atol=1e-12, rtol=1e-12``);
whitening adds 1e-8 to the variance, so its unit variance holds to ``1e-6``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpo_teach.rl import (
    AdaptiveKLController,
    FixedKLController,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_penalized_rewards,
    masked_mean,
    masked_var,
    whiten,
)

DTYPE = torch.float64
TIGHT = {"atol": 1e-12, "rtol": 1e-12}


def _ragged(lengths: list[int], num_tokens: int) -> torch.Tensor:
    """A right-padded (B, T) float64 mask whose row b has ``lengths[b]`` real tokens."""
    return (torch.arange(num_tokens)[None, :] < torch.tensor(lengths)[:, None]).to(DTYPE)


def _random_tokens(seed: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(shape, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))


LENGTHS, T = [5, 1, 3, 7, 2], 7


def _naive_gae(rewards, values, lengths, gamma, lam) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, per token, in Python floats: the episode of row b has lengths[b] steps and V = 0 after it."""
    advantages = torch.zeros_like(rewards)
    for b, length in enumerate(lengths):
        running = 0.0
        for t in reversed(range(length)):
            next_value = values[b, t + 1].item() if t + 1 < length else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            running = delta + gamma * lam * running
            advantages[b, t] = running
    mask = _ragged(lengths, rewards.shape[1])
    return advantages, (advantages + values) * mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.8), (1.0, 1.0), (0.99, 0.0)])
def test_gae_matches_a_naive_loop_on_ragged_rows(gamma, lam):
    rewards, values = _random_tokens(0, (5, T)), _random_tokens(1, (5, T))
    mask = _ragged(LENGTHS, T)
    advantages, returns = gae(rewards * mask, values, mask, gamma=gamma, lam=lam)
    expected_advantages, expected_returns = _naive_gae(rewards * mask, values, LENGTHS, gamma, lam)
    torch.testing.assert_close(advantages, expected_advantages, **TIGHT)
    torch.testing.assert_close(returns, expected_returns, **TIGHT)


def test_gae_with_gamma_and_lambda_one_returns_the_sum_of_future_rewards():
    mask = _ragged(LENGTHS, T)
    rewards, values = _random_tokens(2, (5, T)) * mask, _random_tokens(3, (5, T))
    _, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    reward_to_go = rewards.flip(1).cumsum(1).flip(1)  # sum_{s >= t} r_s; padding rewards are 0
    torch.testing.assert_close(returns, reward_to_go * mask, **TIGHT)


def test_gae_with_lambda_zero_is_the_one_step_td_error():
    mask = _ragged(LENGTHS, T)
    rewards, values = _random_tokens(4, (5, T)) * mask, _random_tokens(5, (5, T))
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros(5, 1, dtype=DTYPE)], dim=1)  # V = 0 after end
    torch.testing.assert_close(advantages, (rewards + 0.9 * next_values - values) * mask, **TIGHT)


def test_kl_penalized_rewards_put_the_score_on_the_last_real_token():
    mask = _ragged(LENGTHS, T)
    logprobs, ref_logprobs = _random_tokens(6, (5, T)), _random_tokens(7, (5, T))
    scores = torch.tensor([1.0, -2.0, 3.0, 0.5, 10.0], dtype=DTYPE)
    rewards, kl = kl_penalized_rewards(scores, logprobs, ref_logprobs, mask.bool(), kl_coef=0.2)
    torch.testing.assert_close(kl, (logprobs - ref_logprobs) * mask, **TIGHT)
    expected = -0.2 * kl
    for b, length in enumerate(LENGTHS):
        expected[b, length - 1] += scores[b]
    torch.testing.assert_close(rewards, expected, **TIGHT)
    # Summed over the sequence: score - beta * (sequence log-ratio).
    torch.testing.assert_close(rewards.sum(1), scores - 0.2 * kl.sum(1), **TIGHT)


def test_kl_penalized_rewards_reject_a_row_without_tokens():
    mask = _ragged([2, 0], 3)
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        kl_penalized_rewards(torch.zeros(2), torch.zeros(2, 3), torch.zeros(2, 3), mask, 0.1)


def test_whiten_gives_mean_zero_variance_one_and_ignores_padding():
    mask = _ragged(LENGTHS, T)
    values = 3.0 + 2.0 * _random_tokens(8, (5, T))
    whitened = whiten(values, mask)
    torch.testing.assert_close(masked_mean(whitened, mask), torch.tensor(0.0, dtype=DTYPE), atol=1e-12, rtol=0)
    torch.testing.assert_close(masked_var(whitened, mask), torch.tensor(1.0, dtype=DTYPE), atol=1e-6, rtol=0)
    assert (whitened[mask == 0] == 0).all()
    repadded = torch.where(mask.bool(), values, torch.full_like(values, 1e6))
    torch.testing.assert_close(whiten(repadded, mask), whitened, **TIGHT)
    unshifted = whiten(values, mask, shift_mean=False)
    torch.testing.assert_close(masked_mean(unshifted, mask), masked_mean(values, mask), **TIGHT)


def test_masked_var_matches_torch_var_on_the_real_entries():
    mask = _ragged(LENGTHS, T)
    values = _random_tokens(9, (5, T))
    torch.testing.assert_close(masked_var(values, mask), values[mask.bool()].var(), **TIGHT)
    torch.testing.assert_close(masked_var(values, mask, unbiased=False), values[mask.bool()].var(correction=0), **TIGHT)


def _hand_policy_loss(logprobs, old_logprobs, advantages, mask, eps):
    ratio = torch.exp(logprobs - old_logprobs)
    per_token = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - eps, 1 + eps))
    return (per_token * mask).sum() / mask.sum()


def test_clipped_policy_loss_value_and_gradient_match_the_formula():
    mask = _ragged(LENGTHS, T)
    old_logprobs = _random_tokens(10, (5, T))
    logprobs = (old_logprobs + 0.3 * _random_tokens(11, (5, T))).requires_grad_()
    advantages = _random_tokens(12, (5, T))
    loss, stats = clipped_policy_loss(logprobs, old_logprobs, advantages, mask, clip_range=0.2)
    (gradient,) = torch.autograd.grad(loss, logprobs)
    hand_logprobs = logprobs.detach().clone().requires_grad_()
    hand_loss = _hand_policy_loss(hand_logprobs, old_logprobs, advantages, mask, 0.2)
    (hand_gradient,) = torch.autograd.grad(hand_loss, hand_logprobs)
    torch.testing.assert_close(loss, hand_loss, **TIGHT)
    torch.testing.assert_close(gradient, hand_gradient, **TIGHT)
    # Where the clipped term is active (ratio pushed past 1 + eps with A > 0, below 1 - eps with A < 0), no gradient.
    ratio = torch.exp(logprobs.detach() - old_logprobs)
    clipped = ((advantages > 0) & (ratio > 1.2)) | ((advantages < 0) & (ratio < 0.8))
    assert clipped[mask.bool()].any() and (~clipped[mask.bool()]).any()
    assert (gradient[clipped] == 0).all()
    assert (gradient[~clipped & mask.bool()] != 0).all()
    assert stats["clipfrac"].item() == pytest.approx(clipped[mask.bool()].double().mean().item(), abs=1e-12)
    assert not stats["clipfrac"].requires_grad and not stats["approx_kl"].requires_grad


def test_clipped_policy_loss_at_ratio_one_is_minus_the_mean_advantage_with_no_kl_and_no_clipping():
    mask = _ragged(LENGTHS, T)
    logprobs, advantages = _random_tokens(13, (5, T)), _random_tokens(14, (5, T))
    loss, stats = clipped_policy_loss(logprobs, logprobs.clone(), advantages, mask, clip_range=0.2)
    torch.testing.assert_close(loss, -masked_mean(advantages, mask), **TIGHT)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_approx_kl_is_unbiased_for_kl_old_new():
    """With the mask set to pi_old's probabilities, the masked mean of k3 is its exact expectation under pi_old."""
    generator = torch.Generator().manual_seed(15)
    old_logprobs = torch.log_softmax(torch.randn(1, 6, dtype=DTYPE, generator=generator), -1)
    logprobs = torch.log_softmax(torch.randn(1, 6, dtype=DTYPE, generator=generator), -1)
    _, stats = clipped_policy_loss(logprobs, old_logprobs, torch.zeros_like(logprobs), old_logprobs.exp(), 0.2)
    exact = (old_logprobs.exp() * (old_logprobs - logprobs)).sum()
    torch.testing.assert_close(stats["approx_kl"], exact, **TIGHT)


def test_clipped_value_loss_value_gradient_and_clipfrac():
    mask = _ragged(LENGTHS, T)
    old_values, returns = _random_tokens(16, (5, T)), _random_tokens(17, (5, T))
    values = (old_values + 0.5 * _random_tokens(18, (5, T))).requires_grad_()
    loss, stats = clipped_value_loss(values, old_values, returns, mask, clip_range_value=0.2)
    (gradient,) = torch.autograd.grad(loss, values)
    v = values.detach()
    v_clipped = old_values + (v - old_values).clamp(-0.2, 0.2)
    hand = 0.5 * ((torch.maximum((v - returns) ** 2, (v_clipped - returns) ** 2) * mask).sum() / mask.sum())
    torch.testing.assert_close(loss, hand, **TIGHT)
    clipped_active = (v_clipped - returns) ** 2 > (v - returns) ** 2  # gradient 0: v_clipped is constant in v there
    torch.testing.assert_close(gradient, ~clipped_active * mask * (v - returns) / mask.sum(), **TIGHT)
    assert stats["value_clipfrac"].item() == pytest.approx(clipped_active[mask.bool()].double().mean().item())
    loss_at_old, stats_at_old = clipped_value_loss(old_values, old_values, returns, mask, 0.2)
    torch.testing.assert_close(loss_at_old, 0.5 * masked_mean((old_values - returns) ** 2, mask), **TIGHT)
    assert stats_at_old["value_clipfrac"].item() == 0.0


def test_entropy_from_logits_matches_torch_categorical():
    logits = 5.0 * torch.randn(3, 4, 50, dtype=DTYPE, generator=torch.Generator().manual_seed(19))
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits), expected, **TIGHT)
    half = entropy_from_logits(logits.to(torch.bfloat16))
    assert half.dtype == torch.float32


def test_explained_variance_is_one_for_perfect_values_and_zero_for_the_mean():
    mask = _ragged(LENGTHS, T)
    returns = _random_tokens(20, (5, T))
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0, abs=1e-12)
    mean_predictor = torch.full_like(returns, masked_mean(returns, mask).item())
    assert explained_variance(mean_predictor, returns, mask) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


def test_adaptive_kl_controller_moves_beta_toward_the_target():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    controller.update(current_kl=60.0, num_steps=256)  # error 9 clipped to 0.2
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10_000), rel=1e-15)
    before = controller.value
    controller.update(current_kl=4.5, num_steps=256)  # error -0.25 clipped to -0.2
    assert controller.value == pytest.approx(before * (1 - 0.2 * 256 / 10_000), rel=1e-15)
    before = controller.value
    controller.update(current_kl=6.6, num_steps=100)  # error 0.1, inside the clip
    assert controller.value == pytest.approx(before * (1 + 0.1 * 100 / 10_000), rel=1e-12)
    restored = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1)
    restored.load_state_dict(controller.state_dict())
    assert restored.state_dict() == controller.state_dict()
    assert restored.value == controller.value


def test_the_lookahead_reads_the_least_squares_line_ahead():
    """KL^ is the line fitted to the last ``window`` KLs (checked against numpy's polyfit) read ``lookahead`` steps
    past the last one; KLs older than the window do not count, and with fewer than 3 KLs KL^ is the last KL."""
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=256, lookahead=4, window=5)
    controller.update(current_kl=50.0, num_steps=64)  # one KL: KL^ = 50, error clipped to 0.2
    assert controller.predicted_kl() == 50.0
    assert controller.value == pytest.approx(0.1 * (1 + 0.2 * 64 / 256), rel=1e-15)
    controller.update(current_kl=5.0, num_steps=64)  # two KLs: still the last one
    assert controller.predicted_kl() == 5.0
    kls = np.random.default_rng(0).uniform(4.0, 8.0, size=9)
    for kl in kls[:-1]:
        controller.update(current_kl=float(kl), num_steps=64)
    before = controller.value
    controller.update(current_kl=float(kls[-1]), num_steps=64)
    slope, intercept = np.polyfit(np.arange(5), kls[-5:], deg=1)
    predicted = intercept + slope * (4 + 4)
    assert controller.predicted_kl() == pytest.approx(predicted, rel=1e-12, abs=1e-12)
    error = min(max(predicted / 6.0 - 1.0, -0.2), 0.2)
    assert controller.value == pytest.approx(before * (1 + error * 64 / 256), rel=1e-12)


def test_a_restored_controller_continues_its_line():
    """The recent KLs travel in the state: a controller restored mid-run makes the same next update."""
    controller = AdaptiveKLController(init_kl_coef=0.3, target=3.0, horizon=256, lookahead=8, window=4)
    for kl in (0.5, 1.0, 1.8, 2.2, 2.9):
        controller.update(current_kl=kl, num_steps=64)
    restored = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1)
    restored.load_state_dict(controller.state_dict())
    assert restored.state_dict() == controller.state_dict()
    controller.update(current_kl=3.1, num_steps=64)
    restored.update(current_kl=3.1, num_steps=64)
    assert restored.value == controller.value


def test_a_controller_state_from_before_the_lookahead_resumes_as_ziegler():
    """A checkpoint written before ``lookahead`` existed holds only value, target and horizon: it resumes with the
    settings the controller was built with and no recent KLs (its next update reads that step's KL)."""
    controller = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1)
    controller.load_state_dict({"value": 0.2, "target": 6.0, "horizon": 256})
    assert (controller.lookahead, controller.window, controller.recent_kls) == (0, 16, [])
    controller.update(current_kl=6.6, num_steps=64)
    assert controller.value == pytest.approx(0.2 * (1 + 0.1 * 64 / 256), rel=1e-12)


@pytest.mark.parametrize(
    ("settings", "field"),
    [(dict(lookahead=-1), "lookahead"), (dict(window=2), "window")],
)
def test_bad_controller_settings_name_the_argument(settings, field):
    with pytest.raises(ValueError, match=field):
        AdaptiveKLController(init_kl_coef=0.1, target=1.0, horizon=256, **settings)


def test_fixed_kl_controller_keeps_beta_and_round_trips():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, num_steps=64)
    assert controller.value == 0.05
    restored = FixedKLController(1.0)
    restored.load_state_dict(controller.state_dict())
    assert restored.value == 0.05


def test_mismatched_shapes_name_the_argument():
    mask = _ragged(LENGTHS, T)
    with pytest.raises(ValueError, match="old_logprobs"):
        clipped_policy_loss(torch.zeros(5, T), torch.zeros(5, T - 1), torch.zeros(5, T), mask, 0.2)
    with pytest.raises(ValueError, match="scores"):
        kl_penalized_rewards(torch.zeros(4), torch.zeros(5, T), torch.zeros(5, T), mask, 0.1)
