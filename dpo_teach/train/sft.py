"""The SFT trainer: the causal-LM loss on completions (or whole texts), on the shared loop.

    loss = -(1 / N) * sum over scored tokens of log pi_theta(y_t | x, y_<t)

where N counts the scored tokens of the whole optimizer step, so every token weighs the same
however the step is split into micro-batches and processes. It pretrains and fine-tunes the tiny
GPT-2 of the sentiment task, and is Preferred-FT when trained on the chosen completions.
Metrics: ``loss`` (per-token NLL); held out, ``eval/loss`` and ``eval/perplexity`` = exp(eval/loss).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator

from dpo_teach.data import collate_sft, load_and_tokenize
from dpo_teach.logprobs import IGNORE_INDEX, completion_logps
from dpo_teach.train.config import SFTConfig
from dpo_teach.train.loop import StepOutput, make_accelerator, train_loop
from dpo_teach.train.models import disable_dropout, load_causal_lm, load_tokenizer
from dpo_teach.train.sharded import map_examples

Batch = dict[str, torch.Tensor]


class SFTObjective:
    """Summed negative log-likelihood of a micro-batch; ``num_items`` counts scored tokens."""

    def num_items(self, batch: Batch) -> int:
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())  # the first position is never predicted

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        logps, _ = completion_logps(model, batch)
        return StepOutput(loss_sum=-logps.sum(), metrics={})


def evaluate_nll(
    model: torch.nn.Module,
    accelerator: Accelerator,
    examples: Sequence[dict],
    collate,
    batch_size: int,
    progress_bar: bool = True,
) -> dict[str, float]:
    """Held-out per-token NLL (``loss``) and ``perplexity``, the model in eval mode."""
    model.eval()

    def sums_and_counts(batch: Batch) -> torch.Tensor:
        logps, counts = completion_logps(model, batch)
        return torch.stack([-logps, counts.to(logps.dtype)], dim=1)  # (b, 2)

    totals = map_examples(accelerator, examples, collate, batch_size, sums_and_counts, "evaluating", progress_bar)
    totals = totals.sum(dim=0)
    loss = (totals[0] / totals[1]).item()
    return {"loss": loss, "perplexity": math.exp(loss)}


def _tokenized(config: SFTConfig, source, tokenizer) -> list[dict]:
    """Validated, tokenized examples of ``source``; [] when none given. Without ``completion_only`` every token
    after the first is scored, the prompt's too."""
    tokenized = load_and_tokenize(
        source, "sft", tokenizer, config.max_length, config.max_prompt_length, config.truncation_mode,
        skip_invalid=config.skip_invalid, progress_bar=config.progress_bar,
    )  # fmt: skip
    if not config.completion_only:
        for example in tokenized:
            example["labels"] = list(example["input_ids"])
    return tokenized


def train_sft(
    config: SFTConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    accelerator: Accelerator | None = None,
) -> Path:
    """Fine-tune ``model`` with the causal-LM loss; returns the directory of the final model.

    Examples are ``{"prompt", "completion"}`` or ``{"text"}`` dicts (a list, a ``datasets.Dataset``
    or a JSONL path); ``model`` and ``tokenizer`` default to ``config.model``.
    """
    accelerator = accelerator or make_accelerator(config)
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = model or load_causal_lm(config.model, config.model_dtype)
    if config.disable_dropout:
        disable_dropout(model)
    train = _tokenized(config, train_examples if train_examples is not None else config.train_data, tokenizer)
    if not train:
        raise ValueError("train_data: no training examples; give a JSONL file or a save_to_disk directory")
    held_out = (
        _tokenized(config, eval_examples if eval_examples is not None else config.eval_data, tokenizer)
        if config.eval_every
        else []
    )
    collate = partial(collate_sft, pad_token_id=tokenizer.pad_token_id)
    evaluate = (
        partial(
            evaluate_nll,
            accelerator=accelerator,
            examples=held_out,
            collate=collate,
            batch_size=config.eval_batch_size,
            progress_bar=config.progress_bar,
        )
        if held_out
        else None
    )
    return train_loop(accelerator, model, tokenizer, SFTObjective(), train, collate, config, evaluate)
