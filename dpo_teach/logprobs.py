"""Per-sequence log-probabilities of completions under a causal language model.

A language model scores a completion y of a prompt x token by token, and the sequence log-prob that
the DPO loss family (``dpo_teach.losses``) consumes is the sum (Rafailov et al. 2023, the pi(y | x)
of Eq. 7):

    log pi(y | x) = sum_t log pi(y_t | x, y_<t)

Sum or per-token mean is the caller's explicit choice (``average``): DPO, cDPO, rDPO and SLiC use
sums; IPO is stated for sums (TRL averages per token for it); SimPO uses per-token means; the NLL
term of RPO takes sums and divides by the token counts returned here.

Batches follow ``dpo_teach.data``: ``input_ids``, ``attention_mask`` and ``labels``, each ``(N, T)``,
right-padded, with ``labels == input_ids`` on completion tokens (including the final EOS) and
``IGNORE_INDEX`` (-100) on prompt and padding. A preference batch has ``N = 2B`` rows: prompt+chosen
in rows ``0..B-1``, prompt+rejected in rows ``B..2B-1``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100

# Largest number of logits upcast to float32 at once (64 MiB): about 330 positions of GPT-2's vocabulary.
LOGSUMEXP_CHUNK_ELEMENTS = 2**24


class ConcatenatedLogps(NamedTuple):
    """Completion log-probs ``(B,)`` and completion token counts ``(B,)`` of a preference batch."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor


