"""A world where the answer is known: tabular policies over C contexts and K responses.

A policy is a table ``pi`` of shape ``(C, K)`` whose rows sum to 1; a reward is a table
``reward`` of shape ``(C, K)``. Everything is float64 so that checks can be made to 1e-10.

The KL-constrained RLHF objective (notebook 2, Eq. 2.1; DPO paper Eq. 3)

    J(pi) = E_{y ~ pi}[r(x, y)] - beta KL(pi(. | x) || pi_ref(. | x))

has the closed-form maximizer (notebook 2, Eq. 2.2; DPO paper Eq. 4)

    pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x),

and :func:`solve` finds the minimizer of any loss of ``dpo_teach.losses`` over a table of
softmax logits, using those same loss functions, so the two can be compared to float64 precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.losses import get_loss
from dpo_teach.newton import NewtonResult, PairwiseObjective, finite_minimizer_exists, newton_minimize
from dpo_teach.rl import clipped_policy_loss, clipped_value_loss, gae, kl_penalized_rewards, whiten

DTYPE = torch.float64


def _as_table(name: str, value: torch.Tensor) -> torch.Tensor:
    """Check that ``value`` is a (C, K) tensor and return it as float64."""
    value = torch.as_tensor(value, dtype=DTYPE)
    if value.dim() != 2:
        raise ValueError(f"{name} must have shape (C, K), got {tuple(value.shape)}")
    return value


def _as_pair_table(name: str, value: torch.Tensor, table_shape: torch.Size) -> torch.Tensor:
    """Check that ``value`` is (C, K, K) for a (C, K) table and return it as float64."""
    value = torch.as_tensor(value, dtype=DTYPE)
    num_contexts, num_responses = table_shape
    expected = (num_contexts, num_responses, num_responses)
    if value.shape != expected:
        raise ValueError(f"{name} must have shape (C, K, K) = {expected}, got {tuple(value.shape)}")
    return value


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")


def random_instance(
    num_contexts: int, num_responses: int, seed: int = 0, concentration: float = 1.0, reward_scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random bandit: ``pi_ref ~ Dirichlet(concentration)`` per context, ``reward ~ N(0, reward_scale^2)``.

    Returns ``(pi_ref, reward)``, each ``(C, K)`` float64.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        alphas = torch.full((num_contexts, num_responses), concentration, dtype=DTYPE)
        pi_ref = torch.distributions.Dirichlet(alphas).sample()
        reward = reward_scale * torch.randn(num_contexts, num_responses, dtype=DTYPE)
    return pi_ref, reward


def log_partition_function(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """log Z(x) = log sum_y pi_ref(y | x) exp(r(x, y) / beta), computed stably; shape ``(C,)``."""
    _check_beta(beta)
    pi_ref, reward = _as_table("pi_ref", pi_ref), _as_table("reward", reward)
    return torch.logsumexp(torch.log(pi_ref) + reward / beta, dim=-1)


def partition_function(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """Z(x) = sum_y pi_ref(y | x) exp(r(x, y) / beta) (notebook 2, Eq. 2.3); shape ``(C,)``."""
    return torch.exp(log_partition_function(pi_ref, reward, beta))


def optimal_policy(pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """pi*(y | x) = pi_ref(y | x) exp(r(x, y) / beta) / Z(x) (DPO Eq. 4; notebook 2, Eq. 2.2); ``(C, K)``."""
    _check_beta(beta)
    pi_ref, reward = _as_table("pi_ref", pi_ref), _as_table("reward", reward)
    return torch.softmax(torch.log(pi_ref) + reward / beta, dim=-1)


def implicit_reward(pi: torch.Tensor, pi_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """r_hat(x, y) = beta log(pi(y | x) / pi_ref(y | x)) (DPO Eq. 5; notebook 3, Eq. 3.1); ``(C, K)``.

    For pi = pi* this is r(x, y) - beta log Z(x): the true reward up to a per-context constant.
    """
    _check_beta(beta)
    pi, pi_ref = _as_table("pi", pi), _as_table("pi_ref", pi_ref)
    return beta * (torch.log(pi) - torch.log(pi_ref))


def kl_divergence(pi: torch.Tensor, pi_ref: torch.Tensor) -> torch.Tensor:
    """KL(pi(. | x) || pi_ref(. | x)) = sum_y pi log(pi / pi_ref), with 0 log 0 = 0; shape ``(C,)``."""
    pi, pi_ref = _as_table("pi", pi), _as_table("pi_ref", pi_ref)
    return (torch.xlogy(pi, pi) - torch.xlogy(pi, pi_ref)).sum(-1)


def rlhf_objective(pi: torch.Tensor, pi_ref: torch.Tensor, reward: torch.Tensor, beta: float) -> torch.Tensor:
    """J(pi) = E_pi[r] - beta KL(pi || pi_ref) per context (notebook 2, Eq. 2.1); shape ``(C,)``.

    At the optimum pi* it equals beta log Z(x) (notebook 2, Eq. 2.4).
    """
    _check_beta(beta)
    pi, reward = _as_table("pi", pi), _as_table("reward", reward)
    return (pi * reward).sum(-1) - beta * kl_divergence(pi, pi_ref)


def bradley_terry(reward: torch.Tensor) -> torch.Tensor:
    """P[c, i, j] = sigma(r_i - r_j), the probability that i is preferred to j (notebook 1, Eq. 1.1).

    Shape ``(C, K, K)``; ``P + P^T = 1`` and the diagonal is 1/2.
    """
    reward = _as_table("reward", reward)
    return torch.sigmoid(reward[:, :, None] - reward[:, None, :])


def deterministic_preferences(reward: torch.Tensor) -> torch.Tensor:
    """P[c, i, j] = 1 if r_i > r_j, 0 if r_i < r_j, 1/2 on ties: the beta -> 0 limit of Bradley-Terry.

    Shape ``(C, K, K)``. DPO has no finite minimizer on these (notebook 4).
    """
    reward = _as_table("reward", reward)
    difference = reward[:, :, None] - reward[:, None, :]
    return (difference > 0).to(DTYPE) + 0.5 * (difference == 0).to(DTYPE)


def sample_comparisons(
    preferences: torch.Tensor, sampling_policy: torch.Tensor, num_comparisons: int, seed: int = 0
) -> torch.Tensor:
    """Draw a finite preference dataset: counts ``wins[c, i, j]`` of "i preferred over j".

    For each context, ``num_comparisons`` pairs (y1, y2) are drawn from
    ``sampling_policy(y1) sampling_policy(y2)`` conditioned on y1 != y2 (as DPO's data come from
    pi_ref = pi_SFT), and labelled y1 > y2 with probability ``preferences[c, y1, y2]``.

    Shapes: ``preferences`` (C, K, K), ``sampling_policy`` (C, K); returns (C, K, K) float64 counts.
    """
    preferences = torch.as_tensor(preferences, dtype=DTYPE)
    sampling_policy = _as_table("sampling_policy", sampling_policy)
    num_contexts, num_responses = sampling_policy.shape
    if preferences.shape != (num_contexts, num_responses, num_responses):
        raise ValueError(
            f"preferences must have shape (C, K, K) = {(num_contexts, num_responses, num_responses)}, "
            f"got {tuple(preferences.shape)}"
        )
    if num_comparisons < 1:
        raise ValueError(f"num_comparisons must be >= 1, got {num_comparisons}")
    generator = torch.Generator().manual_seed(seed)
    off_diagonal = 1.0 - torch.eye(num_responses, dtype=DTYPE)
    pair_probs = sampling_policy[:, :, None] * sampling_policy[:, None, :] * off_diagonal  # (C, K, K)
    pair_probs = pair_probs.reshape(num_contexts, -1)
    draws = torch.multinomial(pair_probs, num_comparisons, replacement=True, generator=generator)  # (C, n)
    pair_counts = torch.zeros_like(pair_probs).scatter_add_(1, draws, torch.ones_like(draws, dtype=DTYPE))
    pair_counts = pair_counts.reshape(num_contexts, num_responses, num_responses)  # N[c, y1, y2]
    first_wins = torch.binomial(pair_counts, preferences, generator=generator)  # y1 preferred
    return first_wins + (pair_counts - first_wins).transpose(1, 2)


def ipo_optimal_policy(pi_ref: torch.Tensor, preferences: torch.Tensor, beta: float) -> torch.Tensor:
    """IPO's population optimum when every pair is compared equally often (notebook 4, Eq. 4.5).

    Here P_ij = preferences[c, i, j] and the loss is weighted as in :func:`solve`.

    Minimizing sum_{i != j} P_ij (h_ij - 1/(2 beta))^2 with P_ij + P_ji = 1 is a least-squares
    problem on the complete graph, solved by log(pi / pi_ref)_i = mean_j P_ij / beta + const.
    Shapes: ``pi_ref`` (C, K), ``preferences`` (C, K, K) -> (C, K).
    """
    _check_beta(beta)
    pi_ref = _as_table("pi_ref", pi_ref)
    preferences = _as_pair_table("preferences", preferences, pi_ref.shape)
    return torch.softmax(torch.log(pi_ref) + preferences.mean(-1) / beta, dim=-1)


def cdpo_optimal_margin(preferences: torch.Tensor, label_smoothing: float, beta: float) -> torch.Tensor:
    """cDPO's optimal margin h* on two responses: beta h* = logit((1 - eps) P_01 + eps P_10) (notebook 4, Eq. 4.3).

    With more than two responses the smoothed preferences are no longer Bradley-Terry and the
    optimum has no closed form; :func:`solve` finds it.

    Shape: ``preferences`` (C, 2, 2) -> (C,).
    """
    _check_beta(beta)
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    preferences = torch.as_tensor(preferences, dtype=DTYPE)
    if preferences.dim() != 3 or preferences.shape[1:] != (2, 2):
        raise ValueError(f"preferences must have shape (C, 2, 2), got {tuple(preferences.shape)}")
    smoothed = (1 - label_smoothing) * preferences[:, 0, 1] + label_smoothing * preferences[:, 1, 0]
    return torch.logit(smoothed) / beta


def _off_diagonal_weights(wins: torch.Tensor) -> torch.Tensor:
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
    probability matrix such as :func:`bradley_terry` gives the population loss, counts from
    :func:`sample_comparisons` the finite-data loss. The diagonal (i = j) carries no information
    and is ignored. ``loss_kwargs`` go to the loss (``label_smoothing``, ``gamma``).

    The policy starts at pi_ref and is optimized by Newton's method, with derivatives taken by
    autograd through the loss itself (``dpo_teach.newton``), so converged solutions are exact to
    float64 round-off. When the loss has no finite
    minimizer (DPO on deterministic preferences: pushing pi(y_l) to 0 always lowers it) the
    result says so: ``converged=False`` and a ``message`` that the logits diverge.

    Shapes: ``pi_ref`` (C, K), ``wins`` (C, K, K).
    """
    _check_beta(beta)
    loss_fn = get_loss(loss)
    if loss == "hinge":
        raise ValueError(
            "solve needs a smooth loss: the hinge loss is piecewise linear, so Newton's method has no curvature "
            "to use, and its minimizers are a whole set (every margin beyond 1/beta), with no unique optimum"
        )
    pi_ref = _as_table("pi_ref", pi_ref)
    wins = _as_pair_table("wins", wins, pi_ref.shape)
    log_ref = torch.log(pi_ref)
    objective = PairwiseObjective(loss_fn, beta, loss_kwargs, log_ref, _off_diagonal_weights(wins))
    found = newton_minimize(objective, log_ref.clone(), max_iter=max_iter, xtol=xtol)
    return SolveResult(**vars(found), policy=torch.softmax(found.theta, -1))


