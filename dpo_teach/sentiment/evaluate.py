"""Evaluation of a policy on the sentiment task: mean ground-truth reward and sequence-level KL to pi_ref.

Each point of the reward-KL frontier (Rafailov et al. 2023, Fig. 2 left) is a policy pi evaluated on
held-out prompts x by sampling completions y ~ pi(. | x) and reporting

    mean reward  E_x E_{y ~ pi} r(x, y)
    sequence KL  KL(pi(. | x) || pi_ref(. | x)) = E_{y ~ pi} log pi(y | x) / pi_ref(y | x)

where the sequence KL is, as in the paper's footnote 3, the sum over time steps of the per-token KL.
Two unbiased estimators of it are computed from the same samples (``sequence_kl``):

    log_ratio  sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)          (k1, sampled)
    token_kl   sum_t KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t))                  (exact over V)

The frontier uses ``token_kl``: same expectation, lower variance, and never negative (a single
``log_ratio`` sample can be). Both assume y ~ pi, so ``evaluate`` samples by pure ancestral sampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import torch

from dpo_teach.data import IGNORE_INDEX, collate_sft, to_device
from dpo_teach.logprobs import completion_logits, token_kl
from dpo_teach.sampling import SamplingConfig, sample

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class KLEstimates(NamedTuple):
    """Two per-sample estimates ``(N,)`` (float64, CPU) of the sequence KL(pi || pi_ref), one per completion."""

    log_ratio: torch.Tensor
    token_kl: torch.Tensor


@dataclass
class Evaluation:
    """Mean reward and sequence KL of a policy on held-out prompts, with standard errors and a table of samples."""

    mean_reward: float
    """Mean ground-truth reward over all samples."""
    reward_sem: float
    """Standard error of ``mean_reward`` (over per-prompt means; NaN with a single prompt)."""
    kl: float
    """Mean sequence KL(pi || pi_ref), ``token_kl`` estimator: the frontier's x-axis."""
    kl_sem: float
    """Standard error of ``kl``."""
    kl_log_ratio: float
    """Mean sequence KL, ``log_ratio`` (k1) estimator: same expectation as ``kl``, noisier."""
    kl_log_ratio_sem: float
    """Standard error of ``kl_log_ratio``."""
    num_samples: int
    """Number of completions scored (prompts x samples per prompt)."""
    samples: list[dict]
    """One row per completion: ``prompt``, ``completion``, ``reward``, ``kl`` (token_kl), ``kl_log_ratio``."""


