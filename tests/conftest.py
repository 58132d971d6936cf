"""Shared fixtures: a tiny tokenizer trained here (no download) and a few preference pairs."""

from __future__ import annotations

import itertools
import random

import pytest


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Each test starts from a new process's accelerate state, as accelerate's own tests do (its
    ``AccelerateTestCase`` resets the state in ``tearDown``): accelerate keeps one precision per process, and
    tests of float32 and bfloat16 training share this one. The library itself never resets it."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _sentences() -> list[str]:
    """A few hundred short, deterministic movie-review sentences."""
    subjects = ["the movie", "this film", "the plot", "the acting", "the ending", "the music"]
    verbs = ["was", "felt", "seemed", "is"]
    adjectives = ["great", "boring", "wonderful", "dull", "moving", "awful", "funny", "slow", "brilliant", "weak"]
    endings = [".", "!", " and I loved it.", " and I hated it."]
    return [
        f"{subject.capitalize()} {verb} {adjective}{ending}"
        for subject, verb, adjective, ending in itertools.product(subjects, verbs, adjectives, endings)
    ]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab 400) trained on synthetic sentences, GPT-2 style: pad == eos == bos.

    Any text can be encoded (byte-level alphabet); ``len(tokenizer)`` is the vocabulary size a
    tiny model needs. No special tokens are added by ``add_special_tokens=True``, as with GPT-2.
    """
    from dpo_teach.sentiment.models import train_tokenizer

    return train_tokenizer(_sentences(), vocab_size=400)


@pytest.fixture
def tiny_pairs() -> list[dict]:
    """40 preference examples (prompt, chosen, rejected), the same every call: positive is chosen."""
    rng = random.Random(0)
    prompts = ["The movie", "This film", "The plot", "The acting", "Honestly, the ending"]
    positive = ["great", "wonderful", "moving", "funny", "brilliant"]
    negative = ["boring", "dull", "awful", "slow", "weak"]
    pairs = []
    for index in range(40):
        prompt = prompts[index % len(prompts)]
        chosen = f" was {rng.choice(positive)}" + rng.choice([".", " and I loved it."])
        rejected = f" was {rng.choice(negative)}" + rng.choice([".", " and I hated it."])
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


@pytest.fixture(scope="session")
def make_tiny_gpt2(tiny_tokenizer):
    """``make_tiny_gpt2(seed=0)``: a 2-layer, 32-wide GPT-2 with random weights and dropout 0.1 (the trainers
    turn dropout off; tests that it matters can keep it)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(seed: int = 0) -> GPT2LMHeadModel:
        torch.manual_seed(seed)
        config = GPT2Config(
            vocab_size=len(tiny_tokenizer),
            n_positions=64,
            n_embd=32,
            n_layer=2,
            n_head=2,
            bos_token_id=tiny_tokenizer.eos_token_id,
            eos_token_id=tiny_tokenizer.eos_token_id,
        )
        return GPT2LMHeadModel(config)

    return make


@pytest.fixture
def saved_run_inputs(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    """A tiny model + tokenizer saved with save_pretrained and train/eval pairs as JSONL, as the CLI reads them.

    Returns a dict of config fields: ``model``, ``train_data``, ``eval_data``.
    """
    import json

    model_dir = tmp_path / "inputs" / "model"
    make_tiny_gpt2().save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    train_path, eval_path = tmp_path / "inputs" / "train.jsonl", tmp_path / "inputs" / "eval.jsonl"
    train_path.write_text("".join(json.dumps(pair) + "\n" for pair in tiny_pairs[8:]))
    eval_path.write_text("".join(json.dumps(pair) + "\n" for pair in tiny_pairs[:8]))
    return {"model": str(model_dir), "train_data": str(train_path), "eval_data": str(eval_path)}


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-layer DistilBERT sentiment classifier with random weights, saved like a Hub checkpoint."""
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(
        vocab_size=len(tiny_tokenizer),
        dim=16,
        n_layers=2,
        n_heads=2,
        hidden_dim=32,
        max_position_embeddings=512,
        pad_token_id=tiny_tokenizer.pad_token_id,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    path = tmp_path_factory.mktemp("classifier")
    DistilBertForSequenceClassification(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)
