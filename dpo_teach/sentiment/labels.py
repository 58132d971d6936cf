"""What the tiny preset's ground-truth classifier learns from: reviews and their prefixes, labelled by rating.

The reward scores prompt + completion texts: a 2-8 token review prefix continued by a few dozen sampled tokens,
often cut mid-sentence. So the classifier is trained on such texts too: every review whole, and one prefix of it
of ``min_tokens``-``max_tokens`` tokens, each labelled with the review's label (1 for ratings >= 6). A prefix
that holds no opinion yet (a synopsis, a viewing context) keeps its review's label, so the classifier learns to
give it p(positive) near the base rate: the right score for a text that says nothing either way.
"""

from __future__ import annotations

import random

from dpo_teach.sentiment.corpus import Review


def labelled_texts(reviews: list[Review], tokenizer, min_tokens: int = 4, max_tokens: int = 48, seed: int = 0):
    """``[{"text", "label"}, ...]``: each review whole, then one prefix of n ~ U{min_tokens..max_tokens} tokens
    (fewer if the review is shorter), decoded back to a string; deterministic for a ``seed``."""
    if not 0 < min_tokens <= max_tokens:
        raise ValueError(f"need 0 < min_tokens <= max_tokens, got {min_tokens} and {max_tokens}")
    rng = random.Random(seed)
    token_ids = tokenizer([review.text for review in reviews], add_special_tokens=False)["input_ids"]
    examples = []
    for review, ids in zip(reviews, token_ids, strict=True):
        length = min(rng.randint(min_tokens, max_tokens), len(ids))
        prefix = tokenizer.decode(ids[:length], clean_up_tokenization_spaces=False)
        examples += [{"text": review.text, "label": review.label}, {"text": prefix, "label": review.label}]
    return examples
