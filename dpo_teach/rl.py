"""The math of PPO for language models, as pure functions of per-token tensors (torch only).

A completion of T tokens is one episode: the policy acts once per token, the environment pays
nothing until the end, where a reward model (or the ground truth) scores the whole sequence.
Token tensors are ``(B, T)`` over completion positions, with a ``mask`` ``(B, T)`` that is 1 on
real completion tokens and 0 on padding after the end. The pieces, in the order a trainer uses them:

- :func:`kl_penalized_rewards`: per-token reward -beta (log pi - log pi_ref) plus the sequence
  score at the last token (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences", Eq. 2;
  Stiennon et al. 2020). The controllers :class:`FixedKLController` and
  :class:`AdaptiveKLController` choose the coefficient (Ziegler et al. 2019, Sec. 2.2).
- :func:`gae`: generalized advantage estimation (Schulman et al. 2016, Eq. 16), and :func:`whiten`.
- :func:`clipped_policy_loss` and :func:`clipped_value_loss`: PPO's clipped surrogate (Schulman
  et al. 2017, Eq. 7) and the clipped value loss of the reference implementations.
- :func:`entropy_from_logits`, :func:`explained_variance`: diagnostics.

Implementation details follow CleanRL's ppo.py and TRL's classic PPOTrainer, as catalogued by
Huang et al. 2022, "The 37 Implementation Details of Proximal Policy Optimization" (ICLR blog
track) and Huang et al. 2024, "The N Implementation Details of RLHF with PPO". The same functions
train the tabular bandit (``dpo_teach.bandit.ppo_solve``, T = 1) and GPT-2 (``dpo_teach.train.ppo``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dpo_teach.errors import require


def _check_tokens(mask: Tensor, **tensors: Tensor) -> Tensor:
    """Check every tensor has the shape of ``mask``; return the mask as a float tensor of their dtype."""
    dtype = next(iter(tensors.values())).dtype
    for name, value in tensors.items():
        require(
            value.shape == mask.shape,
            name,
            f"shape {tuple(value.shape)} does not match mask {tuple(mask.shape)}; token tensors are (B, T)",
        )
    return mask.to(dtype if dtype.is_floating_point else torch.float32)


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``values`` over entries where ``mask`` is nonzero; over all of them, or along ``dim``."""
    mask = _check_tokens(mask, values=values)
    if dim is None:
        return (values * mask).sum() / mask.sum()
    return (values * mask).sum(dim) / mask.sum(dim)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``values`` over masked-in entries; ``unbiased`` applies Bessel's n / (n - 1), as TRL does."""
    mask = _check_tokens(mask, values=values)
    count = mask.sum()
    require(count >= (2 if unbiased else 1), "mask", f"has {int(count)} entries, too few for a variance")
    variance = masked_mean((values - masked_mean(values, mask)) ** 2, mask)
    return variance * count / (count - 1) if unbiased else variance


def whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """(values - mean) / sqrt(var + 1e-8) over masked-in entries; ``(B, T) -> (B, T)``, masked-out entries 0.

    With ``shift_mean=False`` the mean is added back, so only the scale changes (TRL does this to rewards).
    """
    mask = _check_tokens(mask, values=values)
    mean, variance = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def kl_penalized_rewards(
    scores: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float
) -> tuple[Tensor, Tensor]:
    """Per-token rewards of RLHF: r_t = -beta kl_t, plus the sequence score at the last real token.

        kl_t = log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)       (k1, masked to 0)
        r_t  = -kl_coef * kl_t + [t = last token of row b] * scores[b]    (Ziegler et al. 2019, Eq. 2)

    Summed over t, sum_t r_t = score - beta log(pi(y | x) / pi_ref(y | x)), whose expectation is the
    KL-regularized objective of DPO Eq. 3. Shapes: ``scores`` (B,), the rest (B, T); returns
    ``(rewards, kl)``, each (B, T).
    """
    mask = _check_tokens(mask, logprobs=logprobs, ref_logprobs=ref_logprobs)
    require(scores.shape == mask.shape[:1], "scores", f"shape {tuple(scores.shape)}, expected (B,) = {mask.shape[:1]}")
    empty = (mask.sum(1) == 0).nonzero().flatten().tolist()
    require(not empty, "mask", f"rows {empty} have no completion token to carry the score")
    kl = (logprobs - ref_logprobs) * mask  # (B, T)
    rewards = -kl_coef * kl  # (B, T)
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)  # (T,)
    last = (positions * (mask > 0)).argmax(1)  # (B,) index of the last masked-in position
    rewards = rewards.scatter_add(1, last[:, None], scores[:, None].to(rewards.dtype))
    return rewards, kl


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, Eqs. 11-16); returns ``(advantages, returns)``.

        delta_t = r_t + gamma m_{t+1} V_{t+1} - V_t
        A_t     = delta_t + gamma lam m_{t+1} A_{t+1},      returns_t = A_t + V_t

    After the last real token the episode has ended, so its value is 0 (the m_{t+1} factor).
    lam = 1 gives Monte-Carlo returns, lam = 0 one-step TD errors. Gradients flow if the inputs
    carry them; trainers pass detached tensors. All shapes (B, T); masked-out entries are 0.
    """
    mask = _check_tokens(mask, rewards=rewards, values=values)
    next_value = next_advantage = next_mask = torch.zeros_like(values[:, 0])  # (B,)
    advantages_reversed = []
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_mask * next_value - values[:, t]  # (B,)
        advantage = (delta + gamma * lam * next_mask * next_advantage) * mask[:, t]  # (B,)
        advantages_reversed.append(advantage)
        next_value, next_advantage, next_mask = values[:, t], advantage, mask[:, t]
    advantages = torch.stack(advantages_reversed[::-1], dim=1)  # (B, T)
    return advantages, (advantages + values) * mask


def clipped_policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's clipped surrogate objective, as a loss (Schulman et al. 2017, Eq. 7; CleanRL's ppo.py).

        ratio_t = pi(y_t) / pi_old(y_t)
        loss    = mean_t max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps))

    Returns ``(loss, stats)``: a scalar and the detached scalars ``clipfrac`` (fraction of tokens
    where the clipped term is active, so its gradient is 0) and ``approx_kl`` (k3 estimate of
    KL(pi_old || pi)). Shapes (B, T).
    """
    mask = _check_tokens(mask, logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    require(clip_range > 0, "clip_range", f"must be > 0, got {clip_range}")
    logratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(logratio)  # (B, T)
    pg_loss1 = -advantages * ratio  # (B, T)
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)  # (B, T)
    loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).to(mask.dtype), mask)
        # k3 estimator, http://joschu.net/blog/kl-approx.html
        approx_kl = masked_mean((ratio - 1.0) - logratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def clipped_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range_value: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped value loss of PPO's reference implementations (Huang et al. 2022, detail 9; CleanRL).

        v_clipped = V_old + clip(V - V_old, -eps, eps)
        loss      = 0.5 mean_t max((V - R)^2, (v_clipped - R)^2)

    Returns ``(loss, stats)`` with the detached scalar ``value_clipfrac``. Shapes (B, T).
    """
    mask = _check_tokens(mask, values=values, old_values=old_values, returns=returns)
    require(clip_range_value > 0, "clip_range_value", f"must be > 0, got {clip_range_value}")
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)  # (B, T)
    v_loss_unclipped = (values - returns) ** 2  # (B, T)
    v_loss_clipped = (v_clipped - returns) ** 2  # (B, T)
    loss = 0.5 * masked_mean(torch.max(v_loss_unclipped, v_loss_clipped), mask)
    with torch.no_grad():
        value_clipfrac = masked_mean((v_loss_clipped > v_loss_unclipped).to(mask.dtype), mask)
    return loss, {"value_clipfrac": value_clipfrac}


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits): H = logsumexp(z) - sum_v softmax(z)_v z_v; ``(..., V) -> (...)``.

    Half-precision logits are upcast to float32 first, as the softmax of large logits needs it.
    """
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    probs = torch.softmax(logits, dim=-1)  # (..., V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(-1)


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> float:
    """1 - Var[returns - values] / Var[returns] over masked-in entries (CleanRL's diagnostic).

    1 means the value head predicts the returns, 0 that it does no better than their mean,
    negative that it does worse; nan when the returns do not vary.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    if var_returns == 0:
        return math.nan
    return float(1.0 - masked_var(returns - values, mask, unbiased=False) / var_returns)


class FixedKLController:
    """A constant KL coefficient beta; :meth:`update` does nothing."""

    def __init__(self, kl_coef: float) -> None:
        require(kl_coef >= 0, "kl_coef", f"must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, num_steps: int) -> None:
        """Keep the coefficient (the signature matches :class:`AdaptiveKLController`)."""

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Steer beta so that the measured KL approaches ``target`` (Ziegler et al. 2019, Sec. 2.2), optionally ahead.

        KL^   = KL                                                     (lookahead = 0: Ziegler et al.)
              = the least-squares line through the last ``window`` KLs, read ``lookahead`` updates ahead
        e     = clip(KL^ / target - 1, -0.2, 0.2)
        beta <- beta (1 + e * num_steps / horizon)

    ``num_steps`` is how many samples (episodes) the measured KL came from, as in TRL's classic PPO.

    The lookahead is for runs too short to settle. The policy starts at the reference (KL 0), so at first the KL
    is below target whatever beta is; Ziegler et al.'s controller keeps cutting beta while the policy travels, and
    by the time the KL reaches the target beta is several times too small and the KL overshoots (integral windup).
    Reading the KL's trend ahead stops the cuts sooner and raises beta before the KL has gone far past the target.
    With fewer than 3 KLs the line is not fitted (KL^ = KL).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int, lookahead: int = 0, window: int = 16) -> None:
        require(init_kl_coef > 0, "init_kl_coef", f"must be > 0, got {init_kl_coef}")
        require(target > 0, "target", f"must be > 0, got {target}")
        require(horizon > 0, "horizon", f"must be > 0, got {horizon}")
        require(lookahead >= 0, "lookahead", f"must be >= 0, got {lookahead}")
        require(window >= 3, "window", f"must be >= 3 (a line through at least 3 KLs), got {window}")
        self.value, self.target, self.horizon = float(init_kl_coef), float(target), int(horizon)
        self.lookahead, self.window = int(lookahead), int(window)
        self.recent_kls: list[float] = []

    def predicted_kl(self) -> float:
        """KL^, after at least one update: the last KL, or with a lookahead the line through the recent KLs, ahead."""
        kls = self.recent_kls
        if self.lookahead == 0 or len(kls) < 3:
            return kls[-1]
        steps = torch.arange(len(kls), dtype=torch.float64)
        values = torch.tensor(kls, dtype=torch.float64)
        centred = steps - steps.mean()
        slope = (centred * (values - values.mean())).sum() / (centred**2).sum()
        return float(values.mean() + slope * (centred[-1] + self.lookahead))

    def update(self, current_kl: float, num_steps: int) -> None:
        self.recent_kls = (self.recent_kls + [float(current_kl)])[-self.window :]
        proportional_error = min(max(self.predicted_kl() / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * num_steps / self.horizon

    def state_dict(self) -> dict:
        return {
            "value": self.value, "target": self.target, "horizon": self.horizon, "lookahead": self.lookahead,
            "window": self.window, "recent_kls": list(self.recent_kls),
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.value, self.target, self.horizon = float(state["value"]), float(state["target"]), int(state["horizon"])
        # a checkpoint from before the lookahead existed holds none of these: its controller read the last KL, and
        # resuming already checked that the run's settings (kl_lookahead, kl_window) are those it was saved with
        self.lookahead = int(state.get("lookahead", self.lookahead))
        self.window = int(state.get("window", self.window))
        self.recent_kls = [float(kl) for kl in state.get("recent_kls", [])]
