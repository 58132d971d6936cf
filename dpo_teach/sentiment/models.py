"""The tiny preset's tokenizer and model: a byte-level BPE trained on the corpus and a small GPT-2.

The Hub presets load ``gpt2`` / ``gpt2-large`` with ``dpo_teach.train.models`` instead; everything
after this point (SFT, sampling, DPO, evaluation) is the same code for every preset.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

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
    """A randomly initialized ``GPT2LMHeadModel`` of ``shape`` over ``tokenizer``'s vocabulary (seeded)."""
    torch.manual_seed(seed)
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
    return GPT2LMHeadModel(config)
