"""Loading the models and tokenizers a trainer starts from (local paths or Hub names alike)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from dpo_teach.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_causal_lm(name_or_path: str, dtype: str = "float32") -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained`` in ``dtype`` ('float32', 'bfloat16' or 'float16')."""
    if not name_or_path:
        raise ConfigError("model: give a path or Hub name of a causal language model (or pass a model object)")
    with _loading(name_or_path):
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype])


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained``; GPT-2-style tokenizers without a pad token pad with EOS.

    Padding with EOS is safe here: ``dpo_teach.data`` masks padding by position, never by token id,
    so the EOS that ends a completion keeps its label.
    """
    with _loading(name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"model: the tokenizer of {name_or_path} has no EOS token; completions need one to end")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@contextlib.contextmanager
def _loading(name_or_path: str) -> Iterator[None]:
    """Turn transformers' failure to find or read ``name_or_path`` (OSError, or ValueError for a malformed Hub name)
    into a :class:`ConfigError` naming the ``model`` field and what is accepted; the original stays the cause."""
    try:
        yield
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"model: cannot load {name_or_path!r} ({reason}); expected a directory written by save_pretrained, or a "
            "Hub name (downloading needs the network)"
        ) from error


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every ``nn.Dropout``'s probability to 0 (the DPO authors' and TRL's default for DPO)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
