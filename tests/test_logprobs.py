"""Tests of dpo_teach.logprobs: sequence log-probs against a naive float64 loop over tokens (values and
gradients), float32 scoring of bf16/fp16 logits without a full float32 copy, and, on a tiny random
GPT-2, invariance to padding and batch composition, one concatenated pass equal to two separate
passes, and the DPO loss at exactly ln 2 when the policy is the reference.

Tolerances: float64 logits against the float64 loop differ by summation order only
(``atol=rtol=1e-12``); float32 results (sums up to ~100 in size, rounded to float32, ulp ~8e-6) agree
with the float64 loop on the same, upcast, logits to ``atol=rtol=1e-5`` (rtol 1e-5 is ~80 float32
ulps; the largest error seen is ~1.2e-5 at a log-prob of -84); GPT-2 forwards of differently padded or
composed batches use different matmul shapes, so they agree to ``atol=rtol=1e-5``, not bit for bit.
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

from dpo_teach import logprobs
from dpo_teach.data import IGNORE_INDEX
from dpo_teach.logprobs import completion_logps, concatenated_logps, sequence_logps
from dpo_teach.losses import dpo_loss

TIGHT = {"atol": 1e-12, "rtol": 1e-12}
FLOAT32 = {"atol": 1e-5, "rtol": 1e-5}
EXACT = {"atol": 0.0, "rtol": 0.0}
VOCAB = 97


def naive_sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) = sum_t log pi(y_t | x, y_<t), one row and one token at a time, in float64."""
    totals = []
    for row in range(labels.shape[0]):
        total = torch.zeros((), dtype=torch.float64)
        for t in range(1, labels.shape[1]):  # the logits at t - 1 score the label at t
            if labels[row, t] != IGNORE_INDEX:
                total = total + torch.log_softmax(logits[row, t - 1].double(), dim=-1)[labels[row, t]]
        totals.append(total)
    return torch.stack(totals)  # (N,)


