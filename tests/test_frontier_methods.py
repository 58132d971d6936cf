"""The frontier's method settings that rest on math: PPO's starting KL coefficient and its standardized reward."""

from __future__ import annotations

import pytest
import torch

from dpo_teach.bandit import kl_divergence, optimal_policy
from dpo_teach.frontier.methods import Method, initial_kl_coef, sweep_methods
from dpo_teach.frontier.presets import preset
from dpo_teach.sentiment.rewards import StandardizedReward


@pytest.mark.parametrize("target", [0.02, 0.05, 0.1])
def test_the_initial_coefficient_holds_a_small_target_kl_for_a_standardized_reward(target):
    """KL(pi*_beta || pi_ref) = Var_ref(r) / (2 beta^2) + O(beta^-3): at beta_0 = 1 / sqrt(2 target) the optimum's
    KL is the target, up to the third-order term (within 15% for these targets), on a 50-response table."""
    generator = torch.Generator().manual_seed(0)
    pi_ref = torch.softmax(torch.randn(1, 50, generator=generator, dtype=torch.float64), dim=-1)
    reward = torch.randn(1, 50, generator=generator, dtype=torch.float64)
    mean = (pi_ref * reward).sum()
    reward = (reward - mean) / ((pi_ref * (reward - mean) ** 2).sum()).sqrt()  # variance 1 under pi_ref
    kl = kl_divergence(optimal_policy(pi_ref, reward, initial_kl_coef(target)), pi_ref).item()
    assert kl == pytest.approx(target, rel=0.15)


def test_a_standardized_reward_has_mean_zero_and_unit_spread_on_its_own_texts():
    texts = [f"text {index}" for index in range(10)]
    raw = torch.arange(10, dtype=torch.float32) * 3 + 7

    def reward(batch: list[str]) -> torch.Tensor:
        return raw[[texts.index(text) for text in batch]]

    standardized = StandardizedReward(reward, raw.double().mean().item(), raw.double().std().item())
    scores = standardized(texts)
    assert scores.mean().item() == pytest.approx(0, abs=1e-6) and scores.std().item() == pytest.approx(1, abs=1e-6)
    with pytest.raises(ValueError, match="std: must be > 0"):
        StandardizedReward(reward, 0.0, 0.0)


def test_the_sweep_names_each_seed_and_variant_apart():
    config = preset("tiny")
    runs = [method.run for method in sweep_methods(config, seeds=2)]
    assert len(runs) == len(set(runs)) == 2 * len(sweep_methods(config))
    assert "dpo-beta-0.1-seed-1" in runs and "dpo-beta-0.1" in runs
    assert Method("dpo", "beta", 0.1, (("loss", "ipo"),), seed=2).run == "dpo-beta-0.1-loss-ipo-seed-2"
