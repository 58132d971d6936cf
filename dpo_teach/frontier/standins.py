"""Stand-ins for the Hub presets' models, tokenizer and dataset, built here: the paper's shapes without a download.

The dry run (``dpo_teach.frontier.dry_run``) runs the ``gpt2`` and ``paper`` presets on a machine that cannot
reach the Hugging Face Hub. Every name the preset gives is replaced by a local directory holding a stand-in of
the same shape, and the task's usual loaders read them (``load_causal_lm``, ``make_reward``, ``imdb_corpus``):

- **the policy**: a GPT-2 built from the architecture of ``gpt2`` or ``gpt2-large`` below, with random weights;
- **the reward**: a RoBERTa-large sequence classifier shaped like ``siebert/sentiment-roberta-large-english``,
  with random weights, its labels NEGATIVE / POSITIVE as the paper's;
- **the tokenizer**: a byte-level BPE trained here on the synthetic reviews (it learns the few thousand tokens the
  corpus holds), then filled up with placeholder tokens (`` w00000``, `` w00001``...) to GPT-2's 50,257 ids, so
  that every id a random-weight model samples decodes to text that tokenizes back to the same number of tokens.
  Both models read it; their embedding tables keep the real vocabulary sizes (50,257 and RoBERTa's 50,265);
- **the dataset**: an IMDb-format ``DatasetDict`` (``text``, ``label``) of synthetic reviews joined until each is
  longer than ``min_review_tokens``, so that every SFT row is cut at the preset's ``max_length``: the width of a
  batch of 64 real IMDb reviews padded to its longest, since about one IMDb review in six is longer than 512
  tokens.

Random weights change what the models say, not what a step costs: FLOPs, memory and time depend on the shapes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaForSequenceClassification

from dpo_teach.frontier.stage import Stage
from dpo_teach.sentiment.corpus import synthetic_reviews
from dpo_teach.sentiment.models import train_tokenizer

# https://huggingface.co/openai-community/gpt2/blob/main/config.json (and gpt2-large/config.json): the shape fields
_GPT2 = {
    "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
    "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1,
}  # fmt: skip
POLICY_ARCHITECTURES = {"gpt2": _GPT2, "gpt2-large": {**_GPT2, "n_embd": 1280, "n_layer": 36, "n_head": 20}}
"""GPT-2 configs by Hub name (124M and 774M parameters with the tied output embedding)."""

# https://huggingface.co/siebert/sentiment-roberta-large-english/blob/main/config.json: RoBERTa-large, two labels
CLASSIFIER_ARCHITECTURES = {
    "siebert/sentiment-roberta-large-english": {
        "vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "intermediate_size": 4096, "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1,
        "layer_norm_eps": 1e-5, "initializer_range": 0.02, "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "id2label": {0: "NEGATIVE", 1: "POSITIVE"},
        "label2id": {"NEGATIVE": 0, "POSITIVE": 1},
    }
}  # fmt: skip
"""Sequence-classifier configs by Hub name (355M parameters)."""

PLACEHOLDER = " w{:05d}"
"""Placeholder tokens that fill the tokenizer up to the policy's vocabulary: one word each, so they round-trip."""


@dataclass
class StandIns:
    """Directories of the stand-ins, to put in a TaskConfig's ``model``, ``reward`` and ``corpus``."""

    model: str
    reward: str
    corpus: str


def stand_in_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2-style BPE trained on ``texts``, filled with :data:`PLACEHOLDER` tokens to ``vocab_size`` ids."""
    tokenizer = train_tokenizer(texts, vocab_size)
    tokenizer.add_tokens([PLACEHOLDER.format(index) for index in range(vocab_size - len(tokenizer))])
    return tokenizer


def long_reviews(count: int, min_tokens: int, tokenizer, seed: int) -> list[tuple[str, int]]:
    """``count`` (text, label) reviews of more than ``min_tokens`` tokens: synthetic reviews joined in order (the
    label is the first one's)."""
    reviews, stream = [], iter(synthetic_reviews(count * (min_tokens // 40 + 2), seed))
    while len(reviews) < count:
        parts = [next(stream)]
        while len(tokenizer(" ".join(part.text for part in parts))["input_ids"]) <= min_tokens:
            parts.append(next(stream))
        reviews.append((" ".join(part.text for part in parts), parts[0].label))
    return reviews


def build_stand_ins(
    directory: Path,
    policy: dict,
    classifier: dict,
    num_train: int,
    num_test: int,
    min_review_tokens: int,
    seed: int = 0,
) -> StandIns:
    """Build (or reuse, for the same inputs) the stand-ins of the module docstring in ``directory``.

    ``policy`` and ``classifier`` are architecture dicts (:data:`POLICY_ARCHITECTURES`,
    :data:`CLASSIFIER_ARCHITECTURES`, or smaller ones of the same fields for a test).
    """
    inputs = {"policy": policy, "classifier": classifier, "train": num_train, "test": num_test}
    stage = Stage(directory, inputs | {"min_review_tokens": min_review_tokens, "seed": seed})
    result = StandIns(str(directory / "policy"), str(directory / "classifier"), str(directory / "imdb"))
    if stage.done:
        return result
    stage.start()
    import datasets

    corpus_texts = [review.text for review in synthetic_reviews(20_000, seed)]
    tokenizer = stand_in_tokenizer(corpus_texts, policy["vocab_size"])
    special = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    special["pad_token_id"] = tokenizer.pad_token_id
    torch.manual_seed(seed)
    GPT2LMHeadModel(GPT2Config(**policy, **special)).save_pretrained(result.model)
    tokenizer.save_pretrained(result.model)
    classifier_config = RobertaConfig(**copy.deepcopy(classifier), **special)
    RobertaForSequenceClassification(classifier_config).save_pretrained(result.reward)
    tokenizer.save_pretrained(result.reward)
    splits = {
        "train": long_reviews(num_train, min_review_tokens, tokenizer, 2 * seed + 100),
        "test": long_reviews(num_test, min_review_tokens, tokenizer, 2 * seed + 101),
    }
    columns = {split: {"text": [text for text, _ in rows], "label": [label for _, label in rows]}
               for split, rows in splits.items()}  # fmt: skip
    datasets.DatasetDict({split: datasets.Dataset.from_dict(data) for split, data in columns.items()}).save_to_disk(
        result.corpus
    )
    stage.finish()
    return result
