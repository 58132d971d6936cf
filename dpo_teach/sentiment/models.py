"""The tiny preset's tokenizer and models: a byte-level BPE trained on the corpus, a small GPT-2 (the policy)
and a small sentiment classifier (the ground-truth reward).

The Hub presets load ``gpt2`` / ``gpt2-large`` with ``dpo_teach.train.models`` and the paper's classifier by name
instead; everything after this point (SFT, sampling, DPO, the classifier reward, evaluation) is the same code for
every preset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
)

END_OF_TEXT = "<|endoftext|>"  # GPT-2's single special token: beginning, end and padding


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``, GPT-2 style: any text encodes (byte alphabet),
    words keep their leading space, and ``<|endoftext|>`` is BOS, EOS and padding at once."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT
    )


@dataclass
class TinyGPT2:
    """Shape of the tiny preset's GPT-2: small enough to pretrain on 2 CPU cores in minutes."""

    n_layer: int = 4
    """Transformer blocks."""
    n_embd: int = 128
    """Width of the residual stream."""
    n_head: int = 4
    """Attention heads per block."""
    n_positions: int = 128
    """Longest sequence (prompt + completion) in tokens."""


def tiny_gpt2(tokenizer: PreTrainedTokenizerFast, shape: TinyGPT2, seed: int = 0) -> GPT2LMHeadModel:
    """A randomly initialized ``GPT2LMHeadModel`` of ``shape`` over ``tokenizer``'s vocabulary, drawn from a
    generator seeded with ``seed`` (the caller's random stream is left alone)."""
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=shape.n_positions,
        n_embd=shape.n_embd,
        n_layer=shape.n_layer,
        n_head=shape.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


@dataclass
class TinyClassifier:
    """Shape of the tiny preset's sentiment classifier: a DistilBERT encoder small enough to train in a minute."""

    dim: int = 64
    """Width of the hidden states."""
    n_layers: int = 2
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads per block."""
    hidden_dim: int = 128
    """Width of each block's feed-forward layer."""
    max_position_embeddings: int = 256
    """Longest text in tokens; the reward reads a text's first this many tokens."""


SENTIMENT_LABELS = {0: "NEGATIVE", 1: "POSITIVE"}  # the label names of siebert/sentiment-roberta-large-english


def tiny_classifier(tokenizer: PreTrainedTokenizerFast, shape: TinyClassifier, seed: int = 0):
    """A randomly initialized two-class ``DistilBertForSequenceClassification`` over ``tokenizer``'s vocabulary,
    labelled NEGATIVE / POSITIVE as the paper's classifier, drawn from a generator seeded with ``seed`` (the
    caller's random stream is left alone). Bidirectional, so its first position (which it classifies) sees the
    whole text, as siebert's RoBERTa does."""
    config = DistilBertConfig(
        vocab_size=len(tokenizer),
        dim=shape.dim,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        hidden_dim=shape.hidden_dim,
        max_position_embeddings=shape.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        id2label=SENTIMENT_LABELS,
        label2id={label: index for index, label in SENTIMENT_LABELS.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DistilBertForSequenceClassification(config)
