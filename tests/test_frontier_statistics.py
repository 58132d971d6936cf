"""The frontier's statistics: each method's envelope and paired standard errors, against brute force."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest
import torch

from dpo_teach.frontier import statistics


def row(method: str, kl: float, reward: float, run: str | None = None, step: int = 1, value=None) -> dict:
    return {"method": method, "kl": kl, "reward": reward, "run": run or method, "step": step, "value": value,
            "seed": 0}  # fmt: skip


SFT = row("sft", 0.0, 0.5, step=0)


def brute_force_envelope(points: list[tuple[float, float]], kl: float) -> float:
    """The best reward of any mixture of two points (or one) with mixed KL <= kl: the concave envelope's value,
    made non-decreasing."""
    best = max(reward for point_kl, reward in points if point_kl <= kl)
    for (kl_a, reward_a), (kl_b, reward_b) in itertools.combinations(points, 2):
        if min(kl_a, kl_b) <= kl <= max(kl_a, kl_b) and kl_a != kl_b:
            weight = (kl - kl_a) / (kl_b - kl_a)
            best = max(best, (1 - weight) * reward_a + weight * reward_b)
    return best


def test_the_envelope_is_the_best_mixture_within_each_kl_budget():
    rng = random.Random(0)
    rows = [row("dpo", rng.uniform(0.1, 10), rng.uniform(0.3, 0.9), run=f"r{index}") for index in range(25)]
    vertices = statistics.envelope(rows, SFT)
    points = [(0.0, 0.5)] + [(r["kl"], r["reward"]) for r in rows]
    assert vertices[0].kl == 0.0 and [v.kl for v in vertices] == sorted(v.kl for v in vertices)
    assert all(left.reward < right.reward for left, right in zip(vertices, vertices[1:], strict=False))
    for kl in [0.0, 0.05, 0.7, 2.5, 4.0, 9.9, 12.0]:
        weights = statistics.interpolation(vertices, kl)
        value = sum(weight * part["reward"] for weight, part in weights)
        assert value == pytest.approx(brute_force_envelope(points, kl), abs=1e-12), kl
        assert sum(weight for weight, _ in weights) == pytest.approx(1.0)


def test_paired_differences_match_a_by_hand_standard_error(tmp_path):
    """Per-prompt rewards written as an evaluation writes them; the paired SE is std(a - b) / sqrt(P), smaller
    than the independent one when the prompts share their difficulty."""
    generator = torch.Generator().manual_seed(0)
    difficulty = torch.rand(200, generator=generator, dtype=torch.float64)
    rewards = {
        "sft-evaluation": difficulty * 0.8,
        "dpo-a": difficulty * 0.8 + 0.1 + 0.05 * torch.randn(200, generator=generator, dtype=torch.float64),
        "ppo-b": difficulty * 0.8 + 0.02 + 0.05 * torch.randn(200, generator=generator, dtype=torch.float64),
    }
    for name, values in rewards.items():
        path = (
            tmp_path / name / "samples" / ("step-00000000.jsonl" if name == "sft-evaluation" else "step-00000004.jsonl")
        )
        path.parent.mkdir(parents=True)
        path.write_text(
            "".join(json.dumps({"prompt": f"x{i}", "reward": v}) + "\n" for i, v in enumerate(values.tolist()))
        )
    rows = [
        {**row("sft", 0.0, rewards["sft-evaluation"].mean().item(), step=0)},
        row("dpo", 2.0, rewards["dpo-a"].mean().item(), run="dpo-a", step=4),
        row("ppo-rm", 4.0, rewards["ppo-b"].mean().item(), run="ppo-b", step=4),
    ]
    (difference,) = statistics.compare_envelopes(tmp_path, rows, "dpo", "ppo-rm", [1.0])
    # at KL 1: DPO's envelope is halfway from SFT to dpo-a; PPO's a quarter of the way from SFT to ppo-b
    dpo = 0.5 * rewards["sft-evaluation"] + 0.5 * rewards["dpo-a"]
    ppo = 0.75 * rewards["sft-evaluation"] + 0.25 * rewards["ppo-b"]
    assert difference.difference == pytest.approx((dpo - ppo).mean().item(), abs=1e-12)
    assert difference.sem == pytest.approx((dpo - ppo).std().item() / math.sqrt(200), abs=1e-12)
    independent = math.sqrt((dpo.var().item() + ppo.var().item()) / 200)
    assert difference.sem < independent / 3  # pairing removes the prompts' shared difficulty
    assert statistics.compare_envelopes(tmp_path, rows, "dpo", "ppo-rm", [3.0]) == []  # DPO does not reach KL 3