@torch.no_grad()
def _batch_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log_ratio, token_kl)``, each ``(B,)`` float64 on the CPU, for one batch of B completions."""
    batch = collate_sft(
        [{"input_ids": [*prompt, *completion], "labels": [IGNORE_INDEX] * len(prompt) + list(completion)}
         for prompt, completion in zip(prompt_ids, completion_ids, strict=True)],
        pad_token_id=0,
    )  # fmt: skip  # right-padded (B, T); padding comes after every real token, so its id is never seen
    device = next(policy.parameters()).device
    reference_device = next(reference.parameters()).device
    policy_logits, labels = completion_logits(policy, to_device(batch, device))  # (B, K, V), (B, K)
    reference_logits, _ = completion_logits(reference, to_device(batch, reference_device))  # (B, K, V)
    per_token = token_kl(policy_logits, reference_logits, labels)  # (M,) each
    # Sum over the time steps of each sequence; a row without completion tokens sums to 0
    num_rows, dtype = len(prompt_ids), per_token.kl.dtype
    log_ratio = torch.zeros(num_rows, dtype=dtype, device=device).index_add(0, per_token.rows, per_token.log_ratio)
    kl = torch.zeros(num_rows, dtype=dtype, device=device).index_add(0, per_token.rows, per_token.kl)
    return log_ratio.double().cpu(), kl.double().cpu()


def sequence_kl(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    completion_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> KLEstimates:
    """Per-sample estimates ``(N,)`` of the sequence KL(pi(. | x) || pi_ref(. | x)) from completions y ~ pi(. | x).

    ``prompt_ids`` and ``completion_ids`` are N token-id lists (``Samples.prompt_ids`` / ``.completion_ids``);
    every prompt needs at least one token, the context the first completion token is predicted from.

    - ``log_ratio = sum_t log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) = log pi(y | x) / pi_ref(y | x)``:
      the k1 estimator (http://joschu.net/blog/kl-approx.html); its mean over y ~ pi is the KL, but a
      single sample can be negative.
    - ``token_kl = sum_t KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t))``, exact over the vocabulary at each step.
      By the chain rule of KL (Cover & Thomas, Elements of Information Theory, Thm. 2.5.3),
      KL(pi || pi_ref) = E_{y ~ pi} sum_t KL_t, so its mean is the same KL (the paper's footnote 3), and it
      has lower variance: it averages the log-ratio over every token at each step instead of the one sampled.

    Both models run in eval mode under no_grad (their train/eval mode is restored afterwards); the per-token
    terms come from ``dpo_teach.logprobs.token_kl`` (float32, float64 for float64 models, chunked).
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"got {len(prompt_ids)} prompts but {len(completion_ids)} completions; pass one prompt each")
    empty = [index for index, prompt in enumerate(prompt_ids) if len(prompt) == 0]
    if empty:
        raise ValueError(f"prompts {empty[:10]} have no tokens; each needs at least one (e.g. BOS) to predict from")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    was_training = policy.training, reference.training
    policy.eval()
    reference.eval()
    try:
        batches = [
            _batch_kl(
                policy, reference, prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]
            )
            for start in range(0, len(prompt_ids), batch_size)
        ]
    finally:
        policy.train(was_training[0])
        reference.train(was_training[1])
    if not batches:
        return KLEstimates(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))
    log_ratio, token_kl = (torch.cat(parts) for parts in zip(*batches, strict=True))
    return KLEstimates(log_ratio, token_kl)


def _mean_and_sem(values: torch.Tensor, num_samples_per_prompt: int) -> tuple[float, float]:
    """Mean of ``values`` ``(P * K,)`` (prompt-major) and its standard error over the P per-prompt means.

    The K samples of one prompt share x and so are correlated; treating them as independent would understate
    the error. The per-prompt means are independent (prompts are), so SEM = std(per-prompt means, ddof=1) / sqrt(P).
    """
    per_prompt = values.reshape(-1, num_samples_per_prompt).mean(dim=1)  # (P,)
    if per_prompt.numel() < 2:
        return values.mean().item(), math.nan
    return values.mean().item(), (per_prompt.std(correction=1) / math.sqrt(per_prompt.numel())).item()


