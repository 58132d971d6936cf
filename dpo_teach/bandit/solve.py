"""Exact minimizers of the preference losses on the table: ``solve``, ``has_finite_minimizer``, ``fit_reward_model``.

``solve`` minimizes any smooth loss of ``dpo_teach.losses`` over a table of softmax logits, using those same
loss functions, so its result can be compared with the closed forms of ``dpo_teach.bandit.optima`` to float64
precision. Newton's method and the existence test are in ``dpo_teach.newton``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.bandit.world import DTYPE, as_pair_table, as_table, as_wins, check_beta
from dpo_teach.losses import get_loss
from dpo_teach.newton import NewtonResult, PairwiseObjective, finite_minimizer_exists, newton_minimize


def off_diagonal_weights(wins: torch.Tensor) -> torch.Tensor:
    """Zero the diagonal of ``wins`` (C, K, K): a response compared with itself says nothing."""
    if (wins < 0).any():
        raise ValueError("wins must be >= 0: wins[c, i, j] is the weight of 'i preferred over j'")
    weights = wins * (1.0 - torch.eye(wins.shape[-1], dtype=DTYPE))
    if weights.sum() <= 0:
        raise ValueError("wins has no weight off the diagonal: there is no comparison to learn from")
    return weights


@dataclass
class SolveResult(NewtonResult):
    """What :func:`solve` found: Newton's result (``theta`` are the logits) and ``policy`` (C, K).

    ``converged`` is True only when Newton's steps shrank below tolerance at a finite point;
    ``message`` says why it stopped.
    """

    policy: torch.Tensor


def solve(
    pi_ref: torch.Tensor,
    wins: torch.Tensor,
    beta: float,
    loss: str = "dpo",
    max_iter: int = 200,
    xtol: float = 1e-11,
    **loss_kwargs,
) -> SolveResult:
    """Minimize a preference loss of ``dpo_teach.losses`` over a table of softmax logits.

    The objective (notebook 3, Eq. 3.5) is the weighted mean over ordered pairs i != j

        L(theta) = sum_{c,i,j} wins[c,i,j] loss(log pi_theta(i|c), log pi_theta(j|c),
                                               log pi_ref(i|c), log pi_ref(j|c)) / sum wins,

    with pi_theta = softmax(theta). ``wins[c, i, j] >= 0`` weighs "i preferred over j": a
    probability matrix such as ``bradley_terry`` gives the population loss, counts from
    ``sample_comparisons`` the finite-data loss. The diagonal (i = j) carries no information
    and is ignored. ``loss_kwargs`` go to the loss (``label_smoothing``, ``gamma``).

    The policy starts at pi_ref and is optimized by Newton's method, with derivatives taken by
    autograd through the loss itself (``dpo_teach.newton``), so converged solutions are exact to
    float64 round-off. When the loss has no finite minimizer (DPO on deterministic preferences:
    pushing pi(y_l) to 0 always lowers it) the result says so: ``converged=False`` and a ``message``
    that the logits diverge. Where the comparison graph of a context falls into several connected
    parts, the minimizer is not unique (each part's logits can be shifted together, notebook 4d);
    ``solve`` returns the one that keeps each part's mean logit where pi_ref put it.

    Shapes: ``pi_ref`` (C, K), ``wins`` (C, K, K).
    """
    check_beta(beta)
    loss_fn = get_loss(loss)
    if loss == "hinge":
        raise ValueError(
            "solve needs a smooth loss: the hinge loss is piecewise linear, so Newton's method has no curvature "
            "to use, and its minimizers are a whole set (every margin beyond 1/beta), with no unique optimum"
        )
    pi_ref = as_table("pi_ref", pi_ref)
    wins = as_pair_table("wins", wins, pi_ref.shape)
    log_ref = torch.log(pi_ref)
    objective = PairwiseObjective(loss_fn, beta, loss_kwargs, log_ref, off_diagonal_weights(wins))
    found = newton_minimize(objective, log_ref.clone(), max_iter=max_iter, xtol=xtol)
    return SolveResult(**vars(found), policy=torch.softmax(found.theta, -1))


def has_finite_minimizer(wins: torch.Tensor, beta: float = 1.0, loss: str = "dpo", **loss_kwargs) -> torch.Tensor:
    """Whether the loss :func:`solve` minimizes attains its minimum, per context; (C, K, K) -> (C,) bool.

    For DPO (and, with ``beta = 1``, the Bradley-Terry MLE of :func:`fit_reward_model`) a minimizer exists
    exactly when, within each connected part of the comparison graph, however its responses are split in
    two, each side was preferred to the other side at least once: the graph of wins is strongly connected
    within every connected part (notebook 1, Sec. 1.5). Otherwise the logits of the side that never lost can
    rise forever while the loss keeps falling. Existence is not uniqueness: with several connected parts,
    each part's logits can be shifted together without changing the loss (Ford's condition proper asks the
    whole graph to be strongly connected, which gives both). IPO and cDPO always have a minimizer. The test
    reads the loss's slopes at infinite margins (``dpo_teach.newton.finite_minimizer_exists``); where those
    cannot decide it (rDPO when some pair wins too rarely the other way) a ValueError says so. pi_ref does not
    matter: it only shifts margins by finite amounts.
    """
    check_beta(beta)
    wins = as_wins(wins)
    flat_reference = torch.zeros(wins.shape[:2], dtype=DTYPE)
    objective = PairwiseObjective(get_loss(loss), beta, loss_kwargs, flat_reference, off_diagonal_weights(wins))
    exists = finite_minimizer_exists(objective)
    if exists is None:
        raise ValueError(
            f"cannot decide whether the {loss!r} loss has a minimizer on these wins: it is unbounded below along "
            "some pair, so existence depends on every cut of the comparison graph; solve() watches the margins instead"
        )
    return exists


def fit_reward_model(
    wins: torch.Tensor, l2: float = 0.0, max_iter: int = 200, xtol: float = 1e-11
) -> tuple[torch.Tensor, NewtonResult]:
    """Bradley-Terry maximum likelihood (notebook 1, Eq. 1.2; DPO Eq. 2), the first stage of RLHF.

        r_hat = argmin_r  -sum_{c,i,j} wins[c,i,j] log sigma(r_i - r_j) / sum wins + (l2 / 2) sum_c |r_c - mean(r_c)|^2

    with mean(r_c) the mean reward of context c, so the ridge never charges for the per-context constant
    that preferences cannot see. This is the DPO loss with beta = 1 and a flat reference, which is why DPO
    and "reward model + closed-form RLHF" agree exactly on tabular data when the MLE exists. Rewards are
    identifiable only up to a constant per context (per connected part of the comparison graph when it
    falls apart); they are returned with mean 0 per context. With ``l2 > 0`` (a ridge, the tabular stand-in
    for a reward model's weight decay) the estimate is finite and unique even where some response never
    lost. The ridge is added to the *mean* loss, so its pull does not fade as data grow; scale it as
    1 / (number of comparisons) for one that does. Without it, a context without a minimizer
    (:func:`has_finite_minimizer`) is reported with ``converged=False`` and nothing is iterated.

    ``wins`` (C, K, K) as in :func:`solve`. Returns ``(reward (C, K), NewtonResult)``.
    """
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    wins = as_wins(wins)
    num_contexts, num_responses, _ = wins.shape
    flat_reference = torch.zeros(num_contexts, num_responses, dtype=DTYPE)
    objective = PairwiseObjective(get_loss("dpo"), 1.0, {}, flat_reference, off_diagonal_weights(wins), l2)
    found = newton_minimize(objective, flat_reference.clone(), max_iter=max_iter, xtol=xtol)
    return found.theta - found.theta.mean(-1, keepdim=True), found
