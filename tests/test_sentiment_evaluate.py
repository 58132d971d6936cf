"""Sequence KL estimators and the evaluation of a policy (dpo_teach.sentiment.evaluate).

The estimators are checked against exact enumeration: a GPT-2 with a 4-token vocabulary generating at most
3 tokens has 40 possible completions, so p(y), q(y), the sequence KL and each estimator's expectation are
finite sums computed here independently of the library.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from dpo_teach.sampling import SamplingConfig, sample
from dpo_teach.sentiment.evaluate import Evaluation, evaluate, sequence_kl

VOCAB_SIZE, EOS, MAX_NEW_TOKENS = 4, 3, 3  # the enumerable world: tokens 0, 1, 2 and EOS, at most 3 new tokens
PROMPT = [0, 1]


def _tiny_world_model(seed: int) -> GPT2LMHeadModel:
    """A float64 GPT-2 over 4 tokens; initializer_range 0.2 makes next-token distributions far from uniform."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=8,
        n_embd=16,
        n_layer=1,
        n_head=2,
        initializer_range=0.2,
        bos_token_id=EOS,
        eos_token_id=EOS,
    )
    return GPT2LMHeadModel(config).double().eval()


def _all_completions() -> list[list[int]]:
    """Every completion generation can produce: ends at EOS, or is cut after MAX_NEW_TOKENS tokens."""
    completions = []

    def extend(prefix: list[int]) -> None:
        for token in range(VOCAB_SIZE):
            completion = prefix + [token]
            if token == EOS or len(completion) == MAX_NEW_TOKENS:
                completions.append(completion)
            else:
                extend(completion)

    extend([])
    return completions


@torch.no_grad()
def _next_token_logps(model: GPT2LMHeadModel, context: list[int]) -> torch.Tensor:
    """log model(. | context), ``(V,)`` float64: one forward pass of one unpadded sequence."""
    return model(torch.tensor([context])).logits[0, -1].double().log_softmax(dim=-1)


def _naive(policy, reference, prompt, completion) -> tuple[float, float, float]:
    """``(log p(y), log q(y), sum_t KL_t)`` for one completion, one forward pass per prefix."""
    log_p = log_q = token_kl = 0.0
    for t, token in enumerate(completion):
        policy_logps = _next_token_logps(policy, prompt + completion[:t])
        reference_logps = _next_token_logps(reference, prompt + completion[:t])
        log_p += policy_logps[token].item()
        log_q += reference_logps[token].item()
        token_kl += (policy_logps.exp() * (policy_logps - reference_logps)).sum().item()
    return log_p, log_q, token_kl


@pytest.fixture(scope="module")
def tiny_world():
    """Policy, reference, every completion of PROMPT and, per completion, exact log p(y), log q(y), sum_t KL_t."""
    policy, reference = _tiny_world_model(0), _tiny_world_model(1)
    completions = _all_completions()
    log_p, log_q, token_kl = (
        torch.tensor(column, dtype=torch.float64)
        for column in zip(*(_naive(policy, reference, PROMPT, completion) for completion in completions), strict=True)
    )
    return {
        "policy": policy,
        "reference": reference,
        "completions": completions,
        "log_p": log_p,
        "log_q": log_q,
        "token_kl": token_kl,
    }


def _token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(text)["input_ids"] for text in texts]


@pytest.fixture
def ragged_batch(tiny_tokenizer):
    """Prompts and completions of different lengths, one completion empty, so right padding matters."""
    prompts = _token_ids(tiny_tokenizer, ["The movie", "This film was", "Honestly, the ending", "The"])
    completions = _token_ids(tiny_tokenizer, [" was great.", " dull and I hated it.", "", " plot"])
    completions[0].append(tiny_tokenizer.eos_token_id)
    return prompts, completions


def test_kl_of_a_model_against_itself_is_exactly_zero(make_tiny_gpt2, ragged_batch):
    model = make_tiny_gpt2(0)  # dropout 0.1 and train mode: sequence_kl must switch it off
    model.train()
    prompts, completions = ragged_batch
    for reference in (model, copy.deepcopy(model)):
        estimates = sequence_kl(model, reference, prompts, completions, batch_size=3)
        assert torch.equal(estimates.log_ratio, torch.zeros(4, dtype=torch.float64))
        assert torch.equal(estimates.token_kl, torch.zeros(4, dtype=torch.float64))
    assert model.training  # the caller's mode is restored


