"""What every trainer on examples loads before its loop: the model, the tokenizer and the tokenized examples."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dpo_teach.data import load_and_tokenize
from dpo_teach.errors import DataError
from dpo_teach.train.fingerprint import data_fingerprint
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
    run's device, and load, validate and tokenize the ``kind`` ("preference" or "sft") examples, saying how many
    prompts were truncated. Records the fingerprints of the starting model, the tokenizer and the training data
    with the run (:meth:`TrainingRun.add_input`), so that resuming refuses a change to any of them."""
    config = run.config
    passed = (model is not None, tokenizer is not None)
    tokenizer = tokenizer or load_tokenizer(config.model)
    model = model or load_model(config.model, config.model_dtype)
    run.add_model_and_tokenizer(model, tokenizer, *passed)
    if config.disable_dropout:
        disable_dropout(model)
    model.to(run.accelerator.device)

    def tokenized(source, what: str) -> list[dict]:
        examples, truncated = load_and_tokenize(
            source, kind, tokenizer, config.max_length, config.max_prompt_length, config.truncation_mode,
            skip_invalid=config.skip_invalid, progress_bar=config.progress_bar,
        )  # fmt: skip
        if truncated:
            run.accelerator.print(
                f"{run.name}: {truncated} of {len(examples)} {what} prompts truncated to max_prompt_length="
                f"{config.max_prompt_length} tokens ({config.truncation_mode}) to fit max_length={config.max_length}"
            )
        return examples

    source = train_examples if train_examples is not None else config.train_data
    train = tokenized(source, "training")
    if not train:
        raise DataError(f"train_data: no {kind} examples; give a JSONL file or a save_to_disk directory")
    described = f"{source}" if isinstance(source, str | Path) else "passed in"
    run.add_input("train_data", data_fingerprint(train), f"the training examples {described}")
    held_out_source = eval_examples if eval_examples is not None else config.eval_data
    held_out = tokenized(held_out_source, "held-out") if config.eval_every else []
    return Inputs(model, tokenizer, train, held_out)
