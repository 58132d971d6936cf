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

from dpo_teach.data import IGNORE_INDEX, collate_sft
from dpo_teach.logprobs import completion_logps
from dpo_teach.train.config import SFTConfig
from dpo_teach.train.loop import StepOutput, train_loop
from dpo_teach.train.run import Callback, TrainingRun
from dpo_teach.train.setup import load_inputs
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


def train_sft(
    config: SFTConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    accelerator: Accelerator | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Fine-tune ``model`` with the causal-LM loss; returns the directory of the final model.

    Examples are ``{"prompt", "completion"}`` or ``{"text"}`` dicts (a list, a ``datasets.Dataset``
    or a JSONL path); ``model`` and ``tokenizer`` default to ``config.model``. ``accelerator`` and
    ``callbacks`` as in ``dpo_teach.train.dpo.train_dpo``.
    """
    with TrainingRun(config, accelerator, "SFT", callbacks) as run:
        inputs = load_inputs(run, "sft", model, tokenizer, train_examples, eval_examples)
        if not config.completion_only:  # every token after the first is scored, the prompt's too
            for example in inputs.train + inputs.held_out:
                example["labels"] = list(example["input_ids"])
        collate = partial(collate_sft, pad_token_id=inputs.tokenizer.pad_token_id)
        if inputs.held_out:
            evaluate = partial(
                evaluate_nll, accelerator=run.accelerator, examples=inputs.held_out, collate=collate,
                batch_size=config.eval_batch_size, progress_bar=config.progress_bar,
            )  # fmt: skip
            run.add_evaluation(evaluate)
        return train_loop(run, inputs.model, inputs.tokenizer, SFTObjective(), inputs.train, collate)
