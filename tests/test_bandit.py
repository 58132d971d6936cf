"""Tests of dpo_teach.bandit: the closed-form RLHF optimum against naive loops and its identities, and
solve() against that optimum (the acceptance: max |pi - pi*| <= 1e-8, |J(pi*) - beta log Z| <= 1e-10),
against the IPO and cDPO optima, and against independent optimizers written here from scratch.

Tolerances: closed forms recomputed with ``math`` agree to round-off (``atol=1e-12`` or tighter);
solver results are held to the acceptance (1e-8 on probabilities); an independent L-BFGS run is
held to 1e-6 (its own stopping tolerance limits it); sampling checks allow 5 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dpo_teach import bandit

DTYPE = torch.float64
BETAS = (0.1, 0.5, 1.0, 5.0)
SMALL_SIZES = ((5, 3), (20, 10))
ACCEPTANCE = {"atol": 1e-8, "rtol": 0.0}  # max |pi - pi*|, the target of `dpo-teach bandit`
TIGHT = {"atol": 1e-14, "rtol": 1e-12}  # the same closed form computed two ways


def _naive_optimum(pi_ref, reward, beta):
    """pi*(y|x) = pi_ref(y|x) exp(r(x,y)/beta) / Z(x) and Z(x), by loops over contexts and responses."""
    num_contexts, num_responses = pi_ref.shape
    policy = torch.zeros(num_contexts, num_responses, dtype=DTYPE)
    partition = torch.zeros(num_contexts, dtype=DTYPE)
    for c in range(num_contexts):
        unnormalized = [pi_ref[c, y].item() * math.exp(reward[c, y].item() / beta) for y in range(num_responses)]
        partition[c] = sum(unnormalized)
        for y in range(num_responses):
            policy[c, y] = unnormalized[y] / partition[c]
    return policy, partition


@pytest.mark.parametrize("beta", BETAS)
def test_optimal_policy_and_partition_match_naive_loop(beta):
    """optimal_policy and partition_function equal DPO Eq. 4 computed naively; rows sum to 1."""
    pi_ref, reward = bandit.random_instance(4, 5, seed=1)
    expected_policy, expected_partition = _naive_optimum(pi_ref, reward, beta)
    policy = bandit.optimal_policy(pi_ref, reward, beta)
    torch.testing.assert_close(policy, expected_policy, atol=1e-14, rtol=1e-12)
    torch.testing.assert_close(policy.sum(-1), torch.ones(4, dtype=DTYPE), atol=1e-14, rtol=0.0)
    torch.testing.assert_close(bandit.partition_function(pi_ref, reward, beta), expected_partition, atol=0, rtol=1e-12)
    log_partition = bandit.log_partition_function(pi_ref, reward, beta)
    torch.testing.assert_close(log_partition, expected_partition.log(), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
def test_implicit_reward_of_optimum_is_reward_minus_log_partition(beta):
    """implicit_reward(pi*, pi_ref, beta) = r(x, y) - beta log Z(x) (DPO Eq. 5)."""
    pi_ref, reward = bandit.random_instance(6, 4, seed=2)
    optimum = bandit.optimal_policy(pi_ref, reward, beta)
    expected = reward - beta * bandit.log_partition_function(pi_ref, reward, beta)[:, None]
    torch.testing.assert_close(bandit.implicit_reward(optimum, pi_ref, beta), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("seed", range(3))
def test_rlhf_objective_at_optimum_and_gibbs_identity(beta, seed):
    """J(pi*) = beta log Z to 1e-10; for random pi, J(pi) = beta log Z - beta KL(pi || pi*) <= J(pi*)."""
    pi_ref, reward = bandit.random_instance(8, 6, seed=seed)
    optimum = bandit.optimal_policy(pi_ref, reward, beta)
    best = beta * bandit.log_partition_function(pi_ref, reward, beta)
    torch.testing.assert_close(bandit.rlhf_objective(optimum, pi_ref, reward, beta), best, atol=1e-10, rtol=0.0)
    other, _ = bandit.random_instance(8, 6, seed=100 + seed)
    objective = bandit.rlhf_objective(other, pi_ref, reward, beta)
    gibbs = best - beta * bandit.kl_divergence(other, optimum)
    torch.testing.assert_close(objective, gibbs, atol=1e-10, rtol=0.0)
    assert (objective <= best + 1e-12).all()


def test_kl_divergence_matches_loop_and_handles_zeros():
    """KL(pi || pi_ref) = sum pi log(pi / pi_ref) with 0 log 0 = 0, also where pi_ref is 0."""
    pi = torch.tensor([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=DTYPE)
    pi_ref = torch.tensor([[0.25, 0.25, 0.5], [1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], dtype=DTYPE)
    # by hand: row 0 = 2 * 0.5 log 2 = log 2; row 1 = 1 log 1 = 0
    expected = [
        math.log(2.0),
        0.0,
        sum(p * math.log(p / q) for p, q in zip([0.2, 0.3, 0.5], [0.5, 0.25, 0.25], strict=True)),
    ]
    torch.testing.assert_close(bandit.kl_divergence(pi, pi_ref), torch.tensor(expected, dtype=DTYPE), **TIGHT)
    torch.testing.assert_close(bandit.kl_divergence(pi, pi), torch.zeros(3, dtype=DTYPE), atol=0.0, rtol=0.0)


def test_bradley_terry():
    """P + P^T = 1, the diagonal is exactly 1/2 and P[c, i, j] = 1 / (1 + exp(r_j - r_i))."""
    _, reward = bandit.random_instance(3, 4, seed=3, reward_scale=2.0)
    preferences = bandit.bradley_terry(reward)
    assert preferences.shape == (3, 4, 4)
    torch.testing.assert_close(preferences + preferences.transpose(1, 2), torch.ones(3, 4, 4, dtype=DTYPE), **TIGHT)
    torch.testing.assert_close(torch.diagonal(preferences, dim1=1, dim2=2), torch.full((3, 4), 0.5, dtype=DTYPE))
    for c in range(3):
        for i in range(4):
            for j in range(4):
                expected = 1 / (1 + math.exp(reward[c, j].item() - reward[c, i].item()))
                assert abs(preferences[c, i, j].item() - expected) <= 1e-15


def test_deterministic_preferences_with_ties():
    """1 where r_i > r_j, 0 where r_i < r_j, 1/2 on ties and on the diagonal."""
    reward = torch.tensor([[1.0, 2.0, 1.0]], dtype=DTYPE)
    expected = torch.tensor([[[0.5, 0.0, 0.5], [1.0, 0.5, 1.0], [0.5, 0.0, 0.5]]], dtype=DTYPE)
    torch.testing.assert_close(bandit.deterministic_preferences(reward), expected, atol=0.0, rtol=0.0)


def _policy_error(result, optimum) -> float:
    return (result.policy - optimum).abs().max().item()


@pytest.mark.parametrize("size", SMALL_SIZES)
@pytest.mark.parametrize("beta", BETAS)
def test_dpo_on_bradley_terry_recovers_optimal_policy(size, beta):
    """Acceptance: DPO on population BT preferences reaches pi* to 1e-8 and J(pi) = beta log Z to 1e-10."""
    pi_ref, reward = bandit.random_instance(*size, seed=sum(size))
    result = bandit.solve(pi_ref, bandit.bradley_terry(reward), beta)
    assert result.converged, result.message
    torch.testing.assert_close(result.policy, bandit.optimal_policy(pi_ref, reward, beta), **ACCEPTANCE)
    best = beta * bandit.log_partition_function(pi_ref, reward, beta)
    torch.testing.assert_close(bandit.rlhf_objective(result.policy, pi_ref, reward, beta), best, atol=1e-10, rtol=0)


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_acceptance_large_instance(beta):
    """Acceptance at C=100, K=50: DPO reaches pi* to 1e-8 and J(pi) = beta log Z to 1e-10."""
    pi_ref, reward = bandit.random_instance(100, 50, seed=0)
    result = bandit.solve(pi_ref, bandit.bradley_terry(reward), beta)
    assert result.converged, result.message
    torch.testing.assert_close(result.policy, bandit.optimal_policy(pi_ref, reward, beta), **ACCEPTANCE)
    best = beta * bandit.log_partition_function(pi_ref, reward, beta)
    torch.testing.assert_close(bandit.rlhf_objective(result.policy, pi_ref, reward, beta), best, atol=1e-10, rtol=0)


@pytest.mark.parametrize("size", SMALL_SIZES)
@pytest.mark.parametrize("beta", BETAS)
def test_ipo_reaches_closed_form(size, beta):
    """IPO on population BT preferences reaches ipo_optimal_policy to 1e-8."""
    pi_ref, reward = bandit.random_instance(*size, seed=7)
    preferences = bandit.bradley_terry(reward)
    result = bandit.solve(pi_ref, preferences, beta, loss="ipo")
    assert result.converged, result.message
    torch.testing.assert_close(result.policy, bandit.ipo_optimal_policy(pi_ref, preferences, beta), **ACCEPTANCE)


def _log_ratio_margins(theta, pi_ref):
    """h[c, i, j] = log(pi_i / ref_i) - log(pi_j / ref_j) with pi = softmax(theta); (C, K, K)."""
    log_ratio = F.log_softmax(theta, -1) - pi_ref.log()  # (C, K)
    return log_ratio[:, :, None] - log_ratio[:, None, :]


def _off_diagonal(weights):
    return weights * (1 - torch.eye(weights.shape[-1], dtype=DTYPE))


def _cdpo_population_loss(theta, pi_ref, preferences, beta, eps):
    """sum_{c, i != j} P_cij (-(1 - eps) log sigma(beta h_ij) - eps log sigma(-beta h_ij)) / sum P, from scratch."""
    logits = beta * _log_ratio_margins(theta, pi_ref)
    weights = _off_diagonal(preferences)
    per_pair = -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)
    return (weights * per_pair).sum() / weights.sum()


def _robust_population_loss(theta, pi_ref, preferences, beta, eps):
    """The rDPO population loss: ((1 - eps) l(beta h) - eps l(-beta h)) / (1 - 2 eps), l = -log sigma, from scratch."""
    logits = beta * _log_ratio_margins(theta, pi_ref)
    weights = _off_diagonal(preferences)
    per_pair = (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)
    return (weights * per_pair).sum() / weights.sum()


def _simpo_population_loss(theta, pi_ref, preferences, beta, gamma):
    """The SimPO population loss -log sigma(beta (log pi_i - log pi_j) - gamma), no reference, from scratch."""
    log_pi = F.log_softmax(theta, -1)
    logits = beta * (log_pi[:, :, None] - log_pi[:, None, :]) - gamma
    weights = _off_diagonal(preferences)
    return (weights * -F.logsigmoid(logits)).sum() / weights.sum()


def _gradient(population_loss, theta, *args):
    theta = theta.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(population_loss(theta, *args), theta)
    return gradient


@pytest.mark.parametrize("beta", BETAS)
def test_cdpo_two_responses_reaches_optimal_margin(beta):
    """cDPO (eps = 0.1) on K = 2: beta h* = logit((1 - eps) P_01 + eps P_10), to 1e-8."""
    eps = 0.1
    pi_ref, reward = bandit.random_instance(20, 2, seed=4, reward_scale=2.0)
    preferences = bandit.bradley_terry(reward)
    result = bandit.solve(pi_ref, preferences, beta, label_smoothing=eps)
    assert result.converged, result.message
    log_ratio = result.policy.log() - pi_ref.log()
    margin = log_ratio[:, 0] - log_ratio[:, 1]
    torch.testing.assert_close(margin, bandit.cdpo_optimal_margin(preferences, eps, beta), **ACCEPTANCE)
    smoothed = (1 - eps) * torch.sigmoid(reward[:, 0] - reward[:, 1]) + eps * torch.sigmoid(reward[:, 1] - reward[:, 0])
    torch.testing.assert_close(margin, torch.log(smoothed / (1 - smoothed)) / beta, **ACCEPTANCE)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_cdpo_many_responses_matches_independent_lbfgs(beta):
    """cDPO (eps = 0.1) on K = 5 agrees with L-BFGS on a from-scratch population loss to 1e-6, gradient ~ 0."""
    eps = 0.1
    pi_ref, reward = bandit.random_instance(4, 5, seed=5)
    preferences = bandit.bradley_terry(reward)
    result = bandit.solve(pi_ref, preferences, beta, label_smoothing=eps)
    assert result.converged, result.message

    theta = pi_ref.log().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=2000, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        optimizer.zero_grad()
        value = _cdpo_population_loss(theta, pi_ref, preferences, beta, eps)
        value.backward()
        return value

    optimizer.step(closure)
    independent = torch.softmax(theta.detach(), -1)
    torch.testing.assert_close(result.policy, independent, atol=1e-6, rtol=0.0)
    gradient = _gradient(_cdpo_population_loss, result.theta, pi_ref, preferences, beta, eps)
    assert gradient.abs().max().item() <= 1e-12


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_robust_converges_to_stationary_point(beta):
    """rDPO (eps = 0.1) on BT preferences with P in (eps, 1 - eps) converges where a from-scratch gradient is ~0."""
    eps = 0.1
    pi_ref, reward = bandit.random_instance(5, 4, seed=6, reward_scale=0.5)
    preferences = bandit.bradley_terry(reward)
    assert ((preferences > eps) & (preferences < 1 - eps)).all()  # otherwise rDPO is unbounded below
    result = bandit.solve(pi_ref, preferences, beta, loss="robust", label_smoothing=eps)
    assert result.converged, result.message
    assert result.grad_norm <= 1e-12
    gradient = _gradient(_robust_population_loss, result.theta, pi_ref, preferences, beta, eps)
    assert gradient.abs().max().item() <= 1e-12


def test_robust_two_responses_reaches_denoised_margin():
    """rDPO on K = 2 reaches beta h* = logit((P - eps) / (1 - 2 eps)), the DPO optimum on denoised labels, to 1e-8."""
    eps, beta = 0.2, 0.5
    pi_ref, reward = bandit.random_instance(10, 2, seed=8, reward_scale=0.3)
    preferences = bandit.bradley_terry(reward)
    assert ((preferences > eps) & (preferences < 1 - eps)).all()  # otherwise rDPO is unbounded below
    result = bandit.solve(pi_ref, preferences, beta, loss="robust", label_smoothing=eps)
    assert result.converged, result.message
    log_ratio = result.policy.log() - pi_ref.log()
    denoised = (preferences[:, 0, 1] - eps) / (1 - 2 * eps)
    torch.testing.assert_close(log_ratio[:, 0] - log_ratio[:, 1], torch.logit(denoised) / beta, **ACCEPTANCE)


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_simpo_converges_to_stationary_point(beta):
    """SimPO (gamma = 0.5) converges where a from-scratch autograd gradient of its population loss is ~0."""
    pi_ref, reward = bandit.random_instance(5, 4, seed=9)
    preferences = bandit.bradley_terry(reward)
    result = bandit.solve(pi_ref, preferences, beta, loss="simpo", gamma=0.5)
    assert result.converged, result.message
    assert result.grad_norm <= 1e-12
    gradient = _gradient(_simpo_population_loss, result.theta, pi_ref, preferences, beta, 0.5)
    assert gradient.abs().max().item() <= 1e-12


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0, 5.0])
def test_deterministic_preferences(beta):
    """On deterministic preferences DPO reports no finite minimizer; IPO and cDPO converge with min pi > 0."""
    pi_ref, reward = bandit.random_instance(10, 5, seed=10)
    hard = bandit.deterministic_preferences(reward)
    dpo = bandit.solve(pi_ref, hard, beta)
    assert not dpo.converged
    assert "no finite minimizer" in dpo.message
    for kwargs in ({"loss": "ipo"}, {"label_smoothing": 0.1}):
        result = bandit.solve(pi_ref, hard, beta, **kwargs)
        assert result.converged, (kwargs, result.message)
        assert result.policy.min().item() > 0
    ipo = bandit.solve(pi_ref, hard, beta, loss="ipo")
    torch.testing.assert_close(ipo.policy, bandit.ipo_optimal_policy(pi_ref, hard, beta), **ACCEPTANCE)


def test_sample_comparisons_seeding_and_counts():
    """Same seed gives the same counts, another seed others; each context has num_comparisons; diagonal is 0."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=11)
    preferences = bandit.bradley_terry(reward)
    wins = bandit.sample_comparisons(preferences, pi_ref, 500, seed=1)
    assert wins.shape == (3, 4, 4) and wins.dtype == DTYPE
    assert torch.equal(wins, bandit.sample_comparisons(preferences, pi_ref, 500, seed=1))
    assert not torch.equal(wins, bandit.sample_comparisons(preferences, pi_ref, 500, seed=2))
    torch.testing.assert_close(wins.sum((1, 2)), torch.full((3,), 500.0, dtype=DTYPE), atol=0.0, rtol=0.0)
    assert (torch.diagonal(wins, dim1=1, dim2=2) == 0).all()
    assert (wins >= 0).all() and torch.equal(wins, wins.round())


