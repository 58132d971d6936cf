"""What every trainer on examples loads before its loop: the model, the tokenizer and the tokenized examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.data import load_and_tokenize
from dpo_teach.train.models import disable_dropout, load_causal_lm, load_tokenizer
from dpo_teach.train.run import TrainingRun


@dataclass
class Inputs:
    """The pieces of a run, ready for ``train_loop``."""

    model: torch.nn.Module
    tokenizer: object
    train: list[dict]
    """Tokenized training examples."""
    held_out: list[dict]
    """Tokenized held-out examples; empty when evaluation is off or no held-out data is given."""


def load_inputs(
    run: TrainingRun,
    kind: str,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples=None,
    eval_examples=None,
    load_model=load_causal_lm,
) -> Inputs:
    """Fill in what the caller did not pass from ``run.config`` (model and tokenizer by name or path, loaded with
    ``load_model``; data from ``train_data`` / ``eval_data``), turn dropout off if asked, put the model on the
    run's device, and load, validate and tokenize the ``kind`` ("preference" or "sft") examples."""
    config = run.config
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = model or load_model(config.model, config.model_dtype)
    if config.disable_dropout:
        disable_dropout(model)
    model.to(run.accelerator.device)

    def tokenized(source) -> list[dict]:
        return load_and_tokenize(
            source, kind, tokenizer, config.max_length, config.max_prompt_length, config.truncation_mode,
            skip_invalid=config.skip_invalid, progress_bar=config.progress_bar,
        )  # fmt: skip

    train = tokenized(train_examples if train_examples is not None else config.train_data)
    if not train:
        raise ValueError(f"train_data: no {kind} examples; give a JSONL file or a save_to_disk directory")
    held_out = tokenized(eval_examples if eval_examples is not None else config.eval_data) if config.eval_every else []
    return Inputs(model, tokenizer, train, held_out)
