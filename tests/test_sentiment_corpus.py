"""The synthetic review corpus (tiny preset) and the IMDb loader, which share one interface."""

from __future__ import annotations

import re
import statistics

import pytest

from dpo_teach.sentiment.corpus import Review, imdb_corpus, synthetic_corpus, synthetic_reviews
from dpo_teach.sentiment.rewards import VaderReward

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


@pytest.fixture(scope="module")
def corpus() -> dict[str, list[Review]]:
    return synthetic_corpus()  # default sizes: 20,000 train + 5,000 test, about a second


@pytest.fixture(scope="module")
def reviews() -> list[Review]:
    return synthetic_reviews(2000, seed=123)


def _ranks(values: list[float]) -> list[float]:
    """1-based ranks, ties get the mean of the ranks they span."""
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rho: Pearson's correlation of the ranks (scipy is not a dependency)."""
    return statistics.correlation(_ranks(x), _ranks(y))


def test_spearman_helper_against_hand_computed_values():
    assert _ranks([10, 20, 20, 30]) == [1.0, 2.5, 2.5, 4.0]
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # any increasing map
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # 1 - 6 sum d^2 / (n (n^2 - 1)) without ties: d = (0, -1, 1, 0) -> 1 - 12/60
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_same_seed_same_reviews_and_different_seed_different_reviews():
    assert synthetic_reviews(300, seed=7) == synthetic_reviews(300, seed=7)
    assert [r.text for r in synthetic_reviews(300, seed=7)] != [r.text for r in synthetic_reviews(300, seed=8)]
    assert synthetic_corpus(200, 50, seed=3) == synthetic_corpus(200, 50, seed=3)


def test_reviews_have_a_rating_a_matching_label_and_both_labels_occur(reviews):
    assert all(isinstance(r, Review) and 1 <= r.rating <= 10 for r in reviews)
    assert all(r.label == int(r.rating >= 6) for r in reviews)
    assert {r.rating for r in reviews} == set(range(1, 11))
    assert 0.35 < statistics.mean(r.label for r in reviews) < 0.65


def test_train_and_test_are_disjoint_and_sized(corpus):
    assert len(corpus["train"]) == 20_000 and len(corpus["test"]) == 5_000
    assert not {r.text for r in corpus["train"]} & {r.text for r in corpus["test"]}


def test_reviews_have_two_to_eight_sentences(reviews):
    counts = [len(SENTENCE_END.split(r.text)) for r in reviews]
    assert min(counts) == 2 and max(counts) == 8
    assert all(r.text[0].isupper() and r.text[-1] in ".!" for r in reviews)


def test_default_train_split_has_at_least_1500_distinct_words(corpus):
    words = {word for r in corpus["train"] for word in re.findall(r"[^\W\d_]+", r.text.lower())}
    assert len(words) >= 1500


def test_vader_ground_truth_rank_correlates_with_latent_rating(reviews):
    scores = VaderReward()([r.text for r in reviews]).tolist()
    rho = spearman(scores, [r.rating for r in reviews])
    assert rho >= 0.7, f"Spearman(VADER, rating) = {rho:.3f}"


def test_negation_and_contrast_occur_in_both_labels(reviews):
    for label in (0, 1):
        texts = [r.text for r in reviews if r.label == label]
        negated = statistics.mean(bool(re.search(r"\b(not|never|nothing)\b", t)) for t in texts)
        contrasted = statistics.mean(bool(re.search(r"\b(but|Although)\b", t)) for t in texts)
        assert negated > 0.15 and contrasted > 0.15, (label, negated, contrasted)
    text = " ".join(r.text for r in reviews)
    for phrase in ("not bad", "never boring", "not great", "Although"):
        assert phrase in text


def test_synopsis_and_viewing_context_sentences_occur(reviews):
    text = " ".join(r.text for r in reviews)
    for phrase in ("The story follows", "I saw it with", "Things get complicated when"):
        assert phrase in text


@pytest.fixture
def tiny_imdb(tmp_path):
    import datasets

    rows = {
        "train": {"text": ["A fine film.<br /><br />Loved it.", "Dull.<br/>Awful."], "label": [1, 0]},
        "test": {"text": ["Great fun.", "Not good."], "label": [1, 0]},
    }
    path = tmp_path / "imdb"
    datasets.DatasetDict({split: datasets.Dataset.from_dict(columns) for split, columns in rows.items()}).save_to_disk(
        str(path)
    )
    return path


def test_synopsis_and_context_sentences_hold_no_word_of_vaders_lexicon():
    """The neutral world carries no opinion, for any reader: every rendered synopsis and viewing-context sentence
    (all their templates and word lists, 4,000 draws) has no word in VADER's lexicon, so VADER scores it 0.
    Before this held, "X plays Y" (VADER: "plays" +1.0) made plots read as praise."""
    import random

    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from dpo_teach.sentiment import corpus

    analyzer = SentimentIntensityAnalyzer()
    rng = random.Random(0)
    sentences = []
    for _ in range(2000):
        writer = corpus._Writer(rng, rating=rng.randint(1, 10))
        sentences += [*writer.synopsis(2), writer.context()]
    scored = {word for sentence in sentences for word in re.findall(r"[a-z'-]+", sentence.lower())} & set(
        analyzer.lexicon
    )
    assert scored == set(), sorted(scored)
    assert all(analyzer.polarity_scores(sentence)["compound"] == 0 for sentence in sentences)
    assert any(" stars as " in sentence for sentence in sentences)


def test_imdb_corpus_reads_a_saved_dataset_dict(tiny_imdb):
    corpus = imdb_corpus(str(tiny_imdb))
    assert corpus["train"] == [Review("A fine film. Loved it.", None, 1), Review("Dull. Awful.", None, 0)]
    assert corpus["test"] == [Review("Great fun.", None, 1), Review("Not good.", None, 0)]


def test_imdb_corpus_names_what_is_missing_or_wrong(tmp_path):
    import datasets

    no_label = tmp_path / "no_label"
    datasets.DatasetDict({s: datasets.Dataset.from_dict({"text": ["x"]}) for s in ("train", "test")}).save_to_disk(
        str(no_label)
    )
    with pytest.raises(ValueError, match="columns 'text' and 'label'"):
        imdb_corpus(str(no_label))
    unlabelled = tmp_path / "unlabelled"
    splits = {"train": {"text": ["x", "y"], "label": [1, -1]}, "test": {"text": ["z"], "label": [0]}}
    datasets.DatasetDict({s: datasets.Dataset.from_dict(c) for s, c in splits.items()}).save_to_disk(str(unlabelled))
    with pytest.raises(ValueError, match=r"split 'train', row 1, field 'label': -1; expected 0"):
        imdb_corpus(str(unlabelled))
