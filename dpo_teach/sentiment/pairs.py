"""Preference pairs from scored samples: all K(K-1)/2 pairs of each prompt's K completions, labelled by reward.

The DPO paper's sentiment task (Rafailov et al. 2023, App. C.1) samples 4 completions per prompt from
the SFT policy and turns them into all 6 pairs, the completion with the higher ground-truth reward
being chosen (y_w) and the other rejected (y_l). Notebook 5 builds them step by step.

A pair is written in the standard preference format that ``dpo_teach.data.load_examples`` reads,
``{"prompt", "chosen", "rejected"}``, plus the two rewards ``chosen_reward`` and ``rejected_reward`` and whether
each completion ended with EOS, ``chosen_ended`` and ``rejected_ended`` (a completion cut at the sampling length
gets no EOS when tokenized: ``dpo_teach.data.tokenize_preference``).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import torch

from dpo_teach import io
from dpo_teach.data import DataError, load_examples
from dpo_teach.sampling import Samples

REWARD_FIELDS = ("chosen_reward", "rejected_reward")


def build_pairs(samples: Samples, rewards: torch.Tensor, tie_tolerance: float = 0.0) -> tuple[list[dict], int]:
    """All pairs of each prompt's K samples, the higher-reward completion chosen; returns ``(pairs, num_dropped)``.

    ``rewards`` ``(N,)`` scores ``samples.texts`` (N = P * K, prompt-major). Of the P * K(K-1)/2 candidate
    pairs, a pair is dropped, and counted in ``num_dropped``, when it is a tie, |r_i - r_j| <= tie_tolerance
    or the two completion strings are identical (a tie is never labelled at random: it says nothing
    about which completion is better), or when either completion is empty or whitespace only once decoded
    (e.g. the policy emitted EOS first), which ``load_examples`` rejects. So
    ``len(pairs) + num_dropped == P * K * (K - 1) / 2``. Pairs are ordered by prompt, then by (i, j), i < j.
    """
    num_samples = len(samples.completions)
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    if tuple(rewards.shape) != (num_samples,):
        raise ValueError(f"rewards has shape {tuple(rewards.shape)}; expected ({num_samples},), one per sample")
    reward_values = rewards.detach().to("cpu", torch.float64).tolist()
    if not all(math.isfinite(value) for value in reward_values):
        raise ValueError("rewards contain NaN or infinity; a pair needs two finite rewards to be labelled")
    group = samples.num_samples_per_prompt
    if num_samples % group:
        raise ValueError(f"{num_samples} samples are not a multiple of num_samples_per_prompt={group}")

    pairs, num_dropped = [], 0
    for start in range(0, num_samples, group):
        for i, j in itertools.combinations(range(start, start + group), 2):
            completion_i, completion_j = samples.completions[i], samples.completions[j]
            is_tie = abs(reward_values[i] - reward_values[j]) <= tie_tolerance or completion_i == completion_j
            if is_tie or not completion_i.strip() or not completion_j.strip():
                num_dropped += 1
                continue
            chosen, rejected = (i, j) if reward_values[i] > reward_values[j] else (j, i)
            pairs.append(
                {
                    "prompt": samples.prompts[start],
                    "chosen": samples.completions[chosen],
                    "rejected": samples.completions[rejected],
                    "chosen_reward": reward_values[chosen],
                    "rejected_reward": reward_values[rejected],
                    "chosen_ended": samples.ended[chosen],
                    "rejected_ended": samples.ended[rejected],
                }
            )
    return pairs, num_dropped


def save_pairs(pairs: list[dict], path: str | Path) -> None:
    """Write ``pairs`` as JSONL, one pair per line, atomically (``dpo_teach.io``): a crash never leaves a
    half-written file behind."""
    io.write_text_atomically(path, "".join(json.dumps(pair) + "\n" for pair in pairs))


def load_pairs(path: str | Path) -> list[dict]:
    """Read a file written by :func:`save_pairs`, validated by ``load_examples`` (a bad row raises
    :class:`~dpo_teach.data.DataError` naming file, row and field), with both rewards required as numbers."""
    pairs, _ = load_examples(path, "preference")
    for row, pair in enumerate(pairs):
        for field in REWARD_FIELDS:
            value = pair.get(field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise DataError(f"{path}, row {row}, field {field!r}: got {value!r}, expected a number")
    return pairs
