"""The sequence-classifier trainer: cross-entropy on labelled texts, on the shared loop.

The tiny preset's ground-truth reward is such a classifier (``dpo_teach.frontier.task``): trained here on the
synthetic corpus's latent ratings, it plays the part of the paper's siebert/sentiment-roberta-large-english and
is read through the same ``ClassifierReward`` code, p(positive). Examples are ``{"text": str, "label": int}``;
for a micro-batch of B texts with logits f(x) over the classes,

    loss = -(1 / B) sum_i log softmax(f(x_i))[y_i]

``num_items`` counts texts. Metrics: ``loss`` and ``accuracy`` (argmax == label); held out, ``eval/loss`` and
``eval/accuracy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from dpo_teach.data import pad_sequences
from dpo_teach.errors import DataError
from dpo_teach.train.config import ClassifierConfig
from dpo_teach.train.loop import StepOutput, train_loop
from dpo_teach.train.models import disable_dropout
from dpo_teach.train.run import Callback, TrainingRun
from dpo_teach.train.sharded import map_examples

Batch = dict[str, torch.Tensor]


def tokenize_texts(examples: Sequence[dict], tokenizer, max_length: int, num_labels: int, progress_bar: bool = True):
    """``{"input_ids": the text's first max_length tokens, "label": int}`` per example; a bad example raises
    DataError naming its row and field."""
    tokenized = []
    for row, example in enumerate(tqdm(examples, desc="tokenizing texts", disable=not progress_bar)):
        text, label = example.get("text"), example.get("label")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"row {row}, field 'text': {text!r}; expected a non-empty string")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < num_labels:
            raise DataError(f"row {row}, field 'label': {label!r}; expected a class index 0..{num_labels - 1}")
        tokenized.append({"input_ids": tokenizer(text, add_special_tokens=False)["input_ids"][:max_length],
                          "label": label})  # fmt: skip
    return tokenized


def collate_texts(examples: list[dict], pad_token_id: int) -> Batch:
    """``input_ids`` and ``attention_mask`` ``(B, T)``, right-padded, and ``labels`` ``(B,)``."""
    sequences = [example["input_ids"] for example in examples]
    return {
        "input_ids": pad_sequences(sequences, pad_token_id),
        "attention_mask": pad_sequences([[1] * len(sequence) for sequence in sequences], 0),
        "labels": torch.tensor([example["label"] for example in examples]),
    }


class ClassificationObjective:
    """Summed cross-entropy of a micro-batch of texts; ``num_items`` counts texts."""

    def num_items(self, batch: Batch) -> int:
        return batch["labels"].shape[0]

    def per_text(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Losses ``(B,)`` (attached to the graph) and correctness ``(B,)`` (1 where argmax == label)."""
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, classes)
        losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")  # -log softmax(f(x))[y]
        return losses, (logits.argmax(dim=-1) == batch["labels"]).float().detach()

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        losses, correct = self.per_text(model, batch)
        return StepOutput(loss_sum=losses.sum(), metrics={"accuracy": correct})


def evaluate_classifier(
    model: torch.nn.Module, accelerator: Accelerator, examples, collate, batch_size: int, progress_bar: bool = True
) -> dict[str, float]:
    """Held-out mean ``loss`` and ``accuracy``, the model in eval mode."""
    model.eval()
    objective = ClassificationObjective()

    def losses_and_correct(batch: Batch) -> torch.Tensor:
        losses, correct = objective.per_text(model, batch)
        return torch.stack([losses.detach(), correct], dim=1)  # (b, 2)

    table = map_examples(accelerator, examples, collate, batch_size, losses_and_correct, "evaluating", progress_bar)
    loss, accuracy = table.mean(dim=0).tolist()
    return {"loss": loss, "accuracy": accuracy}


def train_classifier(
    config: ClassifierConfig,
    model: torch.nn.Module | None = None,
    tokenizer=None,
    train_examples: Sequence[dict] = (),
    eval_examples: Sequence[dict] = (),
    accelerator: Accelerator | None = None,
    callbacks: Sequence[Callback] = (),
) -> Path:
    """Train a sequence classifier on ``{"text", "label"}`` examples; returns the directory of the final model.

    ``model`` and ``tokenizer`` default to ``AutoModelForSequenceClassification`` / ``AutoTokenizer`` of
    ``config.model`` (a new head is drawn from the run's seeded stream). ``accelerator`` and ``callbacks`` as in
    ``dpo_teach.train.dpo.train_dpo``.
    """
    with TrainingRun(config, accelerator, "Classifier", callbacks) as run:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(config.model)
        model = model or AutoModelForSequenceClassification.from_pretrained(config.model)
        if config.disable_dropout:
            disable_dropout(model)
        model.to(run.accelerator.device)
        num_labels = model.config.num_labels

        def tokenized(examples: Sequence[dict]) -> list[dict]:
            return tokenize_texts(examples, tokenizer, config.max_length, num_labels, config.progress_bar)

        train, held_out = tokenized(train_examples), tokenized(eval_examples) if config.eval_every else []
        if not train:
            raise ValueError("train_examples: no texts to train on; give {'text', 'label'} examples")
        collate = partial(collate_texts, pad_token_id=tokenizer.pad_token_id)
        if held_out:
            run.add_evaluation(
                partial(
                    evaluate_classifier,
                    accelerator=run.accelerator,
                    examples=held_out,
                    collate=collate,
                    batch_size=config.eval_batch_size,
                    progress_bar=config.progress_bar,
                )  # fmt: skip
            )
        return train_loop(run, model, tokenizer, ClassificationObjective(), train, collate)