def has_finite_minimizer(wins: torch.Tensor, beta: float = 1.0, loss: str = "dpo", **loss_kwargs) -> torch.Tensor:
    """Whether the loss :func:`solve` minimizes attains its minimum, per context; (C, K, K) -> (C,) bool.

    For DPO (and, with ``beta = 1``, the Bradley-Terry MLE of :func:`fit_reward_model`) this is
    Ford's condition (notebook 1): however the responses of a connected part of the comparison graph
    are split in two, each side was preferred to the other side at least once. Otherwise the
    logits of the side that never lost can rise forever while the loss keeps falling. IPO and cDPO
    always have a minimizer. The test reads the loss's slopes at infinite margins
    (``dpo_teach.newton.finite_minimizer_exists``); where those cannot decide it (rDPO with a pair
    that wins too rarely the other way) a ValueError says so. pi_ref does not matter: it only
    shifts margins by finite amounts.
    """
    _check_beta(beta)
    wins = torch.as_tensor(wins, dtype=DTYPE)
    if wins.dim() != 3 or wins.shape[1] != wins.shape[2]:
        raise ValueError(f"wins must have shape (C, K, K), got {tuple(wins.shape)}")
    flat_reference = torch.zeros(wins.shape[:2], dtype=DTYPE)
    objective = PairwiseObjective(get_loss(loss), beta, loss_kwargs, flat_reference, _off_diagonal_weights(wins))
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
    """Bradley-Terry maximum likelihood (notebook 1, Eq. 1.2), the first stage of RLHF.

        r_hat = argmin_r  -sum_{c,i,j} wins[c,i,j] log sigma(r_i - r_j) / sum wins + (l2 / 2) |r|^2

    This is the DPO loss with beta = 1 and a flat reference, which is why DPO and "reward model +
    closed-form RLHF" agree exactly on tabular data when the MLE exists. Rewards are
    identifiable only up to a constant per context; they are returned with mean 0 per context.
    With ``l2 > 0`` (a ridge, the tabular stand-in for a reward model's weight decay) the estimate
    is finite even where some response never lost. The ridge is added to the *mean* loss, so its
    pull does not fade as data grow; scale it as 1 / (number of comparisons) for one that does.
    Without it, a context that fails Ford's condition (:func:`has_finite_minimizer`) is reported
    with ``converged=False`` and nothing is iterated.

    ``wins`` (C, K, K) as in :func:`solve`. Returns ``(reward (C, K), NewtonResult)``.
    """
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    wins = torch.as_tensor(wins, dtype=DTYPE)
    if wins.dim() != 3 or wins.shape[1] != wins.shape[2]:
        raise ValueError(f"wins must have shape (C, K, K), got {tuple(wins.shape)}")
    num_contexts, num_responses, _ = wins.shape
    flat_reference = torch.zeros(num_contexts, num_responses, dtype=DTYPE)
    objective = PairwiseObjective(get_loss("dpo"), 1.0, {}, flat_reference, _off_diagonal_weights(wins), l2)
    found = newton_minimize(objective, flat_reference.clone(), max_iter=max_iter, xtol=xtol)
    return found.theta - found.theta.mean(-1, keepdim=True), found


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """TV(p, q) = (1/2) sum_y |p(y) - q(y)| per context; shape ``(C,)``."""
    return 0.5 * (_as_table("p", p) - _as_table("q", q)).abs().sum(-1)


