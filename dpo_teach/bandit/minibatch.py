"""A plain minibatch DPO loop on the table, the way a language model is trained (notebooks 4b and 4d).

Each step draws a batch of triples (context, chosen, rejected), evaluates ``dpo_teach.losses.dpo_loss`` on the
policy's log-probabilities, takes one Adam step on the logits and logs what TRL's ``DPOTrainer`` logs. The
batches come from a function, so the same loop trains offline (rows of a fixed dataset, :func:`dataset_batches`)
and online (fresh pairs from the current policy labelled by a preference oracle, :func:`online_batches`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from dpo_teach.bandit.data import sample_labelled_pairs
from dpo_teach.bandit.world import as_table, check_beta, check_counts, kl_divergence
from dpo_teach.losses import dpo_loss

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(contexts, chosen, rejected), each (B,) long."""
BatchFn = Callable[[torch.Tensor, torch.Generator], Batch]
"""next_batch(policy (C, K), generator) -> Batch."""

METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "kl")
"""TRL's names for the batch metrics (docs/metrics.md), and the exact mean KL(pi || pi_ref) of the table."""


@dataclass
class MinibatchResult:
    """The final ``policy`` (C, K) and ``history``: for each name of :data:`METRICS`, one value per step.

    Step t's values are measured on its batch before its update (as TRL logs a step); ``kl`` is the exact
    mean over contexts of KL(pi || pi_ref) of the policy the batch was drawn from.
    """

    policy: torch.Tensor
    history: dict[str, list[float]] = field(default_factory=dict)


def dataset_batches(rows: torch.Tensor, batch_size: int) -> BatchFn:
    """Offline data: each batch is ``batch_size`` rows of ``rows`` (N, 3), drawn uniformly with replacement."""
    check_counts(batch_size=batch_size)
    if rows.dim() != 2 or rows.shape[1] != 3 or len(rows) < 1:
        raise ValueError(f"rows must be (N, 3) with N >= 1: (context, chosen, rejected); got {tuple(rows.shape)}")

    def next_batch(policy: torch.Tensor, generator: torch.Generator) -> Batch:
        picked = rows[torch.randint(len(rows), (batch_size,), generator=generator)]  # (B, 3)
        return picked[:, 0], picked[:, 1], picked[:, 2]

    return next_batch


def online_batches(preferences: torch.Tensor, batch_size: int) -> BatchFn:
    """Online data: each batch is fresh pairs from the current policy, labelled by ``preferences`` (C, K, K)."""

    def next_batch(policy: torch.Tensor, generator: torch.Generator) -> Batch:
        return sample_labelled_pairs(preferences, policy, batch_size, generator)

    return next_batch


def minibatch_dpo(
    pi_ref: torch.Tensor,
    beta: float,
    next_batch: BatchFn,
    steps: int,
    learning_rate: float = 0.1,
    weighted: bool = True,
    anneal_lr: bool = True,
    label_smoothing: float = 0.0,
    seed: int = 0,
) -> MinibatchResult:
    """Train a table of logits theta (C, K), pi = softmax(theta), from theta = log pi_ref, by minibatch DPO with Adam.

    Each step minimizes the batch mean of ``dpo_loss`` (DPO Eq. 7; notebook 3, Eq. 3.4; cDPO with
    ``label_smoothing``), whose gradient for one pair is -beta sigma(-beta h) (grad log pi(y_w) - grad log pi(y_l))
    (notebook 4, Eq. 4.1). With ``weighted=False`` it minimizes -beta h instead: the same push without the
    weight sigma(-beta h), the ablation of the DPO paper (Sec. 4, "What does the DPO update do?").
    With ``anneal_lr`` the learning rate falls linearly to ``learning_rate / steps`` (as in ``ppo_solve``), so the
    sampling noise of the last steps fades. Batches and their order come from a generator seeded with ``seed``.
    Shapes: ``pi_ref`` (C, K); ``next_batch`` returns three (B,) long tensors.
    """
    check_beta(beta)
    check_counts(steps=steps)
    pi_ref = as_table("pi_ref", pi_ref)
    # The reference's log-probs go through the same log_softmax as the policy's, so that at step 0 they are
    # equal bit for bit and every logged reward is exactly 0 (log pi_ref itself differs by round-off).
    log_ref = torch.log_softmax(torch.log(pi_ref), -1)  # (C, K)
    theta = torch.log(pi_ref).requires_grad_(True)  # (C, K) policy logits
    optimizer = torch.optim.Adam([theta], lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {name: [] for name in METRICS}
    for step in range(steps):
        if anneal_lr:
            optimizer.param_groups[0]["lr"] = learning_rate * (1.0 - step / steps)
        policy = torch.softmax(theta.detach(), -1)  # (C, K)
        contexts, chosen, rejected = next_batch(policy, generator)  # (B,) each
        log_pi = torch.log_softmax(theta, -1)  # (C, K)
        out = dpo_loss(
            log_pi[contexts, chosen],
            log_pi[contexts, rejected],
            log_ref[contexts, chosen],
            log_ref[contexts, rejected],
            beta=beta,
            label_smoothing=label_smoothing,
        )
        if weighted:
            batch_loss = out.losses.mean()
        else:  # -beta h: gradient -beta (grad log pi(y_w) - grad log pi(y_l)), no sigma(-beta h)
            implicit_margin = beta * (log_pi[contexts, chosen] - log_pi[contexts, rejected])  # + a constant
            batch_loss = -implicit_margin.mean()
        optimizer.zero_grad()
        batch_loss.backward()
        optimizer.step()
        margins = out.chosen_rewards - out.rejected_rewards  # (B,) beta h, detached
        history["loss"].append(out.losses.mean().item())
        history["rewards/chosen"].append(out.chosen_rewards.mean().item())
        history["rewards/rejected"].append(out.rejected_rewards.mean().item())
        history["rewards/accuracies"].append((margins > 0).double().mean().item())
        history["rewards/margins"].append(margins.mean().item())
        history["kl"].append(kl_divergence(policy, pi_ref).mean().item())
    return MinibatchResult(torch.softmax(theta.detach(), -1), history)
