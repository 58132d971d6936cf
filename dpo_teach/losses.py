"""The DPO loss family as pure functions of sequence log-probabilities.

Every preference loss takes the same four tensors of shape ``(B,)``

    policy_chosen_logps    log pi_theta(y_w | x)
    policy_rejected_logps  log pi_theta(y_l | x)
    ref_chosen_logps       log pi_ref(y_w | x)
    ref_rejected_logps     log pi_ref(y_l | x)

and ``beta``, and returns a :class:`PreferenceLoss` ``(losses, chosen_rewards, rejected_rewards)``,
each ``(B,)``. The rewards are the detached implicit rewards of DPO Eq. 5,
``r_hat = beta * (log pi_theta - log pi_ref)``.

The same functions train the tabular bandit (a log-prob is an entry of a log-probability table,
``dpo_teach.bandit``) and a language model (a log-prob is a sum, or mean, of completion-token
log-probs). Whether a log-prob is the sum or the per-token mean over the completion is the
caller's choice: DPO, cDPO, rDPO and SLiC use sums (sequence log-likelihoods); IPO is stated for
sequence log-likelihoods too (Azar et al. 2023), though TRL averages per token for it; SimPO is
defined with per-token means. These functions never guess: they use what they are given.

Notation (notebook 3): the log-ratio margin is

    h = (log pi_theta(y_w) - log pi_ref(y_w)) - (log pi_theta(y_l) - log pi_ref(y_l)).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F


class PreferenceLoss(NamedTuple):
    """Per-example losses and detached implicit rewards, each of shape ``(B,)``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


LOGPS_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")


def _check_inputs(logps: tuple[torch.Tensor, ...], beta: float) -> None:
    """Raise ValueError naming the first argument that is not a matching ``(B,)`` tensor."""
    for name, value in zip(LOGPS_NAMES, logps, strict=True):
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B,), got {type(value).__name__}")
    expected = logps[0].shape
    for name, value in zip(LOGPS_NAMES, logps, strict=True):
        if value.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(value.shape)}")
        if value.shape != expected:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)} but policy_chosen_logps has {tuple(expected)}; "
                "all four log-prob tensors must have the same shape (B,)"
            )
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def _check_epsilon(name: str, value: float) -> None:
    if not 0.0 <= value < 0.5:
        raise ValueError(f"{name} must be in [0, 0.5), got {value}")


