"""Preference pairs from scored samples: 6 pairs per 4 samples, labelled by reward, ties dropped, JSONL round trip."""

from __future__ import annotations

import json

import pytest
import torch

from dpo_teach.data import DataError, load_examples, tokenize_preference
from dpo_teach.sampling import Samples, SamplingConfig, sample
from dpo_teach.sentiment.pairs import build_pairs, load_pairs, save_pairs


def _samples(prompts: list[str], completions: list[str], ended: list[bool] | None = None) -> Samples:
    """Samples with K = len(completions) // len(prompts), token ids left empty (pairs use strings only); every
    completion ended with EOS unless ``ended`` says otherwise."""
    num_samples_per_prompt = len(completions) // len(prompts)
    flat_prompts = [prompt for prompt in prompts for _ in range(num_samples_per_prompt)]
    empty_ids = [[] for _ in completions]
    ended = [True] * len(completions) if ended is None else ended
    return Samples(flat_prompts, empty_ids, empty_ids, completions, ended, num_samples_per_prompt)


def test_four_samples_give_six_pairs_with_the_higher_reward_chosen():
    completions = [" was great.", " was dull.", " was fine.", " was awful!"] + [" a", " b", " c", " d"]
    samples = _samples(["The movie", "This film"], completions, ended=[True, False, True, True] + [True] * 4)
    rewards = torch.tensor([0.9, 0.2, 0.5, 0.1, 0.3, 0.4, 0.8, 0.6])
    pairs, num_dropped = build_pairs(samples, rewards)

    assert num_dropped == 0 and len(pairs) == 12
    assert [pair["prompt"] for pair in pairs] == ["The movie"] * 6 + ["This film"] * 6
    reward_of = {
        (prompt, completion): reward
        for prompt, completion, reward in zip(samples.prompts, completions, rewards.tolist(), strict=True)
    }
    seen = set()
    for pair in pairs:
        assert pair["chosen_reward"] > pair["rejected_reward"]
        assert pair["chosen_reward"] == reward_of[pair["prompt"], pair["chosen"]]
        assert pair["rejected_reward"] == reward_of[pair["prompt"], pair["rejected"]]
        seen.add((pair["prompt"], frozenset((pair["chosen"], pair["rejected"]))))
    assert len(seen) == 12  # every unordered pair once
    assert pairs[0] == {
        "prompt": "The movie",
        "chosen": " was great.",
        "rejected": " was dull.",
        "chosen_reward": pytest.approx(0.9),
        "rejected_reward": pytest.approx(0.2),
        "chosen_ended": True,
        "rejected_ended": False,  # sample 1 was cut at the length limit: it carries that to tokenization
    }


def test_ties_identical_and_empty_completions_are_dropped_and_counted():
    # Sample 1 ties sample 0 within the tolerance, sample 2 repeats sample 0's text, sample 3 is whitespace only
    samples = _samples(["The movie"], [" was great.", " was good.", " was great.", "  ", " was dull."])
    rewards = torch.tensor([0.90, 0.95, 0.10, 0.50, 0.30], dtype=torch.float64)
    pairs, num_dropped = build_pairs(samples, rewards, tie_tolerance=0.1)

    assert len(pairs) + num_dropped == 10  # K(K-1)/2 with K = 5
    # Dropped: (0,1) tie, (0,2) same text, (0,3) (1,3) (2,3) (3,4) empty; kept: (1,2) (0,4) (1,4) (2,4)
    assert num_dropped == 6
    kept = {(pair["chosen"], pair["rejected"], pair["chosen_reward"]) for pair in pairs}
    assert kept == {
        (" was good.", " was great.", 0.95),
        (" was great.", " was dull.", 0.90),
        (" was good.", " was dull.", 0.95),
        (" was dull.", " was great.", 0.30),
    }
    exact_ties, num_exact = build_pairs(_samples(["x"], [" a", " b"]), torch.tensor([0.5, 0.5]))
    assert exact_ties == [] and num_exact == 1  # tie_tolerance=0: only equal rewards tie


def test_build_pairs_rejects_bad_rewards():
    samples = _samples(["The movie"], [" a", " b"])
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        build_pairs(samples, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        build_pairs(samples, torch.tensor([0.1, float("nan")]))
    with pytest.raises(ValueError, match="tie_tolerance"):
        build_pairs(samples, torch.tensor([0.1, 0.2]), tie_tolerance=-1.0)


def test_jsonl_round_trip_is_accepted_by_load_examples(tmp_path):
    samples = _samples(["The movie", 'Ünïcödé "quoted"\n'], [" was great.", " was dull.", " é!", " ok"])
    pairs, _ = build_pairs(samples, torch.tensor([0.75, 0.25, 1e-8, -3.5]))
    path = tmp_path / "pairs" / "train.jsonl"
    save_pairs(pairs, path)

    assert load_pairs(path) == pairs  # floats survive exactly
    examples, num_skipped = load_examples(path)
    assert num_skipped == 0 and examples == pairs  # extra reward keys pass through
    assert [file.name for file in path.parent.iterdir()] == ["train.jsonl"]  # no temporary file left

    save_pairs(pairs[:1], path)  # overwrites
    assert load_pairs(path) == pairs[:1]


def test_load_pairs_requires_numeric_rewards(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "x", "chosen": " a", "rejected": " b", "chosen_reward": 1.0}) + "\n")
    with pytest.raises(DataError, match="row 0, field 'rejected_reward'"):
        load_pairs(path)


def test_sampled_pairs_feed_the_dpo_data_pipeline(tmp_path, tiny_tokenizer, make_tiny_gpt2):
    """End to end on a tiny GPT-2: sample 4 completions per prompt, score them, pair, save, load, tokenize."""
    prompts = ["The movie", "This film was"]
    samples = sample(make_tiny_gpt2(0), tiny_tokenizer, prompts, SamplingConfig(max_new_tokens=8), 4, False)
    rewards = torch.tensor([float(len(text)) for text in samples.texts])  # a toy reward: longer is better
    pairs, num_dropped = build_pairs(samples, rewards)
    assert len(pairs) + num_dropped == 12
    assert len(pairs) > 0
    save_pairs(pairs, tmp_path / "pairs.jsonl")
    examples, _ = load_examples(tmp_path / "pairs.jsonl")
    for example in examples:
        assert example["prompt"] in prompts
        tokens = tokenize_preference(example, tiny_tokenizer, max_length=64, max_prompt_length=16)
        assert tokens["prompt_input_ids"] == tiny_tokenizer(example["prompt"], add_special_tokens=False)["input_ids"]