def _logsumexp(logits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """logsumexp over the vocabulary of ``logits`` ``(M, V)`` upcast to ``dtype``; returns ``(M,)``."""
    return logits.to(dtype).logsumexp(dim=-1)


def _completion_token_logps(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M scored positions of ``labels`` and their log-probs: ``(values (M,), rows (M,), positions (M,),
    mask (N, T-1))``; the shared core of :func:`sequence_logps` and :func:`token_logps` (see their docstrings)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (N, T, V) and labels (N, T) with the same N and T, "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    num_rows, length, vocab_size = logits.shape
    dtype = torch.promote_types(logits.dtype, torch.float32)
    targets = labels[:, 1:]  # (N, T-1): the token each position predicts
    mask = targets != IGNORE_INDEX  # (N, T-1)
    rows, positions = mask.nonzero(as_tuple=True)  # (M,) row and position of each completion token
    # index_select on a flat view, not boolean indexing: same rows, but its backward uses every CPU thread
    completion_logits = logits.reshape(num_rows * length, vocab_size).index_select(0, rows * length + positions)
    completion_targets = targets[rows, positions]  # (M,); completion_logits is (M, V) in the logits' dtype
    if completion_targets.numel() and not (0 <= completion_targets.min() and completion_targets.max() < vocab_size):
        raise ValueError(f"labels must be {IGNORE_INDEX} or a token id in [0, {vocab_size}), the logits' vocabulary")

    # Memory: an (N, T, V) float32 log-softmax is the largest tensor of a DPO step (2B x T x 50257 floats
    # for GPT-2), so none is made. Only the M completion positions are copied out, in the logits' own dtype;
    # the label logit is gathered (upcasting it is exact), and the normalizer logsumexp is computed in
    # float32 one chunk of rows at a time. Under autograd each low-precision chunk is checkpointed: backward
    # recomputes its upcast instead of keeping every float32 chunk alive until then.
    label_logits = completion_logits.gather(-1, completion_targets[:, None]).squeeze(-1).to(dtype)  # (M,)
    chunk_rows = max(1, LOGSUMEXP_CHUNK_ELEMENTS // vocab_size)
    normalizers = []
    for chunk in completion_logits.split(chunk_rows):  # (<= chunk_rows, V) each
        if chunk.requires_grad and chunk.dtype != dtype:  # float32 logits: the upcast is free, nothing to save
            normalizers.append(checkpoint(_logsumexp, chunk, dtype, use_reentrant=False))
        else:
            normalizers.append(_logsumexp(chunk, dtype))
    values = label_logits - torch.cat(normalizers)  # (M,) log pi(y_t | x, y_<t) = z_y - logsumexp(z)
    return values, rows, positions, mask


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of the labels, ``log pi(y_t | x, y_<t)``, and the mask of the scored positions.

    ``logits`` ``(N, T, V)`` and ``labels`` ``(N, T)`` as in :func:`sequence_logps`, with the same fp32-safe,
    chunked computation. Returns ``(token_logps, mask)``, both ``(N, T-1)``: entry ``[n, t]`` scores
    ``labels[n, t + 1]``; ``token_logps`` is float32 (float64 for float64 logits), differentiable with respect
    to ``logits``, and 0 where ``mask`` (bool) is False. Token-level losses such as unlikelihood
    (``dpo_teach.losses.unlikelihood_loss``) need these values before they are summed.
    """
    values, rows, positions, mask = _completion_token_logps(logits, labels)
    zeros = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)  # (N, T-1)
    return zeros.index_put((rows, positions), values), mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (or per-token mean) of completion-token log-probs, ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)``.

    ``logits`` ``(N, T, V)`` in any floating dtype (float32, bfloat16, float16, float64); ``labels``
    ``(N, T)`` long, ``IGNORE_INDEX`` where a position is not scored. Logits at position t score the
    label at t + 1, so ``labels[:, 0]`` is never scored (no position predicts it).

    Returns ``(logps, token_counts)``, both ``(N,)``: ``logps`` in float32 (float64 if the logits are
    float64) and differentiable with respect to ``logits``; ``token_counts`` long. With ``average``
    the log-probs are per-token means, and a row without completion tokens raises ValueError (its
    mean is 0 / 0); without it such a row has log-prob 0, the log-prob of the empty sequence.
    """
    values, rows, _, mask = _completion_token_logps(logits, labels)
    logps = torch.zeros(logits.shape[0], dtype=values.dtype, device=logits.device).index_add(0, rows, values)  # (N,)
    token_counts = mask.sum(dim=-1)  # (N,)
    if not average:
        return logps, token_counts
    empty = (token_counts == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"rows {empty} have no completion tokens (every label after position 0 is {IGNORE_INDEX}), "
            "so their per-token mean log-prob is 0 / 0; give each row at least one completion token"
        )
    return logps / token_counts, token_counts


def completion_logps(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of ``model`` over ``batch`` ``(N, T)``; returns ``sequence_logps`` ``(N,)`` of it.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (module docstring). No
    ``position_ids`` are passed: with right padding every row starts at position 0, so the model's
    default positions 0..T-1 are the right ones for every real token (left padding would need
    positions computed from the attention mask). Padding positions get logits, which are not scored.

    The LM head runs only from the first position that predicts a completion token in any row
    (``logits_to_keep``, a forward argument of transformers' causal LMs): logits of the prompt
    positions before it are never computed, saving the head's time and memory on long prompts.
    """
    missing = [key for key in ("input_ids", "attention_mask", "labels") if key not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; expected input_ids, attention_mask and labels, each (N, T)")
    labels = batch["labels"]  # (N, T)
    predicts_a_label = (labels[:, 1:] != IGNORE_INDEX).any(dim=0)  # (T-1,): position t predicts label t + 1
    first = int(predicts_a_label.int().argmax()) if bool(predicts_a_label.any()) else labels.shape[1] - 1
    kept = labels.shape[1] - first
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=kept).logits
    return sequence_logps(logits, labels[:, first:], average=average)  # logits (N, kept, V) of positions first..T-1


def concatenated_logps(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], average: bool = False
) -> ConcatenatedLogps:
    """Chosen and rejected completion log-probs ``(B,)`` from ONE forward pass over the ``2B`` rows.

    Rows ``0..B-1`` of ``batch`` are prompt+chosen and rows ``B..2B-1`` prompt+rejected. One pass
    instead of two halves the number of forward calls (and, under FSDP/DeepSpeed, of parameter
    gathers); the result equals two separate passes up to floating-point round-off.
    """
    num_rows = batch["input_ids"].shape[0] if "input_ids" in batch else 0
    if num_rows == 0 or num_rows % 2:
        raise ValueError(
            f"a preference batch needs 2B > 0 rows (B chosen then B rejected), got {num_rows} rows of input_ids"
        )
    logps, token_counts = completion_logps(model, batch, average=average)  # (2B,) each
    chosen, rejected = logps.chunk(2)
    chosen_tokens, rejected_tokens = token_counts.chunk(2)
    return ConcatenatedLogps(chosen, rejected, chosen_tokens, rejected_tokens)