def test_token_kl_is_positive_and_independent_of_batching(make_tiny_gpt2, ragged_batch):
    policy, reference = make_tiny_gpt2(0), make_tiny_gpt2(1)
    prompts, completions = ragged_batch
    together = sequence_kl(policy, reference, prompts, completions, batch_size=4)
    one_by_one = sequence_kl(policy, reference, prompts, completions, batch_size=1)
    nonempty = torch.tensor([len(completion) > 0 for completion in completions])
    assert (together.token_kl[nonempty] > 0).all()
    assert together.token_kl[~nonempty].item() == 0.0 and together.log_ratio[~nonempty].item() == 0.0
    assert together.token_kl.dtype == torch.float64 and together.token_kl.device.type == "cpu"
    # float32 models: padding the batch changes the matmul shapes, so only round-off differs
    torch.testing.assert_close(together.token_kl, one_by_one.token_kl, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(together.log_ratio, one_by_one.log_ratio, atol=1e-5, rtol=1e-5)


def test_sequence_kl_matches_a_per_prefix_loop(tiny_world):
    """Vectorized (one padded forward per batch) against the naive loop (one forward per prefix), per completion."""
    estimates = sequence_kl(tiny_world["policy"], tiny_world["reference"], [PROMPT] * 40, tiny_world["completions"])
    torch.testing.assert_close(estimates.token_kl, tiny_world["token_kl"], atol=1e-10, rtol=0)
    torch.testing.assert_close(estimates.log_ratio, tiny_world["log_p"] - tiny_world["log_q"], atol=1e-10, rtol=0)


def test_estimators_are_unbiased_by_exact_enumeration(tiny_world):
    """E_{y ~ p}[estimator] == KL(p || q) = sum_y p(y) log p(y) / q(y), every expectation a finite sum."""
    completions = tiny_world["completions"]
    assert len(completions) == 1 + 3 + 36  # EOS at step 1, 2 or 3, or 3 tokens without EOS (cut, as generation does)
    p, q = tiny_world["log_p"].exp(), tiny_world["log_q"].exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)  # (a)
    torch.testing.assert_close(q.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12, rtol=0)
    exact_kl = (p * (p.log() - q.log())).sum()

    estimates = sequence_kl(tiny_world["policy"], tiny_world["reference"], [PROMPT] * 40, completions)
    expected_token_kl = (p * estimates.token_kl).sum()  # (b) chain rule: E_y sum_t KL_t = KL
    expected_log_ratio = (p * estimates.log_ratio).sum()  # (c) k1: E_y log p(y) / q(y) = KL
    torch.testing.assert_close(expected_token_kl, exact_kl, atol=1e-6, rtol=0)
    torch.testing.assert_close(expected_log_ratio, exact_kl, atol=1e-6, rtol=0)
    assert 0.3 < exact_kl.item() < 3  # a KL that is far from 0, so the check is not vacuous

    # Same mean, lower variance for token_kl (exact variances under p); log_ratio can go negative, token_kl cannot
    variance_token_kl = (p * (estimates.token_kl - exact_kl) ** 2).sum()
    variance_log_ratio = (p * (estimates.log_ratio - exact_kl) ** 2).sum()
    assert variance_token_kl < variance_log_ratio
    assert (estimates.log_ratio < 0).any() and (estimates.token_kl >= 0).all()


def test_sampled_means_agree_within_standard_errors(tiny_world):
    """Completions drawn from the exact p(y): both estimators' sample means are within 4 SE of the exact KL."""
    p, q = tiny_world["log_p"].exp(), tiny_world["log_q"].exp()
    exact_kl = (p * (p.log() - q.log())).sum().item()
    draws = torch.multinomial(p, 2000, replacement=True, generator=torch.Generator().manual_seed(0)).tolist()
    completions = [tiny_world["completions"][index] for index in draws]
    estimates = sequence_kl(tiny_world["policy"], tiny_world["reference"], [PROMPT] * len(draws), completions)
    for values in (estimates.log_ratio, estimates.token_kl):
        standard_error = values.std().item() / math.sqrt(len(values))
        assert abs(values.mean().item() - exact_kl) < 4 * standard_error
    assert estimates.token_kl.std() < estimates.log_ratio.std()


