"""The training run every trainer shares (``dpo_teach.train.run``): who ends the accelerator, the caller's random
streams, the callbacks and their steps, the learning-rate schedule."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from test_train_dpo import dpo_config
from test_train_ppo import PROMPTS, count_e, ppo_config

from dpo_teach.train.checkpoint import complete_checkpoints
from dpo_teach.train.config import DPOConfig
from dpo_teach.train.dpo import train_dpo
from dpo_teach.train.ppo import train_ppo
from dpo_teach.train.run import learning_rate_schedule, make_accelerator


def test_a_trainer_ends_only_the_accelerator_it_created(
    tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs, monkeypatch
):
    ended = []
    monkeypatch.setattr("accelerate.Accelerator.end_training", lambda self: ended.append(self))
    accelerator = make_accelerator()
    train_dpo(dpo_config(tmp_path / "given", max_steps=1), make_tiny_gpt2(), tiny_tokenizer, tiny_pairs,
              accelerator=accelerator)  # fmt: skip
    assert ended == []  # the caller's: it may train again with it
    train_dpo(dpo_config(tmp_path / "given-again", max_steps=1), make_tiny_gpt2(), tiny_tokenizer, tiny_pairs,
              accelerator=accelerator)  # fmt: skip
    assert ended == []
    train_dpo(dpo_config(tmp_path / "own", max_steps=1), make_tiny_gpt2(), tiny_tokenizer, tiny_pairs)
    assert len(ended) == 1 and ended[0] is not accelerator


def test_training_leaves_the_callers_random_streams_where_they_were(tmp_path, tiny_tokenizer, make_tiny_gpt2,
                                                                     tiny_pairs):  # fmt: skip
    """Every trainer seeds its own streams (dropout, a new head, sampling): none of it shows in the caller's."""

    def draws() -> tuple:
        return torch.rand(3).tolist(), random.random(), np.random.rand()

    def seed_everything() -> None:
        torch.manual_seed(123)
        random.seed(123)
        np.random.seed(123)

    seed_everything()
    expected = draws()
    policy, ppo_policy = make_tiny_gpt2(), make_tiny_gpt2()  # the fixture seeds the global stream itself
    seed_everything()
    train_dpo(dpo_config(tmp_path / "dpo", max_steps=2, disable_dropout=False), policy, tiny_tokenizer, tiny_pairs)
    train_ppo(ppo_config(tmp_path / "ppo", max_steps=1), ppo_policy, tiny_tokenizer, PROMPTS * 4, count_e)
    assert draws() == expected


def test_callbacks_see_every_step_once_and_before_its_checkpoint(tmp_path, tiny_tokenizer, make_tiny_gpt2,
                                                                tiny_pairs):  # fmt: skip
    """A callback runs at step 0 of a fresh run and after every step, before the checkpoint of that step; a run
    resumed from step 2 calls it for steps 3 and 4 only. What it returns is logged with an ``eval/`` prefix."""
    seen = []

    def callback(step: int, model: torch.nn.Module) -> dict[str, float] | None:
        seen.append((step, [path.name for path in complete_checkpoints(tmp_path / "run")]))
        return {"probe": float(step)} if step % 2 == 0 else None

    config = dpo_config(tmp_path / "run", max_steps=2, save_every=1, eval_every=0)
    train_dpo(config, make_tiny_gpt2(), tiny_tokenizer, tiny_pairs, callbacks=[callback])
    assert seen == [(0, []), (1, []), (2, ["step-00000001"])]
    seen.clear()
    train_dpo(dpo_config(tmp_path / "run", max_steps=4, save_every=1, eval_every=0), make_tiny_gpt2(), tiny_tokenizer,
              tiny_pairs, callbacks=[callback])  # fmt: skip
    assert [step for step, _ in seen] == [3, 4]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(record["step"], record["eval/probe"]) for record in records if "eval/probe" in record] == [
        (0, 0.0),
        (2, 2.0),
        (4, 4.0),
    ]


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_the_learning_rate_warms_up_then_holds_or_decays_to_zero(schedule):
    config = DPOConfig(max_steps=10, warmup_steps=3, learning_rate=1.0, lr_schedule=schedule)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.learning_rate)
    scheduler = learning_rate_schedule(optimizer, config)
    rates = []
    for _ in range(config.max_steps):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    warmup = [min(1.0, (step + 1) / 4) for step in range(10)]
    decay = [1.0 - step / 10 for step in range(10)] if schedule == "linear" else [1.0] * 10
    assert rates == pytest.approx([w * d for w, d in zip(warmup, decay, strict=True)], abs=1e-12)


def test_a_linear_schedule_refuses_another_max_steps_on_resume(tmp_path, tiny_tokenizer, make_tiny_gpt2, tiny_pairs):
    """With a decay that ends at max_steps, a longer run continued from a shorter one would not be the longer run."""
    train_dpo(dpo_config(tmp_path / "run", max_steps=2, lr_schedule="linear"), make_tiny_gpt2(), tiny_tokenizer,
              tiny_pairs)  # fmt: skip
    with pytest.raises(ValueError, match=r"max_steps: 2 -> 4"):
        train_dpo(dpo_config(tmp_path / "run", max_steps=4, lr_schedule="linear"), make_tiny_gpt2(), tiny_tokenizer,
                  tiny_pairs)  # fmt: skip
