"""The SFT trainer: the per-token loss it reports, token weighting under accumulation, learning, whole texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dpo_teach.data import tokenize_sft
from dpo_teach.train.config import SFTConfig
from dpo_teach.train.loop import micro_batch_indices
from dpo_teach.train.sft import train_sft


def sft_examples(pairs) -> list[dict]:
    """Prompt + chosen completion, completions of varied length so micro-batches hold unequal token counts."""
    return [
        {"prompt": pair["prompt"], "completion": pair["chosen"] * (1 + index % 3)} for index, pair in enumerate(pairs)
    ]


def sft_config(output_dir, **overrides) -> SFTConfig:
    values = dict(
        output_dir=str(output_dir), max_steps=3, batch_size=8, learning_rate=1e-3, warmup_steps=0, eval_every=0,
        save_every=0, max_length=48, max_prompt_length=16, progress_bar=False,
    )  # fmt: skip
    values.update(overrides)
    return SFTConfig(**values)


def records(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("form", "completion_only"),
    [("prompt-completion", True), ("prompt-completion", False), ("text", True)],
    ids=["completion-only", "prompt-and-completion", "whole-text"],
)
def test_the_first_loss_is_the_mean_nll_over_scored_tokens(
    tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs, form, completion_only
):
    """Recomputed by hand from the initial model on the same 8 examples: the mean NLL of every scored token
    (completion tokens only, or every token after the first), padding never scored."""
    examples = sft_examples(tiny_pairs)
    if form == "text":
        examples = [{"text": example["prompt"] + example["completion"]} for example in examples]
    config = sft_config(tmp_path / "sft", max_steps=1, completion_only=completion_only)
    train_sft(config, make_tiny_gpt2(), tiny_tokenizer, examples)
    model = make_tiny_gpt2().eval()
    total, count = 0.0, 0
    for index in micro_batch_indices(len(examples), config, step=0, num_processes=1, process_index=0)[0]:
        tokens = tokenize_sft(examples[index], tiny_tokenizer, 48, 16)
        scored = tokens["labels"] if completion_only else tokens["input_ids"]
        log_probs = torch.log_softmax(model(torch.tensor([tokens["input_ids"]])).logits[0].double(), dim=-1)  # (T, V)
        for position in range(1, len(scored)):  # nothing predicts the first token
            if scored[position] != -100:
                total -= log_probs[position - 1, scored[position]].item()
                count += 1
    assert records(tmp_path / "sft")[0]["loss"] == pytest.approx(total / count, rel=1e-5)


def test_accumulation_weighs_every_token_the_same(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    """Micro-batches with unequal token counts: the accumulated gradient is the large batch's.

    A trainer that averages per micro-batch and then over micro-batches would weigh the tokens of
    short micro-batches more, changing the gradient's direction, not just its scale.
    """
    examples = sft_examples(tiny_pairs)
    for name, accumulation in (("one", 1), ("accumulated", 4)):
        config = sft_config(tmp_path / name, gradient_accumulation_steps=accumulation)
        train_sft(config, make_tiny_gpt2(), tiny_tokenizer, examples)
    for first, second in zip(records(tmp_path / "one"), records(tmp_path / "accumulated"), strict=True):
        assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)
        assert first["grad_norm"] == pytest.approx(second["grad_norm"], rel=1e-5)


def test_sft_learns_and_reports_held_out_perplexity(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    examples = sft_examples(tiny_pairs)
    config = sft_config(tmp_path / "learn", max_steps=30, eval_every=15, eval_batch_size=8)
    train_sft(config, make_tiny_gpt2(), tiny_tokenizer, examples[8:], examples[:8])
    evaluations = [record for record in records(tmp_path / "learn") if "eval/loss" in record]
    assert [record["step"] for record in evaluations] == [0, 15, 30]
    assert evaluations[-1]["eval/loss"] < evaluations[0]["eval/loss"] - 1.0
    for record in evaluations:
        assert record["eval/perplexity"] == pytest.approx(torch.tensor(record["eval/loss"]).exp().item(), rel=1e-6)


def test_every_logged_metric_is_documented(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    documented = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    examples = sft_examples(tiny_pairs)
    config = sft_config(tmp_path / "documented", max_steps=1, eval_every=1)
    train_sft(config, make_tiny_gpt2(), tiny_tokenizer, examples[8:], examples[:8])
    names = {name for record in records(tmp_path / "documented") for name in record} - {"step"}
    assert "eval/perplexity" in names
    for name in names:
        assert f"`{name}`" in documented or f"`{name.removeprefix('eval/')}`" in documented, name
