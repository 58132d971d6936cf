"""Fingerprints of what a run starts from: its model's weights, its tokenizer and its (tokenized) data.

Every checkpoint records them and resuming compares them (``dpo_teach.train.checkpoint.check_resumable``), so a
run is never continued on an edited data file, another starting model or another tokenizer. They are taken at
the start of every run, fresh or resumed, so each must cost little next to loading what it fingerprints:

- **data**: SHA-256 of the tokenized examples' token ids, in order. Exact (any edit that changes what is trained
  on is seen; one that changes nothing, such as the order of keys in a JSON line, is not) and the same for every
  source (a JSONL file, a ``save_to_disk`` directory, a list, a ``datasets.Dataset``), which a hash of a file's
  bytes would not be. One pass over token ids already in memory: far less than tokenizing them was.
- **model**: the names, dtypes and shapes of its tensors and up to :data:`SAMPLED_VALUES` evenly spaced values of
  each, a few MB however large the model. Hashing every weight would take seconds at each start for gpt2-large's
  3 GB, and a model often comes as an object (the frontier, notebooks) with no file to take sizes and times from.
  Another checkpoint, more training or another seed changes nearly every value and is caught; an edit of a few
  single weights that falls between the sampled ones is not. ``values_per_tensor=None`` hashes every value, for
  keys that must be exact (the reference log-prob cache, ``dpo_teach.train.reference``).
- **tokenizer**: its serialized form (a fast tokenizer's vocabulary, merges, normalizer and added tokens) and its
  special tokens.

The reward function of PPO is code, not data, and has no fingerprint: resuming with another one is not detected.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import torch

SAMPLED_VALUES = 4096
"""Values per tensor in the fingerprint a checkpoint records (module docstring)."""


def model_fingerprint(model: torch.nn.Module, values_per_tensor: int | None = None) -> str:
    """SHA-256 of every parameter and buffer: names, dtypes, shapes and values (every value, or up to
    ``values_per_tensor`` evenly spaced ones of each tensor)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        values = tensor.detach().reshape(-1)  # (numel,)
        if values_per_tensor is not None and values.numel() > values_per_tensor:
            values = values[:: math.ceil(values.numel() / values_per_tensor)]
        digest.update(values.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fingerprint(examples: Sequence[dict]) -> str:
    """SHA-256 of the examples' list and string fields (token ids, texts), in order."""
    digest = hashlib.sha256()
    for example in examples:
        for key in sorted(example):
            if isinstance(example[key], list | str):
                digest.update(f"{key}:{example[key]!r}".encode())  # repr: quoted, so strings cannot run together
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of a tokenizer's serialized form (a slow one's vocabulary) and its special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    serialized = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    return hashlib.sha256(f"{serialized}|{special}".encode()).hexdigest()
