"""The PPO trainer on a tiny GPT-2: the rollout layout, step 0, learning, the KL penalty and controller, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from dpo_teach.train import ppo as ppo_module
from dpo_teach.train.config import PPOConfig
from dpo_teach.train.ppo import train_ppo
from dpo_teach.train.rollout import make_value_model, rollout_batch, rollout_logps, token_values

PROMPTS = ["This film", "A plot", "Acting", "It was", "I saw it", "Wow,", "My", "Pity:"]  # no letter 'e'


def count_e(texts: list[str]) -> torch.Tensor:
    """Reward: how often the letter 'e' occurs. A random tiny GPT-2 emits it in a fraction of its tokens, so the
    signal is dense and PPO can climb it in a few steps."""
    return torch.tensor([float(text.count("e")) for text in texts])


def ppo_config(output_dir, **overrides) -> PPOConfig:
    """Quick steps: 16 rollouts of 8 tokens, 4 updates of 4 minibatches each, a high learning rate."""
    values = dict(
        output_dir=str(output_dir), max_steps=4, batch_size=16, num_minibatches=4, ppo_epochs=4,
        learning_rate=1e-2, max_new_tokens=8, save_every=0, progress_bar=False,
    )  # fmt: skip
    values.update(overrides)
    return PPOConfig(**values)


def read_metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def run(tmp_path, tiny_tokenizer, make_tiny_gpt2):
    """``run(name, **config)``: PPO on the tiny GPT-2 with the count_e reward; returns the metrics lines."""

    def train(name, **overrides) -> list[dict]:
        train_ppo(ppo_config(tmp_path / name, **overrides), make_tiny_gpt2(), tiny_tokenizer, PROMPTS * 4, count_e)
        return read_metrics(tmp_path / name)

    return train


def test_the_rollout_layout_scores_each_token_like_the_unpadded_sequence(tiny_tokenizer, make_tiny_gpt2):
    """Left-padded prompts + right-padded completions give, for every completion token, the log-prob and the
    value of a forward pass over that prompt + completion alone (a naive per-row loop, full log_softmax)."""
    policy = make_tiny_gpt2().eval()
    value_model = make_value_model(policy).eval()
    torch.nn.init.normal_(value_model.classifier.weight)  # a non-zero head, so the values say where they are read
    prompt_ids = [[5, 6, 7], [8], [9, 10]]
    completion_ids = [[11, 12], [13, 14, 15, 16], [tiny_tokenizer.eos_token_id]]
    batch = rollout_batch(prompt_ids, completion_ids, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        logps, entropy = rollout_logps(policy, batch, with_entropy=True)  # (3, 4) each
        values = token_values(value_model, batch)  # (3, 4)
        for row, (prompt, completion) in enumerate(zip(prompt_ids, completion_ids, strict=True)):
            input_ids = torch.tensor([prompt + completion])
            scored = slice(len(prompt) - 1, len(prompt) + len(completion) - 1)  # positions predicting the completion
            log_softmax = policy(input_ids).logits[0, scored].log_softmax(-1)  # (n, V)
            expected = log_softmax.gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)
            n = len(completion)
            torch.testing.assert_close(logps[row, :n], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(entropy[row, :n], -(log_softmax.exp() * log_softmax).sum(-1), atol=1e-5, rtol=0)
            torch.testing.assert_close(values[row, :n], value_model(input_ids).logits[0, scored, 0], atol=1e-5, rtol=0)
            assert batch["mask"][row].tolist() == [1.0] * n + [0.0] * (4 - n)


def test_the_value_model_starts_from_the_policy_with_a_zero_head(make_tiny_gpt2):
    policy = make_tiny_gpt2()
    value_model = make_value_model(policy)
    for name, tensor in policy.transformer.state_dict().items():
        assert torch.equal(value_model.transformer.state_dict()[name], tensor), name
    batch = rollout_batch([[5, 6]], [[7, 8, 9]], pad_token_id=0)
    assert torch.equal(token_values(value_model, batch), torch.zeros(1, 3))


def test_step_zero_has_zero_kl_and_ratio_one(tmp_path, run, monkeypatch):
    """Before any update the policy is its reference, same weights, same precision, no dropout: every per-token
    log-ratio is exactly 0, so the sequence KL is 0; the first minibatch's ratio pi / pi_old is 1 up to float32
    round-off (a batch of other rows than the rollout pass), so nothing is clipped."""
    calls = []
    original = ppo_module.clipped_policy_loss

    def spy(logprobs, old_logprobs, advantages, mask, clip_range):
        calls.append((logprobs.detach().clone(), old_logprobs.clone(), mask.clone()))
        return original(logprobs, old_logprobs, advantages, mask, clip_range)

    monkeypatch.setattr(ppo_module, "clipped_policy_loss", spy)
    (first_step,) = run("step0", max_steps=1, ppo_epochs=1, num_minibatches=1)
    assert first_step["kl/sequence"] == 0.0
    assert first_step["objective/rlhf_reward"] == first_step["reward/mean"]
    logprobs, old_logprobs, mask = calls[0]
    torch.testing.assert_close(logprobs * mask, old_logprobs * mask, atol=1e-6, rtol=0)
    assert first_step["policy/clipfrac"] == 0.0
    assert abs(first_step["policy/approx_kl"]) < 1e-10


def test_ppo_raises_the_reward(run):
    """12 steps with a small fixed KL coefficient: the mean reward of the last 3 steps is more than twice that of
    the first 3 (about 2 'e' per completion at the start); the KL to the reference grows but stays finite."""
    records = run("learn", max_steps=12, adaptive_kl=False, init_kl_coef=0.05)
    start = sum(record["reward/mean"] for record in records[:3]) / 3
    end = sum(record["reward/mean"] for record in records[-3:]) / 3
    assert end > 2 * start, (start, end)
    assert all(math.isfinite(record["kl/sequence"]) for record in records)
    assert records[-1]["kl/sequence"] > 1.0
    assert records[-1]["policy/entropy"] < records[0]["policy/entropy"]


def test_a_huge_kl_coefficient_keeps_the_policy_at_its_reference(run):
    """The same run without a KL penalty and with beta = 10: the penalty holds the sequence KL near 0."""
    free = run("free", max_steps=8, adaptive_kl=False, init_kl_coef=0.0)
    held = run("held", max_steps=8, adaptive_kl=False, init_kl_coef=10.0)
    assert {record["kl/coef"] for record in held} == {10.0}
    free_kl = max(record["kl/sequence"] for record in free[-3:])
    held_kl = max(abs(record["kl/sequence"]) for record in held[-3:])
    assert free_kl > 5.0
    assert held_kl < 0.1 * free_kl, (held_kl, free_kl)


def test_the_adaptive_controller_moves_beta_towards_the_target(run):
    """Ziegler et al.'s controller: beta falls while the KL is below target and rises once it is above.

    A small target (1 nat) and horizon (100 sequences) make each step's change visible: |change| <= 20% * 16 / 100.
    """
    records = run("adaptive", max_steps=10, target_kl=1.0, kl_horizon=100, init_kl_coef=0.05)
    for before, after in zip(records, records[1:], strict=False):
        change = after["kl/coef"] - before["kl/coef"]
        assert math.copysign(1, change) == math.copysign(1, before["kl/sequence"] - 1.0), (before, after)
        assert abs(change) <= 0.2 * 16 / 100 * before["kl/coef"] * (1 + 1e-9)
    kls = [record["kl/sequence"] for record in records]
    assert min(kls) < 1.0 < max(kls)  # both directions happened


def test_a_resumed_run_reproduces_the_uninterrupted_one(tmp_path, run):
    """Stop after step 2 (max_steps), resume to step 4: the same final weights, the same metrics (every number but
    the timings), and the KL controller's beta continues from where it was, not from init_kl_coef, its lookahead's
    line through the KLs of the steps before the interruption."""
    settings = dict(target_kl=3.0, kl_horizon=100, init_kl_coef=0.05, save_every=2, kl_lookahead=2, kl_window=3)
    uninterrupted = run("uninterrupted", max_steps=4, **settings)
    run("resumed", max_steps=2, **settings)
    trainer_state = json.loads((tmp_path / "resumed/checkpoints/step-00000002/trainer_state.json").read_text())
    assert trainer_state["kl_controller"]["value"] != 0.05
    resumed = run("resumed", max_steps=4, **settings)
    assert resumed[2]["kl/coef"] == uninterrupted[2]["kl/coef"] == trainer_state["kl_controller"]["value"]

    def without_timings(records):
        return [{key: value for key, value in record.items() if key != "step_seconds"} for record in records]

    assert without_timings(resumed) == without_timings(uninterrupted)
    final = GPT2LMHeadModel.from_pretrained(tmp_path / "resumed" / "final").state_dict()
    reference = GPT2LMHeadModel.from_pretrained(tmp_path / "uninterrupted" / "final").state_dict()
    for name, tensor in reference.items():
        assert torch.equal(final[name], tensor), name  # bit for bit
    # a checkpoint's policy loads like any model, for the frontier's evaluation
    assert GPT2LMHeadModel.from_pretrained(tmp_path / "resumed" / "checkpoints" / "step-00000004" / "policy")


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path, run, monkeypatch):
    calls = []
    original = ppo_module.clipped_policy_loss

    def poisoned(logprobs, old_logprobs, advantages, mask, clip_range):
        calls.append(1)
        loss, stats = original(logprobs, old_logprobs, advantages, mask, clip_range)
        return (loss * float("nan") if len(calls) == 3 else loss), stats

    monkeypatch.setattr(ppo_module, "clipped_policy_loss", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 3 .*Last good checkpoint: .*step-00000002"):
        run("nan", max_steps=4, ppo_epochs=1, num_minibatches=1, save_every=2)
    assert sorted(path.name for path in (tmp_path / "nan" / "checkpoints").iterdir()) == ["step-00000002"]


def test_a_reward_of_the_wrong_shape_is_named(tmp_path, tiny_tokenizer, make_tiny_gpt2):
    with pytest.raises(ValueError, match=r"reward: returned shape \(1,\) for 16 texts"):
        train_ppo(ppo_config(tmp_path), make_tiny_gpt2(), tiny_tokenizer, PROMPTS * 4, lambda texts: torch.zeros(1))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_minibatches": 3}, "num_minibatches: batch_size=16 rollouts cannot be split into 3"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps: must be 1 for PPO"),
        ({"lam": 1.5}, r"lam: must be in \[0, 1\]"),
        ({"init_kl_coef": 0.0}, "init_kl_coef: must be > 0"),
        ({"clip_range": 0.0}, "clip_range: must be > 0"),
        ({"kl_lookahead": -1}, "kl_lookahead: must be >= 0"),
        ({"kl_window": 2}, r"kl_window: must be >= 3 \(a line through at least 3 KLs\)"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        ppo_config(tmp_path, **overrides)


def test_every_logged_metric_is_documented(run):
    documented = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    names = {name for record in run("documented", max_steps=1) for name in record} - {"step"}
    for name in names:
        assert f"`{name}`" in documented, name