def test_sample_comparisons_frequencies_approach_population():
    """With n = 200000 per context, pair frequencies and win rates are within 5 standard errors of the truth."""
    num_comparisons = 200_000
    pi_ref, reward = bandit.random_instance(2, 3, seed=12, concentration=5.0)
    preferences = bandit.bradley_terry(reward)
    wins = bandit.sample_comparisons(preferences, pi_ref, num_comparisons, seed=3)
    for c in range(2):
        unequal = 1 - (pi_ref[c] ** 2).sum().item()  # P(y1 != y2)
        for i in range(3):
            for j in range(i + 1, 3):
                compared = (wins[c, i, j] + wins[c, j, i]).item()
                # the unordered pair {i, j} is drawn with probability 2 pi_i pi_j / P(y1 != y2)
                pair_rate = 2 * pi_ref[c, i].item() * pi_ref[c, j].item() / unequal
                pair_error = math.sqrt(pair_rate * (1 - pair_rate) / num_comparisons)
                assert abs(compared / num_comparisons - pair_rate) <= 5 * pair_error
                win_rate = preferences[c, i, j].item()
                win_error = math.sqrt(win_rate * (1 - win_rate) / compared)
                assert abs(wins[c, i, j].item() / compared - win_rate) <= 5 * win_error


def test_sample_comparisons_errors():
    """Mismatched preferences, a non-table sampling policy and num_comparisons < 1 raise ValueError."""
    pi_ref, reward = bandit.random_instance(2, 3, seed=0)
    preferences = bandit.bradley_terry(reward)
    with pytest.raises(ValueError, match=r"preferences must have shape \(C, K, K\)"):
        bandit.sample_comparisons(preferences[:, :2, :2], pi_ref, 10)
    with pytest.raises(ValueError, match=r"sampling_policy must have shape \(C, K\)"):
        bandit.sample_comparisons(preferences, pi_ref[0], 10)
    with pytest.raises(ValueError, match="num_comparisons must be >= 1"):
        bandit.sample_comparisons(preferences, pi_ref, 0)


