"""The Bradley-Terry reward model trainer on a tiny GPT-2: the loss, where the score is read, learning, the kept
best checkpoint, resume, and the trained model as a reward function."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from transformers import GPT2ForSequenceClassification

from dpo_teach.data import tokenize_preference
from dpo_teach.losses import bradley_terry_loss, dpo_loss
from dpo_teach.sentiment.rewards import make_reward
from dpo_teach.train import pairs as pairs_module
from dpo_teach.train.config import RewardModelConfig
from dpo_teach.train.loop import micro_batch_indices
from dpo_teach.train.reward_model import (
    collate_scored_pairs,
    load_reward_model,
    reward_scores,
    train_reward_model,
)

FLOAT32 = {"atol": 1e-5, "rtol": 1e-5}  # GPT-2 forwards of differently padded batches: other matmul shapes


@pytest.fixture
def policy_dir(tmp_path, tiny_tokenizer, make_tiny_gpt2) -> str:
    """The tiny GPT-2 and its tokenizer saved like an SFT policy: what a reward model starts from."""
    path = tmp_path / "policy"
    make_tiny_gpt2().save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return str(path)


def rm_config(output_dir, policy_dir, **overrides) -> RewardModelConfig:
    values = dict(
        output_dir=str(output_dir), model=policy_dir, max_steps=4, batch_size=8, learning_rate=1e-3, warmup_steps=1,
        eval_every=2, save_every=2, eval_batch_size=8, max_length=32, max_prompt_length=16, progress_bar=False,
    )  # fmt: skip
    values.update(overrides)
    return RewardModelConfig(**values)


def read_metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(directory) -> dict[str, torch.Tensor]:
    return GPT2ForSequenceClassification.from_pretrained(directory).state_dict()


def same_weights(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[name], second[name]) for name in first)


def initial_reward_model(policy_dir, tiny_tokenizer, seed: int = 0) -> GPT2ForSequenceClassification:
    """The model the trainer starts from: the same seed initializes the same score head."""
    set_seed(seed)
    model = load_reward_model(policy_dir)
    model.config.pad_token_id = tiny_tokenizer.pad_token_id
    return model.eval()


def marker_pairs(count: int, seed: int) -> list[dict]:
    """Pairs whose completions come from one distribution, except that the chosen one says "truly"."""
    rng = random.Random(seed)
    prompts = ["The movie", "This film", "The plot", "The acting", "Honestly, the ending"]
    adjectives = ["great", "boring", "wonderful", "dull", "moving", "awful", "funny", "slow", "brilliant", "weak"]
    endings = [".", "!", " and I loved it.", " and I hated it."]

    def completion(marker: str) -> str:
        return f" was{marker} {rng.choice(adjectives)}{rng.choice(endings)}"

    return [{"prompt": rng.choice(prompts), "chosen": completion(" truly"), "rejected": completion("")}
            for _ in range(count)]  # fmt: skip


def test_bradley_terry_loss_is_the_hand_formula_with_its_gradient() -> None:
    """-log sigma(r_w - r_l), with d/dr_w = -sigma(r_l - r_w); it is DPO's loss with beta = 1 and a zero reference."""
    generator = torch.Generator().manual_seed(0)
    chosen = (4 * torch.randn(6, generator=generator, dtype=torch.float64)).requires_grad_(True)
    rejected = 4 * torch.randn(6, generator=generator, dtype=torch.float64)
    losses = bradley_terry_loss(chosen, rejected)
    pairs = list(zip(chosen.tolist(), rejected.tolist(), strict=True))
    by_hand = [math.log(1 + math.exp(-(r_w - r_l))) for r_w, r_l in pairs]
    torch.testing.assert_close(losses, torch.tensor(by_hand, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    losses.sum().backward()
    expected = [-1 / (1 + math.exp(r_w - r_l)) for r_w, r_l in pairs]
    torch.testing.assert_close(chosen.grad, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=1e-12)
    zeros = torch.zeros(6, dtype=torch.float64)
    as_dpo = dpo_loss(chosen.detach(), rejected, zeros, zeros, beta=1.0).losses
    torch.testing.assert_close(losses.detach(), as_dpo, atol=1e-12, rtol=1e-12)


def test_a_padded_row_scores_as_the_row_alone_at_its_last_real_token(policy_dir, tiny_tokenizer, tiny_pairs) -> None:
    """GPT-2 pads with EOS. In a batch of rows of different lengths each row's score equals its score alone, which
    equals the score head applied to the hidden state of its last real token (the last text token, EOS removed)."""
    model = initial_reward_model(policy_dir, tiny_tokenizer)
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    assert pad == eos
    examples = [tokenize_preference(pair, tiny_tokenizer, 32, 16) for pair in tiny_pairs[:8]]
    batch = collate_scored_pairs(examples, pad, eos)  # (16, T)
    lengths = batch["attention_mask"].sum(dim=-1)
    assert len(set(lengths.tolist())) > 1 and (batch["input_ids"][lengths < lengths.max()] == pad).any()
    with torch.no_grad():
        batched = reward_scores(model, batch, pad)  # (16,)
        for row, example in enumerate(examples + examples):
            alone = collate_scored_pairs([example], pad, eos)
            score_alone = reward_scores(model, alone, pad)[0 if row < 8 else 1]
            torch.testing.assert_close(batched[row], score_alone, **FLOAT32)
            ids = batch["input_ids"][row : row + 1, : lengths[row]]  # the row without its padding
            hidden = model.transformer(ids).last_hidden_state  # (1, length, n_embd)
            torch.testing.assert_close(batched[row], model.score(hidden)[0, -1, 0], **FLOAT32)
            completion = example["chosen_input_ids" if row < 8 else "rejected_input_ids"]
            assert ids[0].tolist() == example["prompt_input_ids"] + completion[:-1]  # EOS removed, nothing else


def test_a_row_ending_in_the_pad_token_is_refused(policy_dir, tiny_tokenizer) -> None:
    model = initial_reward_model(policy_dir, tiny_tokenizer)
    ids = tiny_tokenizer("The movie was great")["input_ids"] + [tiny_tokenizer.eos_token_id]
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
    with pytest.raises(ValueError, match=r"rows \[0\] end with the pad token"):
        reward_scores(model, batch, tiny_tokenizer.pad_token_id)


def test_the_first_loss_is_the_bradley_terry_loss_by_hand(tmp_path, policy_dir, tiny_tokenizer, tiny_pairs) -> None:
    """Recomputed from the initial model, one pair and one text at a time, on the 8 pairs of step 1."""
    config = rm_config(tmp_path / "rm", policy_dir, max_steps=1, eval_every=0, keep_best=False)
    train_reward_model(config, train_examples=tiny_pairs)
    model = initial_reward_model(policy_dir, tiny_tokenizer)
    losses, accuracies = [], []
    with torch.no_grad():
        for index in micro_batch_indices(len(tiny_pairs), config, step=0, num_processes=1, process_index=0)[0]:
            pair = tiny_pairs[index]
            chosen_ids = tiny_tokenizer(pair["prompt"] + pair["chosen"])["input_ids"]
            rejected_ids = tiny_tokenizer(pair["prompt"] + pair["rejected"])["input_ids"]
            chosen = model(torch.tensor([chosen_ids])).logits.item()
            rejected = model(torch.tensor([rejected_ids])).logits.item()
            losses.append(-math.log(1 / (1 + math.exp(-(chosen - rejected)))))
            accuracies.append(float(chosen > rejected))
    first = read_metrics(tmp_path / "rm")[0]
    assert first["loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert first["accuracy"] == sum(accuracies) / len(accuracies)


def test_the_reward_model_learns_a_marker_word(tmp_path, policy_dir) -> None:
    """Chosen completions alone say "truly": held-out accuracy rises to >= 0.9 (1.0 seen), and final/ holds the
    weights of the evaluation with the highest held-out accuracy, as final/best.json and metrics.jsonl say."""
    output_dir = tmp_path / "marker"
    config = rm_config(output_dir, policy_dir, max_steps=30, eval_every=10, save_every=10, batch_size=16)
    final = train_reward_model(config, train_examples=marker_pairs(64, seed=0), eval_examples=marker_pairs(32, seed=1))
    evaluations = [record for record in read_metrics(output_dir) if "eval/accuracy" in record]
    assert [record["step"] for record in evaluations] == [0, 10, 20, 30]
    assert evaluations[0]["eval/accuracy"] <= 0.75  # a random score head has not learned the marker (0.16 seen)
    best = max(evaluations, key=lambda record: record["eval/accuracy"])  # the first of equal maxima
    assert best["eval/accuracy"] >= 0.9
    selection = json.loads((final / "best.json").read_text())
    assert selection["step"] == best["step"] and selection["eval/accuracy"] == best["eval/accuracy"]
    assert same_weights(weights(final), weights(output_dir / "best"))


@pytest.fixture
def fake_accuracies(monkeypatch):
    """Held-out accuracies 0.5, 0.75, 0.75, 0.6 at steps 0, 2, 4, 6 (the real evaluation runs; its accuracy is
    replaced), so the best is step 2: step 4 ties it and the earliest is kept."""
    accuracies = iter([0.5, 0.75, 0.75, 0.6])
    original = pairs_module.evaluate_pairs

    def evaluate_pairs(*args, **kwargs):
        return {**original(*args, **kwargs), "accuracy": next(accuracies)}

    monkeypatch.setattr(pairs_module, "evaluate_pairs", evaluate_pairs)


@pytest.mark.usefixtures("fake_accuracies")
def test_the_checkpoint_with_the_best_held_out_accuracy_is_kept(tmp_path, policy_dir, tiny_pairs) -> None:
    output_dir = tmp_path / "best"
    config = rm_config(output_dir, policy_dir, max_steps=6, keep_checkpoints=3)
    final = train_reward_model(config, train_examples=tiny_pairs[8:], eval_examples=tiny_pairs[:8])
    checkpoints = output_dir / "checkpoints"
    assert same_weights(weights(final), weights(checkpoints / "step-00000002" / "policy"))
    assert not same_weights(weights(final), weights(checkpoints / "step-00000006" / "policy"))
    assert json.loads((final / "best.json").read_text())["step"] == 2
    assert [record["eval/accuracy"] for record in read_metrics(output_dir) if "eval/accuracy" in record] == [
        0.5, 0.75, 0.75, 0.6,
    ]  # fmt: skip


def test_without_keep_best_the_last_weights_are_final(tmp_path, policy_dir, tiny_pairs) -> None:
    output_dir = tmp_path / "last"
    config = rm_config(output_dir, policy_dir, keep_best=False)
    final = train_reward_model(config, train_examples=tiny_pairs[8:], eval_examples=tiny_pairs[:8])
    assert same_weights(weights(final), weights(output_dir / "checkpoints" / "step-00000004" / "policy"))
    assert not (final / "best.json").exists() and not (output_dir / "best").exists()


def test_a_stopped_and_resumed_run_ends_as_an_uninterrupted_one(tmp_path, policy_dir, tiny_pairs) -> None:
    """Stopped at step 4 (max_steps=4, a checkpoint and an evaluation step), then resumed to step 6: the same
    last weights, the same kept best (chosen across both parts of the run) and the same held-out metrics."""
    train, held_out = tiny_pairs[8:], tiny_pairs[:8]
    train_reward_model(rm_config(tmp_path / "whole", policy_dir, max_steps=6), train_examples=train,
                       eval_examples=held_out)  # fmt: skip
    train_reward_model(rm_config(tmp_path / "parts", policy_dir, max_steps=4), train_examples=train,
                       eval_examples=held_out)  # fmt: skip
    train_reward_model(rm_config(tmp_path / "parts", policy_dir, max_steps=6), train_examples=train,
                       eval_examples=held_out)  # fmt: skip
    for name in ("checkpoints/step-00000006/policy", "final"):
        assert same_weights(weights(tmp_path / "whole" / name), weights(tmp_path / "parts" / name)), name
    assert (tmp_path / "whole" / "final" / "best.json").read_text() == (
        tmp_path / "parts" / "final" / "best.json"
    ).read_text()

    def evaluations(name: str) -> list[dict]:
        return [record for record in read_metrics(tmp_path / name) if "eval/loss" in record]

    assert evaluations("whole") == evaluations("parts")


def test_the_trained_model_is_a_reward_function(tmp_path, policy_dir, tiny_tokenizer, tiny_pairs) -> None:
    """``make_reward(final, positive_label=0, output="logit")`` scores texts as the trainer scored the pairs,
    whatever the batch (its tokenizer pads with EOS on the right)."""
    config = rm_config(tmp_path / "rm", policy_dir, max_steps=2, keep_best=False, eval_every=0)
    final = train_reward_model(config, train_examples=tiny_pairs)
    reward = make_reward(str(final), positive_label=0, output="logit", batch_size=5, device="cpu")
    texts = [pair["prompt"] + pair["chosen"] for pair in tiny_pairs[:10]]
    scores = reward(texts)
    assert scores.shape == (10,) and scores.dtype == torch.float32
    model = GPT2ForSequenceClassification.from_pretrained(final).eval()
    examples = [tokenize_preference(pair, tiny_tokenizer, 32, 16) for pair in tiny_pairs[:10]]
    batch = collate_scored_pairs(examples, tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id)
    for example, text in zip(examples, texts, strict=True):  # the same tokens, split at the prompt or not
        assert tiny_tokenizer(text)["input_ids"] == example["prompt_input_ids"] + example["chosen_input_ids"][:-1]
    with torch.no_grad():
        trainer_scores = reward_scores(model, batch, tiny_tokenizer.pad_token_id)[:10]
    torch.testing.assert_close(scores, trainer_scores, **FLOAT32)
    torch.testing.assert_close(scores, torch.cat([reward([text]) for text in texts]), **FLOAT32)


def test_every_logged_metric_is_documented(tmp_path, policy_dir, tiny_pairs) -> None:
    documented = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    section = documented.split("## Reward model")[1].split("\n## ")[0]
    output_dir = tmp_path / "documented"
    train_reward_model(rm_config(output_dir, policy_dir, max_steps=2), train_examples=tiny_pairs[8:],
                       eval_examples=tiny_pairs[:8])  # fmt: skip
    names = {name for record in read_metrics(output_dir) for name in record} - {"step"}
    for name in names:
        assert f"`{name.removeprefix('eval/')}`" in documented, name
    for name in ("loss", "accuracy", "rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert f"`{name}`" in section, name


def test_bad_settings_are_named(tmp_path, policy_dir, tiny_pairs, make_tiny_gpt2, tiny_tokenizer) -> None:
    with pytest.raises(ValueError, match="keep_best: needs evaluations to choose from"):
        rm_config(tmp_path, policy_dir, eval_every=0)
    with pytest.raises(ValueError, match="keep_best: there are no held-out pairs"):
        train_reward_model(rm_config(tmp_path / "no-eval", policy_dir), train_examples=tiny_pairs)
    with pytest.raises(ValueError, match=r"model: a reward model is a sequence classifier with one output"):
        train_reward_model(rm_config(tmp_path / "lm", policy_dir, keep_best=False), make_tiny_gpt2(), tiny_tokenizer,
                           tiny_pairs)  # fmt: skip