def evaluate(
    policy: torch.nn.Module,
    reference: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    reward: Callable[[list[str]], torch.Tensor],
    config: SamplingConfig,
    num_samples_per_prompt: int = 1,
    progress_bar: bool = True,
) -> Evaluation:
    """Sample completions of each prompt from ``policy``; score their reward and their KL to ``reference``.

    ``reward(texts)`` maps the N prompt + completion strings to a tensor ``(N,)`` of ground-truth rewards.
    ``config`` must be pure ancestral sampling (temperature 1, top_k 0, top_p 1), because the KL estimators
    are unbiased only for y ~ pi. The frontier's KL is ``token_kl`` (see ``sequence_kl``: unbiased for the
    same sequence KL as ``log_ratio``, lower variance, never negative); ``kl_log_ratio`` is reported beside it.
    """
    if (config.temperature, config.top_k, config.top_p) != (1.0, 0, 1.0):
        raise ValueError(
            f"evaluate needs pure ancestral sampling (temperature=1.0, top_k=0, top_p=1.0), got temperature="
            f"{config.temperature}, top_k={config.top_k}, top_p={config.top_p}: the KL estimates average over "
            "y ~ pi, and tempered or truncated sampling draws y from a different distribution, which biases them"
        )
    if not prompts or num_samples_per_prompt < 1:
        raise ValueError(
            f"need at least one prompt and num_samples_per_prompt >= 1, got {len(prompts)} prompts "
            f"and num_samples_per_prompt={num_samples_per_prompt}"
        )
    samples = sample(policy, tokenizer, prompts, config, num_samples_per_prompt, progress_bar=progress_bar)
    texts = samples.texts
    rewards = torch.as_tensor(reward(texts)).detach().to("cpu", torch.float64)
    if rewards.shape != (len(texts),):
        raise ValueError(
            f"reward returned shape {tuple(rewards.shape)} for {len(texts)} texts; expected ({len(texts)},)"
        )
    kl = sequence_kl(policy, reference, samples.prompt_ids, samples.completion_ids, batch_size=config.batch_size)

    mean_reward, reward_sem = _mean_and_sem(rewards, num_samples_per_prompt)
    mean_kl, kl_sem = _mean_and_sem(kl.token_kl, num_samples_per_prompt)
    mean_log_ratio, log_ratio_sem = _mean_and_sem(kl.log_ratio, num_samples_per_prompt)
    table = [
        {"prompt": prompt, "completion": completion, "reward": reward_value, "kl": kl_value, "kl_log_ratio": log_ratio}
        for prompt, completion, reward_value, kl_value, log_ratio in zip(
            samples.prompts,
            samples.completions,
            rewards.tolist(),
            kl.token_kl.tolist(),
            kl.log_ratio.tolist(),
            strict=True,
        )
    ]
    return Evaluation(
        mean_reward=mean_reward,
        reward_sem=reward_sem,
        kl=mean_kl,
        kl_sem=kl_sem,
        kl_log_ratio=mean_log_ratio,
        kl_log_ratio_sem=log_ratio_sem,
        num_samples=len(texts),
        samples=table,
    )


def best_of_n_kl_bound(n: int) -> float:
    """KL(best-of-n || pi) <= log n - (n - 1) / n, for the policy that keeps the highest-reward of n samples of pi
    (Stiennon et al. 2020, App. G; Beirami et al. 2024 prove it an upper bound, tight when the rewards of the n
    samples are almost surely distinct)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n


@dataclass
class BestOfN:
    """Best-of-n from a policy on held-out prompts: its mean reward (standard error over prompts) and KL bound."""

    n: int
    mean_reward: float
    reward_sem: float
    kl_bound: float
    """log n - (n - 1) / n: the KL is at most this (:func:`best_of_n_kl_bound`)."""
    samples: list[dict]
    """One row per prompt: ``prompt``, the kept ``completion`` and its ``reward``."""


def best_of_n(
    policy: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    reward: Callable[[list[str]], torch.Tensor],
    config: SamplingConfig,
    ns: Sequence[int],
    progress_bar: bool = True,
) -> list[BestOfN]:
    """Best-of-n for every n of ``ns``: max(ns) samples per prompt from ``policy``, scored once by ``reward``; best-of-n
    keeps the best of each prompt's first n (so the n share their samples, and the curve over n is monotone in
    expectation). Pure ancestral sampling is not required: the KL is bounded, not estimated."""
    if not ns or min(ns) < 1:
        raise ValueError(f"ns: give positive sample counts, got {list(ns)}")
    largest = max(ns)
    samples = sample(policy, tokenizer, prompts, config, largest, progress_bar=progress_bar)
    rewards = torch.as_tensor(reward(samples.texts)).detach().to("cpu", torch.float64).reshape(len(prompts), largest)
    results = []
    for n in sorted(ns):
        best, index = rewards[:, :n].max(dim=1)  # (P,) each: the best of each prompt's first n samples
        table = [
            {"prompt": prompt, "completion": samples.completions[row * largest + column], "reward": value}
            for row, (prompt, column, value) in enumerate(zip(prompts, index.tolist(), best.tolist(), strict=True))
        ]
        mean, sem = _mean_and_sem(best, 1)
        results.append(BestOfN(n, mean, sem, best_of_n_kl_bound(n), table))
    return results