def random_logits_and_labels(
    num_rows: int = 5, length: int = 12, vocab: int = VOCAB, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(N, T, V)`` of scale ~3 and right-padded labels: -100 on a prompt, ids, then -100 padding."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(num_rows, length, vocab, generator=generator, dtype=torch.float64)).to(dtype)
    labels = torch.full((num_rows, length), IGNORE_INDEX)
    for row in range(num_rows):
        prompt_length = 1 + row % 4
        end = length - row % 3  # rows end at different places: right padding
        labels[row, prompt_length:end] = torch.randint(vocab, (end - prompt_length,), generator=generator)
    return logits, labels


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sequence_logps_matches_naive_loop(dtype: torch.dtype) -> None:
    logits, labels = random_logits_and_labels(dtype=dtype)
    logps, token_counts = sequence_logps(logits, labels)
    assert logps.dtype == dtype and logps.shape == (5,)
    tolerance = TIGHT if dtype == torch.float64 else FLOAT32
    torch.testing.assert_close(logps.double(), naive_sequence_logps(logits, labels), **tolerance)
    assert torch.equal(token_counts, (labels[:, 1:] != IGNORE_INDEX).sum(dim=-1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits_are_scored_in_float32(dtype: torch.dtype) -> None:
    logits, labels = random_logits_and_labels(dtype=dtype)
    logps, _ = sequence_logps(logits, labels)
    assert logps.dtype == torch.float32
    exact = naive_sequence_logps(logits.double(), labels)  # the same low-precision logits, upcast
    torch.testing.assert_close(logps.double(), exact, **FLOAT32)
    # What the upcast buys: a log-softmax taken in the logits' own dtype is off by far more.
    in_dtype = torch.log_softmax(logits[:, :-1], dim=-1).double()  # (N, T-1, V)
    mask = labels[:, 1:] != IGNORE_INDEX
    targets = labels[:, 1:].clamp(min=0)[..., None]
    naive_low_precision = (in_dtype.gather(-1, targets).squeeze(-1) * mask).sum(dim=-1)
    assert (naive_low_precision - exact).abs().max() > 100 * (logps.double() - exact).abs().max()


class LargestFloat32Tensor(TorchDispatchMode):
    """Records the largest float32 tensor any aten op returns, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                self.numel = max(self.numel, value.numel())
        return out


def test_bf16_logits_are_never_upcast_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    chunk_rows = 4
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK_ELEMENTS", chunk_rows * VOCAB)
    logits, labels = random_logits_and_labels(num_rows=6, length=16, dtype=torch.bfloat16)
    logits.requires_grad_(True)
    saved_float32 = []  # numel of each float32 tensor autograd keeps for backward

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.dtype == torch.float32:
            saved_float32.append(tensor.numel())
        return tensor

    with LargestFloat32Tensor() as largest:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logps, token_counts = sequence_logps(logits, labels)
        logps.sum().backward()
    assert largest.numel == chunk_rows * VOCAB  # one chunk at a time, not the (N, T, V) = 6 * 16 * 97 whole
    assert max(saved_float32) == token_counts.sum()  # per-token values only: no chunk waits for backward
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk_rows", [1, 7, 10_000])  # many chunks, a ragged last chunk, one chunk
def test_gradient_matches_naive_loop(monkeypatch: pytest.MonkeyPatch, chunk_rows: int) -> None:
    monkeypatch.setattr(logprobs, "LOGSUMEXP_CHUNK_ELEMENTS", chunk_rows * VOCAB)
    logits, labels = random_logits_and_labels(dtype=torch.float64)
    weights = torch.linspace(-1.0, 2.0, labels.shape[0], dtype=torch.float64)  # a generic (N,) upstream grad
    ours = logits.clone().requires_grad_(True)
    (weights * sequence_logps(ours, labels)[0]).sum().backward()
    naive = logits.clone().requires_grad_(True)
    (weights * naive_sequence_logps(naive, labels)).sum().backward()
    torch.testing.assert_close(ours.grad, naive.grad, **TIGHT)
    assert ours.grad[:, -1].abs().max() == 0  # the last position predicts nothing


def test_average_is_sum_over_token_count() -> None:
    logits, labels = random_logits_and_labels()
    total, token_counts = sequence_logps(logits, labels)
    mean, mean_counts = sequence_logps(logits, labels, average=True)
    torch.testing.assert_close(mean, total / token_counts, **EXACT)
    assert torch.equal(mean_counts, token_counts)


def test_row_without_completion_tokens() -> None:
    logits, labels = random_logits_and_labels(num_rows=3)
    labels[1] = IGNORE_INDEX
    labels[2, 1:] = IGNORE_INDEX
    labels[2, 0] = 5  # position 0 has no context, so it is not scored either
    logps, token_counts = sequence_logps(logits, labels)
    assert logps[1] == 0 and logps[2] == 0 and token_counts.tolist()[1:] == [0, 0]
    with pytest.raises(ValueError, match=r"rows \[1, 2\] have no completion tokens"):
        sequence_logps(logits, labels, average=True)


def test_bad_inputs_are_named() -> None:
    logits, labels = random_logits_and_labels()
    with pytest.raises(ValueError, match="labels"):
        sequence_logps(logits, labels[:, :-1])
    labels[0, -1] = VOCAB
    with pytest.raises(ValueError, match=r"token id in \[0, 97\)"):
        sequence_logps(logits, labels)
    with pytest.raises(ValueError, match="missing"):
        completion_logps(torch.nn.Identity(), {"input_ids": labels})
    with pytest.raises(ValueError, match="2B > 0 rows"):
        concatenated_logps(torch.nn.Identity(), {"input_ids": labels[:3]})


# --- a tiny random GPT-2 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> transformers.GPT2LMHeadModel:
    torch.manual_seed(0)
    # initializer_range 0.2 (GPT-2's is 0.02) makes the random model's predictions depend visibly on context,
    # so the invariance tests below are not passed by a model that is uniform whatever it reads.
    config = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        initializer_range=0.2,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def make_batch(rows: list[tuple[list[int], list[int]]], length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded (prompt, completion) rows in the format of ``dpo_teach.data``; padding ids are junk."""
    length = length or max(len(prompt) + len(completion) for prompt, completion in rows)
    batch = {
        "input_ids": torch.full((len(rows), length), VOCAB - 1),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "labels": torch.full((len(rows), length), IGNORE_INDEX),
    }
    for row, (prompt, completion) in enumerate(rows):
        ids = torch.tensor(prompt + completion)
        batch["input_ids"][row, : len(ids)] = ids
        batch["attention_mask"][row, : len(ids)] = 1
        batch["labels"][row, len(prompt) : len(ids)] = ids[len(prompt) :]
    return batch


PAIRS = [  # (prompt, chosen, rejected); the last token of each completion plays EOS
    ([3, 14, 15], [92, 65, 35, 0], [89, 79, 0]),
    ([26, 53, 58, 95, 9, 7], [93, 0], [23, 84, 62, 64, 33, 83, 0]),
    ([2], [79, 50, 28, 84, 19, 71, 69, 39, 0], [93, 95, 51, 0]),
]


def test_padding_and_batch_composition_do_not_change_logps(model: transformers.GPT2LMHeadModel) -> None:
    prompt, chosen, _ = PAIRS[0]
    with torch.no_grad():
        alone, count = completion_logps(model, make_batch([(prompt, chosen)]))
        padded = [completion_logps(model, make_batch([(prompt, chosen)], length))[0] for length in (8, 20, 64)]
        others = [(p, r) for p, _, r in PAIRS[1:]]
        in_batch, counts = completion_logps(model, make_batch([others[0], (prompt, chosen), others[1]]))
        other_prompt, _ = completion_logps(model, make_batch([([5, 6, 7], chosen)]))
    assert count.item() == len(chosen) and counts[1].item() == len(chosen)
    assert (other_prompt - alone).abs().item() > 0.1  # the model reads its context: invariance is not vacuous
    for logps in [*padded, in_batch[1:2]]:
        torch.testing.assert_close(logps, alone, **FLOAT32)
    # The completion log-prob is the model's, token by token: the naive loop on the same logits agrees.
    with torch.no_grad():
        logits = model(torch.tensor([prompt + chosen])).logits
    labels = make_batch([(prompt, chosen)])["labels"]
    torch.testing.assert_close(alone.double(), naive_sequence_logps(logits, labels), **FLOAT32)


def test_concatenated_pass_equals_separate_passes(model: transformers.GPT2LMHeadModel) -> None:
    chosen_rows = [(prompt, chosen) for prompt, chosen, _ in PAIRS]
    rejected_rows = [(prompt, rejected) for prompt, _, rejected in PAIRS]
    with torch.no_grad():
        together = concatenated_logps(model, make_batch(chosen_rows + rejected_rows))
        chosen, chosen_tokens = completion_logps(model, make_batch(chosen_rows))
        rejected, rejected_tokens = completion_logps(model, make_batch(rejected_rows))
    torch.testing.assert_close(together.chosen, chosen, **FLOAT32)
    torch.testing.assert_close(together.rejected, rejected, **FLOAT32)
    assert together.chosen_tokens.tolist() == chosen_tokens.tolist() == [len(c) for _, c, _ in PAIRS]
    assert together.rejected_tokens.tolist() == rejected_tokens.tolist() == [len(r) for _, _, r in PAIRS]


def test_dpo_loss_is_ln2_when_policy_is_reference(model: transformers.GPT2LMHeadModel) -> None:
    batch = make_batch([(p, c) for p, c, _ in PAIRS] + [(p, r) for p, _, r in PAIRS])
    policy = concatenated_logps(model, batch)  # with autograd, as in training
    with torch.no_grad():
        reference = concatenated_logps(model, batch)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        policy.chosen, policy.rejected, reference.chosen, reference.rejected, beta=0.1
    )
    # Exact, not approximate: the same model on the same batch gives bit-identical log-probs (CPU
    # kernels are deterministic for equal shapes), so every log-ratio is x - x = 0 exactly and the
    # loss is -log sigma(0) = ln 2 rounded once to float32.
    assert torch.equal(chosen_rewards, torch.zeros(3)) and torch.equal(rejected_rewards, torch.zeros(3))
    torch.testing.assert_close(losses, torch.full((3,), math.log(2.0)), **EXACT)
    gradients = torch.autograd.grad(losses.mean(), list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().max() > 0 for g in gradients)  # differentiable end to end
