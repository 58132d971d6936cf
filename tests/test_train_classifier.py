"""The sequence-classifier trainer (the tiny preset's ground-truth reward): it learns, its loss is the hand formula,
bad examples are named, and what it saves is a reward the paper preset's code reads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dpo_teach.errors import DataError
from dpo_teach.sentiment.models import TinyClassifier, tiny_classifier
from dpo_teach.sentiment.rewards import label_agreement, make_reward
from dpo_teach.train.classifier import ClassificationObjective, collate_texts, tokenize_texts, train_classifier
from dpo_teach.train.config import ClassifierConfig

SHAPE = TinyClassifier(dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64)


def texts(count: int) -> list[dict]:
    """Sentences whose label is whether they praise (1) or pan (0) the film."""
    good, bad = ["great", "wonderful", "brilliant", "moving"], ["dull", "awful", "boring", "weak"]
    return [
        {
            "text": f"The film was {(good if index % 2 else bad)[index % 4]} and the plot {index % 3}.",
            "label": index % 2,
        }
        for index in range(count)
    ]


def test_the_loss_is_the_cross_entropy_by_hand(tiny_tokenizer):
    model = tiny_classifier(tiny_tokenizer, SHAPE)
    batch = collate_texts(tokenize_texts(texts(6), tiny_tokenizer, 64, 2), tiny_tokenizer.pad_token_id)
    output = ClassificationObjective()(model.eval(), batch)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    by_hand = -sum(torch.log_softmax(logits[i], -1)[batch["labels"][i]] for i in range(6))
    torch.testing.assert_close(output.loss_sum, by_hand, atol=1e-5, rtol=0)


def test_a_classifier_learns_and_is_read_as_the_paper_presets_reward(tmp_path, tiny_tokenizer):
    config = ClassifierConfig(
        output_dir=str(tmp_path / "classifier"), max_steps=60, batch_size=16, learning_rate=3e-3, warmup_steps=5,
        eval_every=30, eval_batch_size=32, save_every=30, max_length=32, progress_bar=False,
    )  # fmt: skip
    final = train_classifier(config, tiny_classifier(tiny_tokenizer, SHAPE), tiny_tokenizer, texts(160), texts(40))
    records = [json.loads(line) for line in (tmp_path / "classifier" / "metrics.jsonl").read_text().splitlines()]
    held_out = [record for record in records if "eval/accuracy" in record]
    assert held_out[0]["step"] == 0 and held_out[0]["eval/loss"] == pytest.approx(math.log(2), abs=0.05)
    assert held_out[-1]["eval/accuracy"] == 1.0 and held_out[-1]["eval/loss"] < 0.5 * math.log(2)
    reward = make_reward(str(final), positive_label="POSITIVE", output="prob", device="cpu")  # as siebert is read
    examples = texts(40)
    scores = reward([example["text"] for example in examples])
    assert scores.shape == (40,) and ((0 <= scores) & (scores <= 1)).all()
    assert label_agreement(scores, torch.tensor([example["label"] for example in examples])) == 1.0


def test_label_agreement_counts_an_undecided_score_as_half():
    scores, labels = torch.tensor([0.9, 0.2, 0.5, 0.7]), torch.tensor([1, 0, 1, 0])
    assert label_agreement(scores, labels) == pytest.approx((1 + 1 + 0.5 + 0) / 4)


@pytest.mark.parametrize(
    ("example", "field"),
    [
        ({"text": "", "label": 1}, "text"),
        ({"text": "Fine.", "label": 2}, "label"),
        ({"text": "Ok.", "label": True}, "label"),
    ],
)
def test_a_bad_example_is_named(tiny_tokenizer, example, field):
    with pytest.raises(DataError, match=f"row 1, field '{field}'"):
        tokenize_texts([{"text": "Good.", "label": 1}, example], tiny_tokenizer, 32, 2, progress_bar=False)
