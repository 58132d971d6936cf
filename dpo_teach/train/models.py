"""Loading the models and tokenizers a trainer starts from (local paths or Hub names alike)."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype`` ('float32', 'bfloat16' or 'float16')."""
    if not name_or_path:
        raise ValueError("model: give a path or Hub name of a causal language model (or pass a model object)")
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype])


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained``; GPT-2-style tokenizers without a pad token pad with EOS.

    Padding with EOS is safe here: ``dpo_teach.data`` masks padding by position, never by token id,
    so the EOS that ends a completion keeps its label.
    """
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.eos_token_id is None:
        raise ValueError(f"{name_or_path}: the tokenizer has no EOS token; completions need one to end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every ``nn.Dropout``'s probability to 0 (the DPO authors' and TRL's default for DPO)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
