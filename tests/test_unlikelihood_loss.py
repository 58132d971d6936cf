"""The unlikelihood loss and the per-token log-probs it consumes, against naive float64 loops.

Tolerances: float64 against a float64 loop differ by summation order only (``atol=1e-10``, ``rtol=0``, as
asked of the loss; ``1e-12`` for log-probs, as in tests/test_logprobs.py); float32 log-probs agree with the
loop on the same, upcast, logits to ``atol=rtol=1e-5`` (tests/test_logprobs.py explains the figure).
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_teach.data import IGNORE_INDEX
from dpo_teach.logprobs import sequence_logps, token_logps
from dpo_teach.losses import log1mexp, nll_loss, unlikelihood_loss

LOSS = {"atol": 1e-10, "rtol": 0.0}
TIGHT = {"atol": 1e-12, "rtol": 1e-12}
FLOAT32 = {"atol": 1e-5, "rtol": 1e-5}
VOCAB = 53


def random_logits_and_labels(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``(5, 12, V)`` and right-padded labels: -100 on a prompt, token ids, then -100 padding."""
    generator = torch.Generator().manual_seed(seed)
    logits = (3.0 * torch.randn(5, 12, VOCAB, generator=generator, dtype=torch.float64)).to(dtype)
    labels = torch.full((5, 12), IGNORE_INDEX)
    for row in range(5):
        prompt_length, end = 1 + row % 4, 12 - row % 3
        labels[row, prompt_length:end] = torch.randint(VOCAB, (end - prompt_length,), generator=generator)
    return logits, labels


def naive_token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[n, t] = log softmax(logits[n, t])[labels[n, t + 1]]`` in float64, 0 where unscored, one token at a time."""
    values = torch.zeros(labels.shape[0], labels.shape[1] - 1, dtype=torch.float64)
    for row in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if labels[row, t + 1] != IGNORE_INDEX:
                values[row, t] = torch.log_softmax(logits[row, t].double(), dim=-1)[labels[row, t + 1]]
    return values


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_token_logps_match_a_naive_loop_and_sum_to_sequence_logps(dtype: torch.dtype) -> None:
    logits, labels = random_logits_and_labels(dtype)
    values, mask = token_logps(logits, labels)
    assert values.shape == mask.shape == (5, 11) and values.dtype == dtype and mask.dtype == torch.bool
    assert torch.equal(mask, labels[:, 1:] != IGNORE_INDEX)
    assert values[~mask].abs().max() == 0  # exactly 0 where unscored
    tolerance = TIGHT if dtype == torch.float64 else FLOAT32
    torch.testing.assert_close(values.double(), naive_token_logps(logits, labels), **tolerance)
    torch.testing.assert_close(values.sum(dim=-1), sequence_logps(logits, labels)[0], **tolerance)


def test_token_logps_gradient_matches_a_naive_loop() -> None:
    logits, labels = random_logits_and_labels()
    weights = torch.randn(5, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # upstream grad
    ours = logits.clone().requires_grad_(True)
    (weights * token_logps(ours, labels)[0]).sum().backward()
    naive = logits.clone().requires_grad_(True)
    (weights * naive_token_logps(naive, labels)).sum().backward()
    torch.testing.assert_close(ours.grad, naive.grad, **TIGHT)


def random_loss_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chosen sums and counts ``(4,)``, rejected per-token log-probs ``(4, 9)`` in [-6, -1e-3] and a ragged mask."""
    generator = torch.Generator().manual_seed(seed)
    chosen_counts = torch.tensor([3, 7, 1, 9])
    policy_chosen_logps = -chosen_counts * torch.rand(4, generator=generator, dtype=torch.float64) * 3
    rejected_token_logps = -torch.exp(torch.empty(4, 9, dtype=torch.float64).uniform_(-7, 1.8, generator=generator))
    rejected_mask = torch.arange(9)[None, :] < torch.tensor([9, 2, 5, 1])[:, None]  # (4, 9)
    rejected_token_logps = torch.where(rejected_mask, rejected_token_logps, 0.0)
    return policy_chosen_logps, chosen_counts, rejected_token_logps, rejected_mask


def naive_unlikelihood(policy_chosen_logps, chosen_counts, rejected_token_logps, rejected_mask, alpha) -> torch.Tensor:
    """-log pi(y_w) / |y_w| - alpha * sum_t log(1 - pi(y_l,t)) / |y_l|, one pair and one token at a time."""
    losses = []
    for pair in range(policy_chosen_logps.shape[0]):
        unlikelihood, count = torch.zeros((), dtype=torch.float64), 0
        for t in range(rejected_token_logps.shape[1]):
            if rejected_mask[pair, t]:
                unlikelihood = unlikelihood - torch.log(1 - torch.exp(rejected_token_logps[pair, t]))
                count += 1
        losses.append(-policy_chosen_logps[pair] / chosen_counts[pair] + alpha * unlikelihood / count)
    return torch.stack(losses)


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.5, 1.0])  # the DPO paper's sweep
def test_unlikelihood_loss_matches_a_naive_loop_and_its_gradient(alpha: float) -> None:
    chosen, counts, rejected, mask = random_loss_inputs()
    ours_chosen, ours_rejected = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
    result = unlikelihood_loss(ours_chosen, counts, ours_rejected, mask, alpha)
    naive_chosen, naive_rejected = chosen.clone().requires_grad_(True), rejected.clone().requires_grad_(True)
    expected = naive_unlikelihood(naive_chosen, counts, naive_rejected, mask, alpha)
    torch.testing.assert_close(result.losses, expected, **LOSS)
    torch.testing.assert_close(result.losses.detach(), result.chosen_nll + alpha * result.rejected_unlikelihood, **LOSS)
    weights = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)  # a generic upstream gradient
    (weights * result.losses).sum().backward()
    (weights * expected).sum().backward()
    torch.testing.assert_close(ours_chosen.grad, naive_chosen.grad, **LOSS)
    torch.testing.assert_close(ours_rejected.grad, naive_rejected.grad, **LOSS)
    assert ours_rejected.grad[~mask].abs().max() == 0


