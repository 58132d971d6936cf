"""Finite preference data on the table: counts ``wins[c, i, j]``, rows of (context, chosen, rejected), sampling.

A dataset is summarized by counts ``wins[c, i, j]``, the number of times response i was chosen over
response j in context c (notebook 1, Sec. 1.3), or listed as rows ``(context, chosen, rejected)``, the
format of DPO's data (TRL's ``prompt``/``chosen``/``rejected``). Pairs are drawn the way the DPO paper's
data are made: two different responses from a sampling policy, labelled by the preference model.
"""

from __future__ import annotations

import numbers

import torch

from dpo_teach.bandit.world import DTYPE, as_table, as_wins, check_counts


def _pair_probabilities(sampling_policy: torch.Tensor) -> torch.Tensor:
    """q(y1, y2) proportional to pi(y1) pi(y2) for y1 != y2; (C, K) -> (C, K * K), rows unnormalized."""
    num_contexts, num_responses = sampling_policy.shape
    if num_responses < 2:
        raise ValueError(f"a pair needs two different responses, got K = {num_responses}")
    off_diagonal = 1.0 - torch.eye(num_responses, dtype=DTYPE)
    pair_probs = sampling_policy[:, :, None] * sampling_policy[:, None, :] * off_diagonal  # (C, K, K)
    if not (pair_probs.sum((1, 2)) > 0).all():
        raise ValueError("sampling_policy must give two different responses a positive probability in every context")
    return pair_probs.reshape(num_contexts, -1)


def sample_comparisons(
    preferences: torch.Tensor, sampling_policy: torch.Tensor, num_comparisons: int, seed: int = 0
) -> torch.Tensor:
    """Draw a finite preference dataset: counts ``wins[c, i, j]`` of "i preferred over j".

    For each context, ``num_comparisons`` pairs (y1, y2) are drawn from
    ``sampling_policy(y1) sampling_policy(y2)`` conditioned on y1 != y2 (as DPO's data come from
    pi_ref = pi_SFT), and labelled y1 > y2 with probability ``preferences[c, y1, y2]``.

    Shapes: ``preferences`` (C, K, K), ``sampling_policy`` (C, K); returns (C, K, K) float64 counts.
    """
    preferences = torch.as_tensor(preferences, dtype=DTYPE)
    sampling_policy = as_table("sampling_policy", sampling_policy)
    num_contexts, num_responses = sampling_policy.shape
    if preferences.shape != (num_contexts, num_responses, num_responses):
        raise ValueError(
            f"preferences must have shape (C, K, K) = {(num_contexts, num_responses, num_responses)}, "
            f"got {tuple(preferences.shape)}"
        )
    if not isinstance(num_comparisons, numbers.Integral) or num_comparisons < 1:
        raise ValueError(f"num_comparisons must be >= 1, got {num_comparisons}")
    generator = torch.Generator().manual_seed(seed)
    pair_probs = _pair_probabilities(sampling_policy)  # (C, K * K)
    draws = torch.multinomial(pair_probs, num_comparisons, replacement=True, generator=generator)  # (C, n)
    pair_counts = torch.zeros_like(pair_probs).scatter_add_(1, draws, torch.ones_like(draws, dtype=DTYPE))
    pair_counts = pair_counts.reshape(num_contexts, num_responses, num_responses)  # N[c, y1, y2]
    first_wins = torch.binomial(pair_counts, preferences, generator=generator)  # y1 preferred
    return first_wins + (pair_counts - first_wins).transpose(1, 2)


def comparison_rows(wins: torch.Tensor) -> torch.Tensor:
    """The dataset behind counts, one row ``(context, chosen, rejected)`` per comparison; (C, K, K) -> (N, 3) long.

    ``wins`` must hold whole numbers; rows come sorted by context, then chosen, then rejected.
    """
    wins = as_wins(wins)
    if (wins < 0).any() or (wins != wins.round()).any():
        raise ValueError("wins must hold whole, non-negative counts to be listed as rows")
    index = torch.meshgrid(*(torch.arange(size) for size in wins.shape), indexing="ij")
    rows = torch.stack([part.flatten() for part in index], dim=-1)  # (C*K*K, 3)
    return rows.repeat_interleave(wins.flatten().long(), dim=0)


def chosen_policy(wins: torch.Tensor, pseudo_count: float = 1.0) -> torch.Tensor:
    """pi_ref fit to the chosen responses, the DPO paper's reference when pi_SFT is unknown (Sec. 4, "DPO outline").

        pi_ref(y | x) = (times y was chosen in x + pseudo_count) / (comparisons in x + K pseudo_count)

    is the maximum-likelihood table argmax_pi E_{(x, y_w) ~ D} log pi(y_w | x) with ``pseudo_count`` added to
    every count (additive smoothing, chosen here so that no response gets probability 0, as no neural SFT
    model would). Shape ``wins`` (C, K, K) -> (C, K).
    """
    wins = as_wins(wins)
    if not pseudo_count > 0:
        raise ValueError(f"pseudo_count must be > 0 (a zero probability makes log pi_ref = -inf), got {pseudo_count}")
    chosen = wins.sum(-1) + pseudo_count  # (C, K)
    return chosen / chosen.sum(-1, keepdim=True)


def sample_labelled_pairs(
    preferences: torch.Tensor, policy: torch.Tensor, batch_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch of fresh comparisons: a uniform context, y1 != y2 from ``policy``, labelled by ``preferences``.

    This is the data of online DPO (notebook 4d): the pairs come from the policy being trained and the labels
    from the preference oracle. Shapes: ``preferences`` (C, K, K), ``policy`` (C, K); returns
    ``(contexts, chosen, rejected)``, each (B,) long.
    """
    policy = as_table("policy", policy)
    check_counts(batch_size=batch_size)
    num_contexts, num_responses = policy.shape
    contexts = torch.randint(num_contexts, (batch_size,), generator=generator)  # (B,)
    pair_probs = _pair_probabilities(policy)[contexts]  # (B, K * K)
    pairs = torch.multinomial(pair_probs, 1, generator=generator).squeeze(-1)  # (B,)
    first, second = pairs // num_responses, pairs % num_responses
    first_wins = torch.rand(batch_size, generator=generator, dtype=DTYPE) < preferences[contexts, first, second]
    return contexts, torch.where(first_wins, first, second), torch.where(first_wins, second, first)
