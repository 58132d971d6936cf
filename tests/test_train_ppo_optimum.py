"""The PPO that trains GPT-2 meets the closed-form optimum: with one-token completions, a reward defined on that
token and a fixed KL coefficient beta, ``train_ppo`` must end at pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x)
(DPO paper Eq. 4; notebook 2), the same fixed point ``bandit.ppo_solve`` reaches on a table.

The language is nine words and one-word prompts, so pi_ref is the initial model's whole next-token distribution and
pi* is exact. The check is total variation <= 0.02 on every prompt; two controls show it can fail: pi_ref is far
from pi*, and the trained policy is far from the optimum of another beta.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from dpo_teach.bandit import total_variation
from dpo_teach.train.config import PPOConfig
from dpo_teach.train.models import load_causal_lm
from dpo_teach.train.ppo import train_ppo

WORDS = ["<eos>", "p0", "p1", "p2", "a", "b", "c", "d", "e"]
PROMPTS = ["p0", "p1", "p2"]
TOLERANCE = 0.02  # total variation, as bandit.ppo_solve's test


def word_tokenizer() -> PreTrainedTokenizerFast:
    """One token per word of WORDS; '<eos>' is EOS and padding, as in GPT-2."""
    tokenizer = Tokenizer(models.WordLevel({word: index for index, word in enumerate(WORDS)}, unk_token="<eos>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>")


def next_token_logps(model: torch.nn.Module, tokenizer) -> torch.Tensor:
    """log pi(y | x) of every word y after every prompt x, ``(3, 9)`` float64."""
    ids = torch.tensor([tokenizer.convert_tokens_to_ids([prompt]) for prompt in PROMPTS])  # (3, 1)
    with torch.no_grad():
        return torch.log_softmax(model.eval()(ids).logits[:, -1].double(), dim=-1)


def optimum(log_ref: torch.Tensor, reward_table: torch.Tensor, beta: float) -> torch.Tensor:
    """pi* = pi_ref exp(r / beta) / Z, ``(3, 9)``."""
    return torch.softmax(log_ref + reward_table / beta, dim=-1)


@pytest.mark.parametrize("beta", [0.5, 1.0])
def test_ppo_on_one_token_completions_ends_at_the_closed_form_optimum(tmp_path, beta):
    tokenizer = word_tokenizer()
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(WORDS), n_positions=8, n_embd=32, n_layer=1, n_head=2, bos_token_id=0,
                        eos_token_id=0, pad_token_id=0)  # fmt: skip
    policy = GPT2LMHeadModel(config)
    reward_table = 2 * torch.rand(len(PROMPTS), len(WORDS), generator=torch.Generator().manual_seed(1)).double()

    def reward(texts: list[str]) -> torch.Tensor:
        """r(x, y) of prompt + completion texts such as 'p1c' (the empty completion is EOS)."""
        return torch.tensor([reward_table[PROMPTS.index(text[:2]), WORDS.index(text[2:] or "<eos>")] for text in texts])

    log_ref = next_token_logps(policy, tokenizer)
    target = optimum(log_ref, reward_table, beta)
    ppo = PPOConfig(
        output_dir=str(tmp_path / "ppo"), max_steps=60, batch_size=256, num_minibatches=2, ppo_epochs=2,
        learning_rate=5e-3, lr_schedule="linear", warmup_steps=0, max_new_tokens=1, adaptive_kl=False,
        init_kl_coef=beta, save_every=0, eval_every=0, progress_bar=False,
    )  # fmt: skip  # a fixed beta; the decaying step size lets the sampling noise average out, as in ppo_solve
    final = train_ppo(ppo, policy, tokenizer, PROMPTS * 100, reward)
    pi = next_token_logps(load_causal_lm(str(final)), tokenizer).exp()

    assert (total_variation(pi, target) <= TOLERANCE).all(), total_variation(pi, target)
    # controls, each at least twice the tolerance away: the starting point from pi*, the result from another beta's
    assert (total_variation(log_ref.exp(), target) > 2 * TOLERANCE).all()
    assert (total_variation(pi, optimum(log_ref, reward_table, 2 * beta)) > 2 * TOLERANCE).all()
