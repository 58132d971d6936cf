"""Ground-truth rewards: VADER (tiny preset) and a sequence classifier loaded by path (the Hub presets' code path)."""

from __future__ import annotations

import pytest
import torch

from dpo_teach.sentiment.rewards import ClassifierReward, VaderReward, make_reward

TEXTS = [
    "This movie was wonderful.",
    "The plot is dull and the acting is wooden.",
    "I saw it with my sister on a rainy Sunday, and the ending is not bad at all.",
    "Awful.",
    "The score is lovely, but the pacing drags in the middle and the dialogue is clunky.",
    "Great fun.",
    "It passes the time.",
    "The story follows a nurse in Lisbon who inherits a crumbling hotel on the coast.",
    "Hated it.",
    "A slow, strange, beautiful film that stayed with me for days.",
]


def _direct_logits(path: str, texts: list[str]) -> torch.Tensor:
    """The model's logits computed one text at a time, without padding: the reference."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return torch.cat([model(**tokenizer(text, return_tensors="pt")).logits for text in texts])  # (N, 2)


def test_vader_orders_plain_sentiment_and_stays_in_unit_interval():
    reward = VaderReward()
    scores = reward(["This movie was wonderful", "This movie was awful", "This movie was"])
    assert scores.shape == (3,) and scores.dtype == torch.float32
    assert scores[0] > 0.5 > scores[1]
    assert scores[2] == 0.5  # no sentiment words: compound 0
    assert reward(TEXTS).min() >= 0 and reward(TEXTS).max() <= 1
    assert reward([]).shape == (0,)


def test_classifier_prob_and_logit_equal_the_models_own_outputs(tiny_classifier_dir):
    reference = _direct_logits(tiny_classifier_dir, TEXTS)  # (N, 2)
    prob = ClassifierReward(tiny_classifier_dir, device="cpu")(TEXTS)
    logit = ClassifierReward(tiny_classifier_dir, output="logit", device="cpu")(TEXTS)
    assert prob.shape == logit.shape == (len(TEXTS),)
    assert prob.dtype == logit.dtype == torch.float32
    assert ((prob >= 0) & (prob <= 1)).all()
    torch.testing.assert_close(logit, reference[:, 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(prob, reference.softmax(-1)[:, 1], atol=1e-5, rtol=0)


def test_classifier_scores_do_not_depend_on_batching(tiny_classifier_dir):
    one_by_one = ClassifierReward(tiny_classifier_dir, output="logit", batch_size=1, device="cpu")(TEXTS)
    batched = ClassifierReward(tiny_classifier_dir, output="logit", batch_size=7, device="cpu")(TEXTS)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=0)


def test_positive_label_by_name_or_index_and_a_clear_error_otherwise(tiny_classifier_dir):
    by_name = ClassifierReward(tiny_classifier_dir, positive_label="NEGATIVE", device="cpu")(TEXTS)
    by_index = ClassifierReward(tiny_classifier_dir, positive_label=0, device="cpu")(TEXTS)
    positive = ClassifierReward(tiny_classifier_dir, device="cpu")(TEXTS)
    torch.testing.assert_close(by_name, by_index)
    torch.testing.assert_close(by_name + positive, torch.ones(len(TEXTS)), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"'LABEL_1' is not one of the model's labels \['NEGATIVE', 'POSITIVE'\]"):
        ClassifierReward(tiny_classifier_dir, positive_label="LABEL_1", device="cpu")
    with pytest.raises(ValueError, match=r"positive_label=2 is not a class index; the model has 2 classes"):
        ClassifierReward(tiny_classifier_dir, positive_label=2, device="cpu")
    with pytest.raises(ValueError, match="output='score'; expected one of"):
        ClassifierReward(tiny_classifier_dir, output="score", device="cpu")


def test_long_texts_are_truncated_to_max_length(tiny_classifier_dir):
    reward = ClassifierReward(tiny_classifier_dir, output="logit", max_length=8, device="cpu")
    long_text = "The plot is dull. " * 300  # far beyond max_length tokens (and the model's 512 positions)
    scores = reward([long_text, long_text + "But the ending is wonderful!", "Short."])
    assert scores.shape == (3,)
    torch.testing.assert_close(scores[0], scores[1], atol=1e-6, rtol=0)  # only the first 8 tokens are read
    assert ClassifierReward(tiny_classifier_dir, device="cpu")([long_text]).shape == (1,)  # default 512 fits the model


def test_make_reward_builds_either_reward(tiny_classifier_dir):
    assert isinstance(make_reward("vader"), VaderReward)
    reward = make_reward(tiny_classifier_dir, output="logit", device="cpu")
    assert isinstance(reward, ClassifierReward) and reward.output == "logit"
    with pytest.raises(ValueError, match="vader reward takes no options"):
        make_reward("vader", output="logit")