@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_fit_reward_model_recovers_centered_reward(scale):
    """Bradley-Terry MLE on population preferences returns the true reward, centered per context, to 1e-8."""
    _, reward = bandit.random_instance(6, 5, seed=13, reward_scale=scale)
    fitted, result = bandit.fit_reward_model(bandit.bradley_terry(reward))
    assert result.converged, result.message
    torch.testing.assert_close(fitted, reward - reward.mean(-1, keepdim=True), atol=1e-8, rtol=0.0)


def _ridge_reward_loss(reward, wins, l2):
    """-sum w_ij log sigma(r_i - r_j) / sum w + (l2 / 2) |r - mean r|^2, from scratch."""
    weights = _off_diagonal(wins)
    data = -(weights * F.logsigmoid(reward[:, :, None] - reward[:, None, :])).sum() / weights.sum()
    centered = reward - reward.mean(-1, keepdim=True)
    return data + 0.5 * l2 * (centered**2).sum()


def test_fit_reward_model_ridge_when_a_response_never_lost():
    """Response 0 never lost (no finite MLE): with l2 > 0 the fit converges to a stationary point of the ridge loss."""
    wins = torch.tensor([[[0.0, 3.0, 2.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]], dtype=DTYPE)
    fitted, result = bandit.fit_reward_model(wins, l2=0.1)
    assert result.converged, result.message
    assert fitted[0, 0] > fitted[0, 1] and fitted[0, 0] > fitted[0, 2]
    reward = fitted.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(_ridge_reward_loss(reward, wins, 0.1), reward)
    assert gradient.abs().max().item() <= 1e-12


def test_fit_reward_model_equals_dpo_with_flat_reference():
    """On sampled counts where the MLE exists, the BT reward equals DPO's implicit reward (beta = 1, uniform ref)."""
    pi_ref, reward = bandit.random_instance(3, 4, seed=14, concentration=5.0)
    wins = bandit.sample_comparisons(bandit.bradley_terry(reward), pi_ref, 2000, seed=4)
    off_diagonal = ~torch.eye(4, dtype=torch.bool).expand(3, 4, 4)
    assert (wins[off_diagonal] > 0).all()  # every ordered pair won at least once: the MLE is finite
    fitted, fit = bandit.fit_reward_model(wins)
    assert fit.converged, fit.message
    uniform = torch.full((3, 4), 0.25, dtype=DTYPE)
    result = bandit.solve(uniform, wins, 1.0)
    assert result.converged, result.message
    implicit = bandit.implicit_reward(result.policy, uniform, 1.0)
    torch.testing.assert_close(fitted, implicit - implicit.mean(-1, keepdim=True), atol=1e-8, rtol=0.0)


def test_fit_reward_model_errors():
    """Negative l2 and non-square wins raise ValueError."""
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        bandit.fit_reward_model(torch.ones(1, 2, 2), l2=-1.0)
    with pytest.raises(ValueError, match=r"wins must have shape \(C, K, K\)"):
        bandit.fit_reward_model(torch.ones(1, 2, 3))


def test_solve_errors():
    """solve rejects wrongly shaped, negative or all-diagonal wins, the hinge loss and beta <= 0."""
    pi_ref, reward = bandit.random_instance(2, 3, seed=0)
    preferences = bandit.bradley_terry(reward)
    with pytest.raises(ValueError, match=r"wins must have shape \(C, K, K\) = \(2, 3, 3\)"):
        bandit.solve(pi_ref, preferences[:1], 1.0)
    with pytest.raises(ValueError, match="wins must be >= 0"):
        bandit.solve(pi_ref, preferences - 0.6, 1.0)
    with pytest.raises(ValueError, match="no weight off the diagonal"):
        bandit.solve(pi_ref, torch.eye(3, dtype=DTYPE).expand(2, 3, 3), 1.0)
    with pytest.raises(ValueError, match="hinge loss is piecewise linear"):
        bandit.solve(pi_ref, preferences, 1.0, loss="hinge")
    for beta in (0.0, -0.5):
        with pytest.raises(ValueError, match="beta must be > 0"):
            bandit.solve(pi_ref, preferences, beta)


@pytest.mark.parametrize(("seed", "beta"), [(28, 10.0), (29, 10.0), (3, 10.0)])
def test_simpo_from_a_far_start_where_curvature_underflows(seed, beta):
    """pi_ref with entries near e^-90 puts SimPO's start on the flat logistic tail, where float64 curvature is 0.

    Newton then needs its trust region and damping (dpo_teach.newton); it must still reach a stationary point.
    """
    pi_ref, reward = bandit.random_instance(5, 7, seed=seed, concentration=0.3)
    preferences = bandit.bradley_terry(reward)
    assert (pi_ref.log().amax(-1) - pi_ref.log().amin(-1)).max() * beta > 40, "the start must be on the flat tail"
    result = bandit.solve(pi_ref, preferences, beta, loss="simpo", gamma=0.5)
    assert result.converged, result.message
    gradient = _gradient(_simpo_population_loss, result.theta, pi_ref, preferences, beta, 0.5)
    assert gradient.abs().max().item() <= 1e-12


def test_fit_reward_model_objective_is_its_docstring_formula():
    """The reported loss is -sum w log sigma(r_i - r_j) / W + (l2 / 2) |r - mean r|^2 at the returned reward, and
    at the returned reward shifted by any constant: the ridge never charges for the constant preferences cannot see
    (the formula (l2 / 2) |r|^2 that the docstring used to give would)."""
    wins = torch.tensor([[[0.0, 3.0, 2.0], [0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]], dtype=DTYPE)
    fitted, result = bandit.fit_reward_model(wins, l2=0.1)
    assert result.converged, result.message
    for shift in (0.0, 1.0, -7.5):
        value = _ridge_reward_loss(fitted + shift, wins, 0.1).item()
        assert abs(value - result.loss) <= 1e-14, (shift, value, result.loss)
    uncentered = _ridge_reward_loss(fitted + 1.0, wins, 0.0) + 0.5 * 0.1 * ((fitted + 1.0) ** 2).sum()
    assert uncentered.item() > result.loss + 0.1, "a ridge on |r|^2 would charge for the shift"


@pytest.mark.parametrize("beta", [0.1, 0.5, 1.0])
def test_cdpo_margin_cap_holds_for_two_responses_only(beta):
    """On deterministic preferences cDPO's margin beta h* = log((1 - eps) / eps) holds on K = 2 only.

    With K = 5 (notebook 4's instance) the pairs cannot all sit at the cap: the best-worst implicit margin is
    4.28 nats, twice the cap 2.20, and the same for every beta (the problem in beta h has no beta), so the
    policy ratio pi(best) / pi(worst) grows like exp(4.28 / beta) and min pi is ~1e-19 at beta = 0.1.
    """
    eps = 0.1
    cap = math.log((1 - eps) / eps)
    two_ref, two_reward = bandit.random_instance(6, 2, seed=1)
    two = bandit.solve(two_ref, bandit.deterministic_preferences(two_reward), beta, label_smoothing=eps)
    two_margin = bandit.implicit_reward(two.policy, two_ref, beta).diff(dim=-1).abs()
    torch.testing.assert_close(two_margin, torch.full_like(two_margin, cap), atol=1e-10, rtol=0.0)

    pi_ref, reward = bandit.random_instance(8, 5, seed=2, concentration=5.0)
    result = bandit.solve(pi_ref, bandit.deterministic_preferences(reward), beta, label_smoothing=eps)
    assert result.converged, result.message
    implicit = bandit.implicit_reward(result.policy, pi_ref, beta)  # (C, K)
    best_minus_worst = implicit.gather(-1, reward.argmax(-1, keepdim=True)) - implicit.gather(
        -1, reward.argmin(-1, keepdim=True)
    )
    # Independently: on deterministic preferences the problem depends only on the ranks. Scores s_1 < ... < s_5
    # minimize sum_{i > j} [-(1 - eps) log sigma(s_i - s_j) - eps log sigma(s_j - s_i)], by L-BFGS from scratch.
    scores = torch.zeros(5, dtype=DTYPE, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [scores], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )
    above = torch.ones(5, 5, dtype=DTYPE).tril(-1)  # above[i, j] = 1 where response i is ranked above j

    def closure():
        optimizer.zero_grad()
        gaps = scores[:, None] - scores[None, :]
        value = (above * (-(1 - eps) * F.logsigmoid(gaps) - eps * F.logsigmoid(-gaps))).sum()
        value.backward()
        return value

    optimizer.step(closure)
    expected = (scores[4] - scores[0]).item()
    torch.testing.assert_close(best_minus_worst, torch.full_like(best_minus_worst, expected), atol=1e-7, rtol=0)
    assert (best_minus_worst > 1.9 * cap).all(), (best_minus_worst.min().item(), cap)
    ordered = implicit.gather(-1, reward.argsort(-1))  # worst ... best
    assert (ordered.diff(dim=-1) > 0).all() and (ordered.diff(dim=-1) < cap).all(), "neighbours stay below the cap"