def test_alpha_zero_is_the_per_token_nll_of_the_chosen_completion() -> None:
    chosen, counts, rejected, mask = random_loss_inputs()
    losses = unlikelihood_loss(chosen, counts, rejected, mask, alpha=0.0).losses
    torch.testing.assert_close(losses, nll_loss(chosen, counts), **LOSS)
    torch.testing.assert_close(losses, -chosen / counts, **LOSS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_probs_near_zero_give_a_finite_loss_and_gradient(dtype: torch.dtype) -> None:
    """log(1 - p) -> -inf as p -> 1; a log-prob of exactly 0 (p rounded to 1) is clamped to -eps of its dtype."""
    near_zero = torch.tensor([[0.0, -1e-30, -1e-12, -1e-7, -math.log(2), -1.0, -40.0, -1e4]], dtype=dtype)
    rejected = near_zero.clone().requires_grad_(True)
    chosen = torch.tensor([-3.0], dtype=dtype, requires_grad=True)
    result = unlikelihood_loss(chosen, torch.tensor([2]), rejected, torch.ones_like(rejected, dtype=torch.bool), 1.0)
    result.losses.sum().backward()
    assert torch.isfinite(result.losses).all() and torch.isfinite(rejected.grad).all()
    eps = torch.finfo(dtype).eps
    assert -log1mexp(torch.tensor(-eps, dtype=dtype)).item() == pytest.approx(-math.log(eps), rel=1e-6)
    clamped = near_zero > -eps  # 0 and -1e-30 in both dtypes; -1e-12 and -1e-7 too in float32
    assert rejected.grad[clamped].abs().max() == 0  # no gradient, as with Welleck et al.'s clamp of 1 - p
    # elsewhere raising a rejected token's log-prob raises the loss (until exp(-1e4) underflows to 0)
    assert (rejected.grad[~clamped & (near_zero > -100)] > 0).all() and (rejected.grad >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_is_accurate_where_the_naive_formula_is_not(dtype: torch.dtype) -> None:
    """Near 0, log(1 - e^x) = log(-x) + x/2 + x^2/24 + O(x^4); far from it, -e^x - e^2x/2 - ...; at the branch
    point -ln 2 both formulas agree. The naive log(1 - exp(x)) loses every digit at x = -1e-10 in float32."""
    x = torch.tensor([-1e-10, -1e-4, -50.0], dtype=dtype)
    series = torch.tensor(
        [math.log(1e-10) - 5e-11, math.log(1e-4) - 5e-5 + 1e-8 / 24, -math.exp(-50.0) - math.exp(-100.0) / 2],
        dtype=dtype,
    )
    torch.testing.assert_close(log1mexp(x), series, atol=0.0, rtol=4 * torch.finfo(dtype).eps)
    if dtype == torch.float32:
        assert torch.log(1 - torch.exp(x[0])) == -math.inf
    around = torch.tensor([-math.log(2) - 1e-6, -math.log(2) + 1e-6], dtype=torch.float64)
    exact = torch.log(-torch.expm1(around))
    torch.testing.assert_close(log1mexp(around), exact, **TIGHT)


def test_masked_entries_do_not_count_whatever_their_value() -> None:
    chosen, counts, rejected, mask = random_loss_inputs()
    garbage = torch.where(mask, rejected, torch.linspace(-30.0, 0.0, 36, dtype=torch.float64).view(4, 9))
    garbage.requires_grad_(True)
    losses = unlikelihood_loss(chosen, counts, garbage, mask, 0.5).losses
    torch.testing.assert_close(losses, unlikelihood_loss(chosen, counts, rejected, mask, 0.5).losses, **LOSS)
    losses.sum().backward()
    assert torch.isfinite(garbage.grad).all() and garbage.grad[~mask].abs().max() == 0


def test_bad_inputs_are_named() -> None:
    chosen, counts, rejected, mask = random_loss_inputs()
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        unlikelihood_loss(chosen, counts, rejected, mask, -0.1)
    with pytest.raises(ValueError, match=r"rejected_token_logps must be a torch.Tensor of shape \(B, T\)"):
        unlikelihood_loss(chosen, counts, rejected[0], mask, 1.0)
    with pytest.raises(ValueError, match="rejected_mask must be a tensor of the shape"):
        unlikelihood_loss(chosen, counts, rejected, mask[:, :-1], 1.0)
    with pytest.raises(ValueError, match=r"policy_chosen_logps must be a torch.Tensor of shape \(B,\) = \(4,\)"):
        unlikelihood_loss(chosen[:3], counts, rejected, mask, 1.0)
    mask[1] = False
    with pytest.raises(ValueError, match="every rejected completion needs at least one scored token"):
        unlikelihood_loss(chosen, counts, rejected, mask, 1.0)
