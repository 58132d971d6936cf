"""Per-sequence log-probabilities of completions under a causal language model.

A language model scores a completion y of a prompt x token by token, and the sequence log-prob that
the DPO loss family (``dpo_teach.losses``) consumes is the sum (Rafailov et al. 2023, the pi(y | x)
of Eq. 7):

    log pi(y | x) = sum_t log pi(y_t | x, y_<t)

Sum or per-token mean is the caller's explicit choice (``average``): DPO, cDPO, rDPO and SLiC use
sums; IPO is stated for sums (TRL averages per token for it); SimPO uses per-token means; the NLL
term of RPO takes sums and divides by the token counts returned here.

Batches follow ``dpo_teach.data``: ``input_ids``, ``attention_mask`` and ``labels``, each ``(N, T)``,
with ``labels == input_ids`` on completion tokens (including a final EOS) and a negative label
(``dpo_teach.data.IGNORE_INDEX``, -100, PyTorch's cross-entropy default) on prompt and padding. A
preference batch has ``N = 2B`` rows: prompt+chosen in rows ``0..B-1``, prompt+rejected in rows ``B..2B-1``.
Rows may be right-padded (training batches) or left-padded (PPO's rollouts, ``dpo_teach.train.rollout``):
the position ids are counted over real tokens only, as ``generate`` counts them, so either padding gives
every real token the logits it has alone.

Every log-prob of the toolkit is computed here: the trainers' (:func:`completion_logps`), PPO's per-token
ones (:func:`token_logps` of :func:`completion_logits`) and the evaluation's KL (:func:`token_kl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

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


def _scored(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The logits ``(M, V)`` (in their own dtype) of the M positions that predict a scored label, those labels
    ``(M,)``, their rows and positions ``(M,)``, and the mask ``(N, T-1)`` of scored positions."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be (N, T, V) and labels (N, T) with the same N and T, "
            f"got logits {tuple(logits.shape)} and labels {tuple(labels.shape)}"
        )
    num_rows, length, vocab_size = logits.shape
    targets = labels[:, 1:]  # (N, T-1): the token each position predicts
    mask = targets >= 0  # (N, T-1): a negative label is not scored
    rows, positions = mask.nonzero(as_tuple=True)  # (M,) row and position of each completion token
    # index_select on a flat view, not boolean indexing: same rows, but its backward uses every CPU thread
    scored_logits = logits.reshape(num_rows * length, vocab_size).index_select(0, rows * length + positions)
    scored_targets = targets[rows, positions]  # (M,)
    if scored_targets.numel() and not (0 <= scored_targets.min() and scored_targets.max() < vocab_size):
        raise ValueError(f"labels must be negative (not scored) or a token id in [0, {vocab_size}), the vocabulary")
    return scored_logits, scored_targets, rows, positions, mask


def _completion_token_logps(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The M scored positions of ``labels`` and their log-probs: ``(values (M,), rows (M,), positions (M,),
    mask (N, T-1))``; the shared core of :func:`sequence_logps` and :func:`token_logps` (see their docstrings)."""
    vocab_size = logits.shape[-1]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    completion_logits, completion_targets, rows, positions, mask = _scored(logits, labels)  # (M, V), (M,) x 3

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


class TokenKL(NamedTuple):
    """Per-token comparisons of two models at the M scored positions, each ``(M,)``, in row-major order."""

    log_ratio: torch.Tensor
    """log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t) of the label y_t (k1, http://joschu.net/blog/kl-approx.html)."""
    kl: torch.Tensor
    """KL(pi(. | x, y_<t) || pi_ref(. | x, y_<t)), exact over the vocabulary, >= 0."""
    rows: torch.Tensor
    """The row of each position, for sums per sequence."""


