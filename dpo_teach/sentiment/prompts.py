"""Prompts of the sentiment task: review prefixes of 2-8 tokens (DPO paper Sec. 6.1 and App. C.1).

The prompts x are prefixes of movie reviews; the SFT policy samples completions of them
(``dpo_teach.sampling``) that a sentiment reward then labels (``dpo_teach.sentiment.pairs``).
"""

from __future__ import annotations

import random


def make_prompts(texts: list[str], tokenizer, min_tokens: int = 2, max_tokens: int = 8, seed: int = 0) -> list[str]:
    """One prompt per review: its first n tokens, n ~ Uniform{min_tokens, ..., max_tokens} (paper App. C.1: 2-8).

    Each text is tokenized with ``add_special_tokens=False``, cut to n tokens and decoded back to a
    string: the string is the canonical prompt, re-tokenized by ``sample`` and by the DPO data pipeline.
    n is drawn for every text from ``random.Random(seed)``, so the output is deterministic. A text is
    skipped (the result may be shorter than ``texts``) when it has no more than n tokens (the prompt
    must be a proper prefix), or when its prefix does not round-trip: the decoded string is not the
    start of the text (a token boundary inside a multi-byte character) or re-tokenizes to a length
    outside [min_tokens, max_tokens].
    """
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= max_tokens, got min_tokens={min_tokens}, max_tokens={max_tokens}")
    rng = random.Random(seed)
    prompts = []
    for text in texts:
        length = rng.randint(min_tokens, max_tokens)  # drawn before any skip, so each text's n depends only on seed
        token_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(token_ids) <= length:
            continue
        prompt = tokenizer.decode(token_ids[:length], clean_up_tokenization_spaces=False)
        retokenized = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if text.startswith(prompt) and min_tokens <= len(retokenized) <= max_tokens:
            prompts.append(prompt)
    return prompts
