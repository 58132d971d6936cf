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
    so the loss is the cross-entropy against the soft target (1 - eps, eps) and the optimal
    margin is finite, beta h* = log((1 - eps) / eps), even on deterministic preferences.
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
    negative, and on deterministic preferences it is unbounded below: use it on noisy data.
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
    ``chosen_token_counts`` ``(B,)`` the loss is per token, as in RPO and TRL's ``rpo_alpha``.
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