def _margin_and_rewards(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the log-ratio margin h and the detached implicit rewards, all ``(B,)``."""
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_inputs(logps, beta)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    margin = chosen_logratios - rejected_logratios  # (B,) h
    # DPO Eq. 5: r_hat(x, y) = beta * log(pi_theta(y | x) / pi_ref(y | x)); Z(x) cancels in the margin.
    chosen_rewards = beta * chosen_logratios.detach()
    rejected_rewards = beta * rejected_logratios.detach()
    return margin, chosen_rewards, rejected_rewards


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """DPO loss (Rafailov et al. 2023, Eq. 7; notebook 3, Eq. 3.4), and cDPO (notebook 4, Eq. 4.2).

        loss = -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)

    With ``label_smoothing`` eps = 0 this is DPO, -log sigma(beta h). With eps > 0 it is
    conservative DPO (cDPO, Mitchell 2023): the label is assumed flipped with probability eps,
    so the loss is the cross-entropy against the soft target (1 - eps, eps), and it has a finite
    minimizer on any data, deterministic preferences included. For one pair alone (two responses)
    that minimizer is beta h* = log((1 - eps) / eps) when the preference is deterministic. With more
    responses the pairs share the implicit rewards and cannot all sit there: the margin between far
    apart responses exceeds it (4.28 nats against 2.20 for eps = 0.1 on five deterministically ranked
    responses, notebook 4), and since that is a margin of beta h, the policy ratio is exp(4.28 / beta).
    eps must be in [0, 0.5).
    """
    _check_epsilon("label_smoothing", label_smoothing)
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    logits = beta * margin  # (B,)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """IPO loss (Azar et al. 2023, Eq. 17, with tau = beta; notebook 4, Eq. 4.4).

        loss = (h - 1 / (2 beta))^2

    A regression of the margin onto the target 1/(2 beta) instead of a logistic loss, so the
    optimum stays finite on deterministic preferences. Azar et al. state it for sequence
    log-likelihoods (sums); TRL feeds per-token means. Pass whichever you intend.
    """
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = (margin - 1.0 / (2.0 * beta)) ** 2  # (B,)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def hinge_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> PreferenceLoss:
    """SLiC hinge loss (Zhao et al. 2023, "SLiC-HF"), with the margin written as beta h as in TRL.

        loss = max(0, 1 - beta h)

    Zero once the scaled margin exceeds 1; not differentiable at beta h = 1.
    """
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = torch.relu(1.0 - beta * margin)  # (B,)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def robust_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PreferenceLoss:
    """Robust DPO (rDPO, Chowdhury et al. 2024), unbiased under label flips with rate eps.

        loss = ((1 - eps) (-log sigma(beta h)) - eps (-log sigma(-beta h))) / (1 - 2 eps)

    Its expectation over noisy labels equals the DPO loss on clean labels. Unlike cDPO it can be
    negative, and along a pair whose chosen side won a fraction p > 1 - eps of the time it falls
    forever (its slope at h -> +inf is beta ((1 - eps)(1 - p) - eps p) / (1 - 2 eps) < 0). On a table
    of K responses the loss is unbounded below exactly when some set of responses won more than a
    fraction 1 - eps of its comparisons with the rest (``tests/test_existence.py``): deterministic
    preferences are only the extreme case, Bradley-Terry preferences can do it too (notebook 4). Such a
    set needs a pair beyond 1 - eps, but with more than two responses one such pair is not enough.
    Use it where the data's win rates stay within [eps, 1 - eps].
    eps must be in [0, 0.5).
    """
    _check_epsilon("label_smoothing", label_smoothing)
    margin, chosen_rewards, rejected_rewards = _margin_and_rewards(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    logits = beta * margin  # (B,)
    eps = label_smoothing
    losses = (-(1.0 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1.0 - 2.0 * eps)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def simpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    gamma: float = 0.5,
) -> PreferenceLoss:
    """SimPO loss (Meng et al. 2024): reference-free, length-normalized, target margin gamma.

        loss = -log sigma(beta * (avg log pi(y_w) - avg log pi(y_l)) - gamma)

    Pass per-token mean log-probs as ``policy_*_logps`` (the length normalization). The
    reference log-probs are accepted so that every loss has one signature, and are not used:
    SimPO has no reference model. Its implicit rewards are ``beta * policy_*_logps``.
    ``gamma`` defaults to 0.5, TRL's ``simpo_gamma`` default; the paper tunes it in [0.3, 1.6].
    """
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    _check_inputs(logps, beta)
    chosen_rewards = beta * policy_chosen_logps.detach()
    rejected_rewards = beta * policy_rejected_logps.detach()
    logits = beta * (policy_chosen_logps - policy_rejected_logps) - gamma  # (B,)
    losses = -F.logsigmoid(logits)
    return PreferenceLoss(losses, chosen_rewards, rejected_rewards)


def nll_loss(policy_chosen_logps: torch.Tensor, chosen_token_counts: torch.Tensor | None = None) -> torch.Tensor:
    """The SFT term that can be added to any preference loss (RPO, Pang et al. 2024).

        loss = -log pi_theta(y_w | x) / |y_w|

    ``policy_chosen_logps`` ``(B,)`` are summed completion log-probs; with
    ``chosen_token_counts`` ``(B,)`` the loss is per token of each pair, as in RPO. (TRL 1.16 has no
    ``rpo_alpha``; its ``sft`` loss averages over all chosen tokens of a micro-batch instead.)
    Returns losses ``(B,)``.
    """
    if not isinstance(policy_chosen_logps, torch.Tensor) or policy_chosen_logps.dim() != 1:
        raise ValueError("policy_chosen_logps must be a torch.Tensor of shape (B,)")
    if chosen_token_counts is None:
        return -policy_chosen_logps
    if not isinstance(chosen_token_counts, torch.Tensor):
        raise ValueError(
            f"chosen_token_counts must be a torch.Tensor of shape (B,), got {type(chosen_token_counts).__name__}"
        )
    if chosen_token_counts.shape != policy_chosen_logps.shape:
        raise ValueError(
            f"chosen_token_counts has shape {tuple(chosen_token_counts.shape)} but policy_chosen_logps has "
            f"{tuple(policy_chosen_logps.shape)}"
        )
    if (chosen_token_counts <= 0).any():
        raise ValueError("chosen_token_counts must be positive: an empty completion has no tokens to score")
    return -policy_chosen_logps / chosen_token_counts


def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """-log sigma(r(x, y_w) - r(x, y_l)), the negative log-likelihood of the Bradley-Terry model (notebook 1,
    Eq. 1.2; DPO paper Eq. 2): the reward model's loss. Rewards ``(B,)`` each; returns losses ``(B,)``. It is
    :func:`dpo_loss` with beta = 1 and log-probs replaced by rewards against a zero reference
    (``dpo_teach.bandit.fit_reward_model`` fits the tabular case)."""
    if chosen_rewards.shape != rejected_rewards.shape or chosen_rewards.dim() != 1:
        raise ValueError(
            f"chosen_rewards and rejected_rewards must be (B,) tensors of one shape, got "
            f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}"
        )
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """1 where the chosen completion's reward is higher, 0 where lower, 1/2 on a tie, ``(B,)`` float.

    A tie counts 1/2, so a policy equal to its reference (every implicit reward 0) scores 0.5, chance, and
    not 0 (TRL's ``rewards/accuracies`` counts a tie as 0). Used for DPO's implicit rewards and for the reward
    model's scores alike."""
    return (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()


class UnlikelihoodLoss(NamedTuple):
    """Per-pair losses ``(B,)`` and their two detached terms, each ``(B,)``."""

    losses: torch.Tensor
    chosen_nll: torch.Tensor
    """-(1 / |y_w|) sum_t log pi(y_w,t | x, y_w,<t): per-token NLL of the chosen completion."""
    rejected_unlikelihood: torch.Tensor
    """-(1 / |y_l|) sum_t log(1 - pi(y_l,t | x, y_l,<t)): per-token unlikelihood of the rejected completion."""


LN2 = math.log(2.0)


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012, "Accurately computing log(1 - exp(-|a|))").

    log1p(-exp(x)) where x < -ln 2 (exp(x) < 1/2: no cancellation in 1 - exp(x)), log(-expm1(x)) elsewhere
    (expm1 keeps the digits of a tiny 1 - exp(x)). Each branch is evaluated on inputs safe for it, so the
    branch that is not taken cannot put an inf or NaN into the gradient. x = 0 gives -inf.
    """
    far = x < -LN2
    far_branch = torch.log1p(-torch.exp(torch.where(far, x, -1.0)))
    near_branch = torch.log(-torch.expm1(torch.where(far, -LN2, x)))
    return torch.where(far, far_branch, near_branch)


def unlikelihood_loss(
    policy_chosen_logps: torch.Tensor,
    chosen_token_counts: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float,
) -> UnlikelihoodLoss:
    """The unlikelihood baseline of the DPO paper (Sec. 6), with Welleck et al.'s (2019) token-level term.

        loss = -(1 / |y_w|) sum_t log pi(y_w,t | x, y_w,<t) - alpha (1 / |y_l|) sum_t log(1 - pi(y_l,t | x, y_l,<t))

    ``policy_chosen_logps`` ``(B,)`` are summed chosen log-probs and ``chosen_token_counts`` ``(B,)`` their
    token counts (the first term is :func:`nll_loss`, per token as in SFT); ``rejected_token_logps`` ``(B, T)``
    are the rejected completion's per-token log-probs and ``rejected_mask`` ``(B, T)`` (bool) marks the scored
    ones (``dpo_teach.logprobs.token_logps``); ``alpha >= 0`` weighs the unlikelihood term. Returns an
    :class:`UnlikelihoodLoss`, each field ``(B,)``.

    Why token-level: the sequence-level form, alpha * log(1 - pi(y_l | x)), has no signal. A 30-token
    completion at about -2 nats per token has log pi(y_l | x) ~ -60, so pi(y_l | x) ~ e^-60 ~ 1e-26;
    log(1 - p) ~ -p is 0 in float32 and its gradient -p / (1 - p) ~ 1e-26, so the baseline would be plain SFT
    on the chosen completions. Per token, pi(y_l,t) is often near 1 (a fluent continuation) and the term pushes.

    Stability: log(1 - exp(logp)) by :func:`log1mexp`. A log-prob is first clamped to at most -eps, eps the
    machine epsilon of its dtype (1.2e-7 in float32, 2.2e-16 in float64): a token predicted with probability
    within eps of 1 (a float32 log-prob that rounded to 0) costs -log(eps) (15.9 nats in float32) instead of
    +inf and, like the clamp of 1 - p at 1e-5 in Welleck et al.'s code, passes no gradient. Masked entries
    contribute exactly 0, whatever their value.
    """
    if not isinstance(rejected_token_logps, torch.Tensor) or rejected_token_logps.dim() != 2:
        raise ValueError("rejected_token_logps must be a torch.Tensor of shape (B, T)")
    if not isinstance(rejected_mask, torch.Tensor) or rejected_mask.shape != rejected_token_logps.shape:
        raise ValueError(
            f"rejected_mask must be a tensor of the shape of rejected_token_logps {tuple(rejected_token_logps.shape)}"
        )
    batch_size = rejected_token_logps.shape[0]
    if not isinstance(policy_chosen_logps, torch.Tensor) or policy_chosen_logps.shape != (batch_size,):
        raise ValueError(f"policy_chosen_logps must be a torch.Tensor of shape (B,) = ({batch_size},)")
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    rejected_mask = rejected_mask.bool()
    rejected_token_counts = rejected_mask.sum(dim=-1)  # (B,)
    if (rejected_token_counts == 0).any():
        raise ValueError("rejected_mask: every rejected completion needs at least one scored token")
    chosen_nll = nll_loss(policy_chosen_logps, chosen_token_counts)  # (B,)
    eps = torch.finfo(rejected_token_logps.dtype).eps
    log_one_minus = log1mexp(rejected_token_logps.clamp(max=-eps))  # (B, T) log(1 - pi(y_l,t | x, y_l,<t))
    log_one_minus = torch.where(rejected_mask, log_one_minus, 0.0)
    rejected_unlikelihood = -log_one_minus.sum(dim=-1) / rejected_token_counts  # (B,)
    losses = chosen_nll + alpha * rejected_unlikelihood
    return UnlikelihoodLoss(losses, chosen_nll.detach(), rejected_unlikelihood.detach())


PreferenceLossFn = Callable[..., PreferenceLoss]

PREFERENCE_LOSSES: dict[str, PreferenceLossFn] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "hinge": hinge_loss,
    "robust": robust_loss,
    "simpo": simpo_loss,
}


def get_loss(name: str) -> PreferenceLossFn:
    """Look up a preference loss by name: one of ``PREFERENCE_LOSSES``."""
    try:
        return PREFERENCE_LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(PREFERENCE_LOSSES)}") from None