def token_kl(policy_logits: torch.Tensor, reference_logits: torch.Tensor, labels: torch.Tensor) -> TokenKL:
    """The k1 log-ratio and the exact KL of two models' next-token distributions at every scored position.

    ``policy_logits`` and ``reference_logits`` ``(N, T, V)`` (from :func:`completion_logits` of the same batch)
    and ``labels`` ``(N, T)`` as in :func:`sequence_logps`. Both are log-softmaxed in float32 (float64 for
    float64 logits), a chunk of positions at a time, as in :func:`sequence_logps`:

        log_ratio_t = log pi(y_t | .) - log pi_ref(y_t | .)
        kl_t        = sum_v pi(v | .) (log pi(v | .) - log pi_ref(v | .))

    No gradients are tracked. Summed over a sequence's tokens, both estimate KL(pi(. | x) || pi_ref(. | x)) for
    y ~ pi (``dpo_teach.sentiment.evaluate.sequence_kl``).
    """
    with torch.no_grad():
        policy, targets, rows, _, _ = _scored(policy_logits, labels)  # (M, V), (M,)
        reference, _, _, _, _ = _scored(reference_logits.to(policy_logits.device), labels)  # (M, V)
        dtype = torch.promote_types(policy.dtype, torch.float32)
        chunk_rows = max(1, LOGSUMEXP_CHUNK_ELEMENTS // policy.shape[-1])
        log_ratios, kls = [], []
        for policy_chunk, reference_chunk, target_chunk in zip(
            policy.split(chunk_rows), reference.split(chunk_rows), targets.split(chunk_rows), strict=True
        ):
            policy_logps = policy_chunk.to(dtype).log_softmax(dim=-1)  # (m, V) log pi(. | x, y_<t)
            reference_logps = reference_chunk.to(dtype).log_softmax(dim=-1)  # (m, V) log pi_ref(. | x, y_<t)
            log_ratios.append((policy_logps - reference_logps).gather(-1, target_chunk[:, None]).squeeze(-1))  # (m,)
            # Gibbs: KL_t >= 0; the clamp removes round-off only
            kls.append((policy_logps.exp() * (policy_logps - reference_logps)).sum(dim=-1).clamp_min(0))  # (m,)
        empty = torch.zeros(0, dtype=dtype, device=policy.device)
        return TokenKL(torch.cat([empty, *log_ratios]), torch.cat([empty, *kls]), rows)


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum (or per-token mean) of completion-token log-probs, ``log pi(y | x) = sum_t log pi(y_t | x, y_<t)``.

    ``logits`` ``(N, T, V)`` in any floating dtype (float32, bfloat16, float16, float64); ``labels``
    ``(N, T)`` long, negative where a position is not scored. Logits at position t score the
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
            f"rows {empty} have no completion tokens (every label after position 0 is negative), "
            "so their per-token mean log-prob is 0 / 0; give each row at least one completion token"
        )
    return logps / token_counts, token_counts


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``(N, T)`` counting real tokens only (cumsum of the mask - 1, padding clamped to 0), as
    ``generate`` computes them: a left-padded row gets the positions it would have alone, and a right-padded
    row the default 0..T-1 on its real tokens."""
    return (attention_mask.cumsum(dim=-1) - 1).clamp_min(0)


def completion_logits(model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass of ``model`` over ``batch`` ``(N, T)``; returns ``(logits (N, K, V), labels (N, K))``.

    ``batch`` holds ``input_ids``, ``attention_mask`` and ``labels`` (module docstring), left- or right-padded.
    The LM head runs only from the first position that predicts a completion token in any row
    (``logits_to_keep``, a forward argument of transformers' causal LMs): logits of the prompt positions
    before it are never computed, saving the head's time and memory on long prompts. The returned labels are
    the matching columns, so ``logits[:, t]`` predicts ``labels[:, t + 1]`` as :func:`sequence_logps` expects.
    """
    missing = [key for key in ("input_ids", "attention_mask", "labels") if key not in batch]
    if missing:
        raise ValueError(f"batch is missing {missing}; expected input_ids, attention_mask and labels, each (N, T)")
    labels = batch["labels"]  # (N, T)
    predicts_a_label = (labels[:, 1:] >= 0).any(dim=0)  # (T-1,): position t predicts label t + 1
    first = int(predicts_a_label.int().argmax()) if bool(predicts_a_label.any()) else labels.shape[1] - 1
    kept = labels.shape[1] - first
    attention_mask = batch["attention_mask"]
    # Right padding (every row starts at column 0): the model's default positions 0..T-1 are right for every real
    # token and are left to it (explicit ids can change its attention kernel, hence the last bits of its output).
    left_padded = not bool(attention_mask[:, 0].all())
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=attention_mask,
        **({"position_ids": position_ids(attention_mask)} if left_padded else {}),
        logits_to_keep=kept,
        use_cache=False,
    ).logits  # (N, kept, V): positions first..T-1
    return logits, labels[:, first:]


def completion_logps(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], average: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sequence_logps`` ``(N,)`` of one forward pass of ``model`` over ``batch`` (:func:`completion_logits`),
    and the completion token counts ``(N,)``."""
    return sequence_logps(*completion_logits(model, batch), average=average)


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
