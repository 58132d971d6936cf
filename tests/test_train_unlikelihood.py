"""The unlikelihood trainer on a tiny GPT-2: the loss it reports, what it learns, its metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

from dpo_teach.data import tokenize_preference
from dpo_teach.train.config import SFTConfig, UnlikelihoodConfig
from dpo_teach.train.loop import micro_batch_indices
from dpo_teach.train.sft import train_sft
from dpo_teach.train.unlikelihood import train_unlikelihood


def ul_config(output_dir, **overrides) -> UnlikelihoodConfig:
    values = dict(
        output_dir=str(output_dir), max_steps=4, batch_size=8, learning_rate=1e-3, optimizer="adamw", warmup_steps=1,
        eval_every=2, save_every=2, eval_batch_size=8, max_length=32, max_prompt_length=16, progress_bar=False,
    )  # fmt: skip
    values.update(overrides)
    return UnlikelihoodConfig(**values)


def read_metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def completion_token_logps(model, prompt: list[int], completion: list[int]) -> list[float]:
    """log pi(y_t | x, y_<t) of each completion token, from a float64 log-softmax of one unpadded row."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].double()  # (T, V)
    log_probs = torch.log_softmax(logits, dim=-1)
    return [log_probs[len(prompt) + t - 1, token].item() for t, token in enumerate(completion)]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_the_first_loss_is_the_unlikelihood_loss_by_hand(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs, alpha):
    """Recomputed from the initial model, one pair at a time: mean over the 8 pairs of step 1 of
    -mean_t log pi(y_w,t) - alpha * mean_t log(1 - pi(y_l,t)); alpha = 0 is the per-pair mean NLL of chosen."""
    config = ul_config(tmp_path / "ul", max_steps=1, eval_every=0, alpha=alpha)
    train_unlikelihood(config, make_tiny_gpt2(), tiny_tokenizer, tiny_pairs)
    model = make_tiny_gpt2().eval()
    losses, nlls, unlikelihoods = [], [], []
    for index in micro_batch_indices(len(tiny_pairs), config, step=0, num_processes=1, process_index=0)[0]:
        tokens = tokenize_preference(tiny_pairs[index], tiny_tokenizer, 32, 16)
        chosen = completion_token_logps(model, tokens["prompt_input_ids"], tokens["chosen_input_ids"])
        rejected = completion_token_logps(model, tokens["prompt_input_ids"], tokens["rejected_input_ids"])
        nlls.append(-sum(chosen) / len(chosen))
        unlikelihoods.append(-sum(math.log(1 - math.exp(logp)) for logp in rejected) / len(rejected))
        losses.append(nlls[-1] + alpha * unlikelihoods[-1])
    first = read_metrics(tmp_path / "ul")[0]
    assert first["loss"] == pytest.approx(sum(losses) / 8, rel=1e-5)
    assert first["nll/chosen"] == pytest.approx(sum(nlls) / 8, rel=1e-5)
    assert first["unlikelihood/rejected"] == pytest.approx(sum(unlikelihoods) / 8, rel=1e-5)


@pytest.fixture
def sft_on_both_dir(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs) -> Path:
    """The tiny GPT-2 after 30 SFT steps on both completions of every pair: like the paper's SFT policy, which
    sampled the pairs, it finds chosen and rejected completions about equally likely (-11.8 and -12.8 nats)."""
    examples = [
        {"prompt": pair["prompt"], "completion": pair[key]} for pair in tiny_pairs for key in ("chosen", "rejected")
    ]
    config = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=30, batch_size=16, learning_rate=3e-3, warmup_steps=0,
        eval_every=0, save_every=0, max_length=32, max_prompt_length=16, progress_bar=False,
    )  # fmt: skip
    return train_sft(config, make_tiny_gpt2(), tiny_tokenizer, examples)


def test_unlikelihood_raises_chosen_and_lowers_rejected(tmp_path, tiny_tokenizer, tiny_pairs, sft_on_both_dir):
    """On held-out pairs, from the SFT policy: log pi(y_w | x) rises and log pi(y_l | x) falls (-12.8 -> -35 nats
    seen). With alpha = 0 (SFT on the chosen completions, Preferred-FT) the rejected log-prob rises instead (to
    -10.3): the completions share most tokens ("was", the endings, EOS), which the NLL term makes likelier."""
    after = {}
    for alpha in (1.0, 0.0):
        output_dir = tmp_path / f"alpha-{alpha}"
        config = ul_config(output_dir, max_steps=60, eval_every=60, save_every=0, alpha=alpha)
        policy = GPT2LMHeadModel.from_pretrained(sft_on_both_dir)
        train_unlikelihood(config, policy, tiny_tokenizer, tiny_pairs[8:], tiny_pairs[:8])
        before, after[alpha] = [record for record in read_metrics(output_dir) if "eval/loss" in record]
        assert after[alpha]["eval/loss"] < before["eval/loss"]
        assert after[alpha]["eval/logps/chosen"] > before["eval/logps/chosen"] + 1.0
    assert after[1.0]["eval/logps/rejected"] < before["eval/logps/rejected"] - 5.0
    assert after[1.0]["eval/unlikelihood/rejected"] < before["eval/unlikelihood/rejected"]
    assert after[0.0]["eval/logps/rejected"] > after[1.0]["eval/logps/rejected"] + 5.0


def test_every_logged_metric_is_documented(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    documented = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    section = documented.split("## Unlikelihood")[1].split("\n## ")[0]
    output_dir = tmp_path / "documented"
    train_unlikelihood(ul_config(output_dir, max_steps=2), make_tiny_gpt2(), tiny_tokenizer, tiny_pairs[8:],
                       tiny_pairs[:8])  # fmt: skip
    names = {name for record in read_metrics(output_dir) for name in record} - {"step"}
    for name in names:
        assert f"`{name.removeprefix('eval/')}`" in documented, name
    for name in ("loss", "nll/chosen", "unlikelihood/rejected", "logps/chosen", "logps/rejected"):
        assert f"`{name}`" in section, name


def test_alpha_must_not_be_negative():
    with pytest.raises(ValueError, match="alpha: must be >= 0, got -0.1"):
        UnlikelihoodConfig(alpha=-0.1)
