"""PPO on the table (one-token episodes), with the same ``dpo_teach.rl`` functions that train GPT-2.

Its fixed point is the closed form pi* of ``dpo_teach.bandit.optima.optimal_policy``, so the PPO of the
language-model trainer is checked exactly here first (notebook 7; ``tests/test_bandit_ppo.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.bandit.optima import optimal_policy
from dpo_teach.bandit.world import DTYPE, as_table, check_beta, kl_divergence, total_variation
from dpo_teach.rl import clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards, whiten


@dataclass
class PPOResult:
    """What :func:`ppo_solve` found: the final ``policy`` (C, K) and baseline ``value`` (C,), and exact curves.

    The curves are computed from the policy table, not from samples, and have shape
    ``(iterations + 1, C)``; row 0 is the starting policy pi_ref. ``reward`` is E_pi[r],
    ``kl`` is KL(pi || pi_ref) and ``total_variation`` is TV(pi, pi*) to ``optimal_policy``.
    """

    policy: torch.Tensor
    value: torch.Tensor
    reward: torch.Tensor
    kl: torch.Tensor
    total_variation: torch.Tensor


def ppo_solve(
    pi_ref: torch.Tensor,
    reward: torch.Tensor,
    beta: float,
    iterations: int = 100,
    samples_per_context: int = 128,
    epochs: int = 4,
    minibatches: int = 4,
    clip_range: float = 0.2,
    clip_range_value: float = 0.2,
    vf_coef: float = 0.5,
    learning_rate: float = 0.05,
    anneal_lr: bool = True,
    seed: int = 0,
) -> PPOResult:
    """Maximize the RLHF objective J (notebook 2, Eq. 2.1) by PPO from samples, with ``dpo_teach.rl``.

    The policy is a table of logits theta (C, K), pi = softmax(theta), started at pi_ref; every
    episode is one token long (T = 1). Each iteration, as in the language-model trainer:

    1. sample ``samples_per_context`` responses y ~ pi_old(. | c) per context;
    2. :func:`~dpo_teach.rl.kl_penalized_rewards`: r = reward[c, y] - beta (log pi_old(y|c) - log pi_ref(y|c)),
       a fixed KL coefficient beta; the one-token KL is the exact sequence KL of the sample;
    3. :func:`~dpo_teach.rl.gae` against a tabular baseline V(c), a learned parameter: with T = 1 it gives
       A = r - V(c) and return r whatever gamma and lambda are; the advantages are whitened over the batch;
    4. ``epochs`` passes over ``minibatches`` shuffled minibatches of :func:`~dpo_teach.rl.clipped_policy_loss`
       + ``vf_coef`` * :func:`~dpo_teach.rl.clipped_value_loss`, with Adam.

    In expectation the step follows the gradient of J: E_pi[grad log pi (r - beta log(pi / pi_ref))] is
    grad J, as E_pi[grad log pi] = 0. So PPO's fixed point is the closed form pi* of ``optimal_policy``.
    With a constant step size Adam keeps jittering around it from the sampling noise (TV ~ 0.05-0.1 on
    random instances); the learning rate is therefore annealed linearly to lr / iterations, CleanRL's
    ``anneal_lr`` (Huang et al. 2022, detail 4), which brings TV to pi* below ~0.005 with the defaults.
    Since V and theta are separate tables and Adam rescales each parameter's gradient, ``vf_coef``
    barely matters here; it is kept so the loss is written as the trainer writes it.

    Sampling and minibatch order come from a ``torch.Generator`` seeded with ``seed``, so runs repeat
    exactly. Shapes: ``pi_ref``, ``reward`` (C, K); float64 throughout.
    """
    check_beta(beta)
    pi_ref, reward = as_table("pi_ref", pi_ref), as_table("reward", reward)
    if reward.shape != pi_ref.shape:
        raise ValueError(
            f"reward has shape {tuple(reward.shape)} but pi_ref has {tuple(pi_ref.shape)}; both are (C, K)"
        )
    if iterations < 1 or epochs < 1:
        raise ValueError(f"iterations and epochs must be >= 1, got iterations={iterations}, epochs={epochs}")
    if samples_per_context < 2:
        raise ValueError(f"samples_per_context must be >= 2 (advantages are whitened), got {samples_per_context}")
    num_contexts = pi_ref.shape[0]
    batch_size = num_contexts * samples_per_context
    if not 1 <= minibatches <= batch_size:
        raise ValueError(f"minibatches must be in [1, C * samples_per_context] = [1, {batch_size}], got {minibatches}")
    log_ref = torch.log(pi_ref)  # (C, K)
    target = optimal_policy(pi_ref, reward, beta)  # (C, K)
    theta = log_ref.clone().requires_grad_()  # (C, K) policy logits
    value = torch.zeros(num_contexts, dtype=DTYPE, requires_grad=True)  # (C,) baseline V(c)
    optimizer = torch.optim.Adam([theta, value], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    contexts = torch.arange(num_contexts).repeat_interleave(samples_per_context)  # (B,)
    mask = torch.ones(batch_size, 1, dtype=DTYPE)  # (B, T=1): every episode is one token
    curves = []

    def record() -> None:
        pi = torch.softmax(theta.detach(), -1)  # (C, K)
        curves.append(((pi * reward).sum(-1), kl_divergence(pi, pi_ref), total_variation(pi, target)))

    record()
    for iteration in range(iterations):
        if anneal_lr:
            optimizer.param_groups[0]["lr"] = learning_rate * (1.0 - iteration / iterations)
        with torch.no_grad():
            log_pi_old = torch.log_softmax(theta, -1)  # (C, K)
            responses = torch.multinomial(log_pi_old.exp(), samples_per_context, replacement=True, generator=generator)
            responses = responses.flatten()  # (B,), grouped by context like ``contexts``
            old_logprobs = log_pi_old[contexts, responses][:, None]  # (B, 1)
            ref_logprobs = log_ref[contexts, responses][:, None]  # (B, 1)
            scores = reward[contexts, responses]  # (B,)
            rewards, _ = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef=beta)  # (B, 1)
            old_values = value[contexts][:, None]  # (B, 1)
            advantages, returns = gae(rewards, old_values, mask, gamma=1.0, lam=1.0)  # (B, 1) each
            advantages = whiten(advantages, mask)
        for _ in range(epochs):
            for batch in torch.randperm(batch_size, generator=generator).chunk(minibatches):
                logprobs = torch.log_softmax(theta, -1)[contexts[batch], responses[batch]][:, None]  # (b, 1)
                pg_loss, _ = clipped_policy_loss(
                    logprobs, old_logprobs[batch], advantages[batch], mask[batch], clip_range
                )
                values = value[contexts[batch]][:, None]  # (b, 1)
                v_loss, _ = clipped_value_loss(values, old_values[batch], returns[batch], mask[batch], clip_range_value)
                optimizer.zero_grad()
                (pg_loss + vf_coef * v_loss).backward()
                optimizer.step()
        record()
    reward_curve, kl_curve, tv_curve = (torch.stack(curve) for curve in zip(*curves, strict=True))
    return PPOResult(torch.softmax(theta.detach(), -1), value.detach().clone(), reward_curve, kl_curve, tv_curve)
