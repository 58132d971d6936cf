"""A world where the answer is known: tabular policies over C contexts and K responses.

A policy is a table ``pi`` of shape ``(C, K)`` whose rows sum to 1; a reward is a table ``reward`` of
shape ``(C, K)``; everything is float64 so that checks can be made to 1e-10. The KL-constrained RLHF
objective (notebook 2, Eq. 2.1; DPO paper Eq. 3) has the closed-form maximizer (notebook 2, Eq. 2.2;
DPO paper Eq. 4) pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x), and :func:`solve` finds the
minimizer of any loss of ``dpo_teach.losses`` over a table of softmax logits, using those same loss
functions, so the two can be compared to float64 precision.

Modules: ``world`` (tables, Bradley-Terry, KL, the RLHF objective), ``optima`` (closed forms), ``data``
(finite preference data), ``solve`` (exact minimizers, existence, the reward model), ``minibatch`` (a
plain minibatch DPO loop, offline and online), ``ppo`` (PPO on the table), ``rankings`` (Plackett-Luce).
Every name is importable from ``dpo_teach.bandit`` itself.
"""

from dpo_teach.bandit.data import chosen_policy, comparison_rows, sample_comparisons, sample_labelled_pairs
from dpo_teach.bandit.minibatch import METRICS, MinibatchResult, dataset_batches, minibatch_dpo, online_batches
from dpo_teach.bandit.optima import (
    cdpo_optimal_margin,
    implicit_reward,
    ipo_optimal_policy,
    length_normalized_optimum,
    log_partition_function,
    optimal_policy,
    partition_function,
    project_reward,
)
from dpo_teach.bandit.ppo import PPOResult, ppo_solve
from dpo_teach.bandit.rankings import (
    all_rankings,
    plackett_luce_dpo_loss,
    plackett_luce_log_likelihood,
    plackett_luce_probabilities,
    sample_rankings,
)
from dpo_teach.bandit.solve import SolveResult, fit_reward_model, has_finite_minimizer, solve
from dpo_teach.bandit.world import (
    DTYPE,
    bradley_terry,
    deterministic_preferences,
    kl_divergence,
    random_instance,
    rlhf_objective,
    total_variation,
)

__all__ = [
    "DTYPE",
    "METRICS",
    "MinibatchResult",
    "PPOResult",
    "SolveResult",
    "all_rankings",
    "bradley_terry",
    "cdpo_optimal_margin",
    "chosen_policy",
    "comparison_rows",
    "dataset_batches",
    "deterministic_preferences",
    "fit_reward_model",
    "has_finite_minimizer",
    "implicit_reward",
    "ipo_optimal_policy",
    "kl_divergence",
    "length_normalized_optimum",
    "log_partition_function",
    "minibatch_dpo",
    "online_batches",
    "optimal_policy",
    "partition_function",
    "plackett_luce_dpo_loss",
    "plackett_luce_log_likelihood",
    "plackett_luce_probabilities",
    "ppo_solve",
    "project_reward",
    "random_instance",
    "rlhf_objective",
    "sample_comparisons",
    "sample_labelled_pairs",
    "sample_rankings",
    "solve",
    "total_variation",
]