@dataclass
class PPOResult:
    """What :func:`ppo_solve` found: the final ``policy`` (C, K) and baseline ``value`` (C,), and exact curves.

    The curves are computed from the policy table, not from samples, and have shape
    ``(iterations + 1, C)``; row 0 is the starting policy pi_ref. ``reward`` is E_pi[r],
    ``kl`` is KL(pi || pi_ref) and ``total_variation`` is TV(pi, pi*) to :func:`optimal_policy`.
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
    grad J, as E_pi[grad log pi] = 0. So PPO's fixed point is the closed form pi* of :func:`optimal_policy`.
    With a constant step size Adam keeps jittering around it from the sampling noise (TV ~ 0.05-0.1 on
    random instances); the learning rate is therefore annealed linearly to lr / iterations, CleanRL's
    ``anneal_lr`` (Huang et al. 2022, detail 4), which brings TV to pi* below ~0.005 with the defaults.
    Since V and theta are separate tables and Adam rescales each parameter's gradient, ``vf_coef``
    barely matters here; it is kept so the loss is written as the trainer writes it.

    Sampling and minibatch order come from a ``torch.Generator`` seeded with ``seed``, so runs repeat
    exactly. Shapes: ``pi_ref``, ``reward`` (C, K); float64 throughout.
    """
    _check_beta(beta)
    pi_ref, reward = _as_table("pi_ref", pi_ref), _as_table("reward", reward)
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