def test_sequence_kl_rejects_bad_input(tiny_world):
    policy, reference = tiny_world["policy"], tiny_world["reference"]
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        sequence_kl(policy, reference, [PROMPT, PROMPT], [[EOS]])
    with pytest.raises(ValueError, match="no tokens"):
        sequence_kl(policy, reference, [[]], [[EOS]])


def _tiny_world_tokenizer():
    """Word-level tokenizer of the enumerable world: "a" "b" "c" are tokens 0 1 2, <|endoftext|> is EOS = 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2, "<|endoftext|>": EOS}, unk_token="<|endoftext|>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    special = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=special, eos_token=special, pad_token=special)


def test_sampled_completions_estimate_the_exact_kl(tiny_world):
    """(d) Monte Carlo with the library's sampler: mean token_kl of 500 samples y ~ pi is within 4 SE of exact."""
    config = SamplingConfig(max_new_tokens=MAX_NEW_TOKENS, batch_size=500, seed=0)
    samples = sample(tiny_world["policy"], _tiny_world_tokenizer(), ["a b"], config, 500, progress_bar=False)
    assert samples.prompt_ids == [PROMPT] * 500
    assert all(completion in tiny_world["completions"] for completion in samples.completion_ids)
    p, q = tiny_world["log_p"].exp(), tiny_world["log_q"].exp()
    exact_kl = (p * (p.log() - q.log())).sum().item()
    token_kl = sequence_kl(tiny_world["policy"], tiny_world["reference"], samples.prompt_ids, samples.completion_ids)
    standard_error = token_kl.token_kl.std().item() / math.sqrt(500)
    assert abs(token_kl.token_kl.mean().item() - exact_kl) < 4 * standard_error


def test_evaluate_reports_rewards_kl_and_a_table_of_samples(tiny_tokenizer, make_tiny_gpt2):
    policy, reference = make_tiny_gpt2(0), make_tiny_gpt2(1)
    prompts = ["The movie", "This film", "The acting"]
    config = SamplingConfig(max_new_tokens=6, batch_size=4, seed=0)

    constant = evaluate(
        policy,
        reference,
        tiny_tokenizer,
        prompts,
        lambda texts: torch.full((len(texts),), 0.5),
        config,
        num_samples_per_prompt=2,
        progress_bar=False,
    )
    assert isinstance(constant, Evaluation)
    assert constant.num_samples == len(constant.samples) == 6
    assert constant.mean_reward == 0.5 and constant.reward_sem == 0.0
    assert [row["prompt"] for row in constant.samples] == [prompt for prompt in prompts for _ in range(2)]
    assert set(constant.samples[0]) == {"prompt", "completion", "reward", "kl", "kl_log_ratio"}
    assert constant.kl > 0 and constant.kl_sem > 0 and all(row["kl"] >= 0 for row in constant.samples)
    assert constant.kl == pytest.approx(sum(row["kl"] for row in constant.samples) / 6)
    assert constant.kl_log_ratio == pytest.approx(sum(row["kl_log_ratio"] for row in constant.samples) / 6)

    # Reward = text length: the mean matches the table, and the SEM is over the 3 per-prompt means
    by_length = evaluate(
        policy,
        reference,
        tiny_tokenizer,
        prompts,
        lambda texts: torch.tensor([float(len(text)) for text in texts]),
        config,
        num_samples_per_prompt=2,
        progress_bar=False,
    )
    lengths = torch.tensor([float(len(row["prompt"] + row["completion"])) for row in by_length.samples])
    assert by_length.mean_reward == pytest.approx(lengths.mean().item())
    per_prompt = lengths.reshape(3, 2).mean(dim=1)
    assert by_length.reward_sem == pytest.approx((per_prompt.std() / math.sqrt(3)).item())

    itself = evaluate(
        policy, policy, tiny_tokenizer, prompts[:2], lambda texts: torch.zeros(len(texts)), config, progress_bar=False
    )
    assert itself.kl == 0.0 and itself.kl_log_ratio == 0.0 and itself.kl_sem == 0.0


def test_evaluate_requires_pure_ancestral_sampling(tiny_tokenizer, make_tiny_gpt2):
    model = make_tiny_gpt2(0)
    for changed in ({"temperature": 0.7}, {"top_k": 50}, {"top_p": 0.9}):
        config = SamplingConfig(max_new_tokens=4, **changed)
        with pytest.raises(ValueError, match="pure ancestral sampling"):
            evaluate(model, model, tiny_tokenizer, ["The movie"], lambda texts: torch.zeros(len(texts)), config)
