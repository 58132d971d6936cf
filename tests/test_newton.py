"""Tests of dpo_teach.newton: the graph-Laplacian derivatives against autograd of a from-scratch, naive-loop
objective with softmax-parametrized policies, the null-space projector, and what Newton leaves untouched.

Tolerances: derivatives computed two ways in float64 agree to round-off (~1e-15); they are checked with
``atol=1e-10``. Identities of the projector hold to ``atol=1e-14``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import hessian, jacobian

from dpo_teach.losses import get_loss
from dpo_teach.newton import PairwiseObjective, _null_space_projector, newton_minimize

DTYPE = torch.float64
DERIVATIVE = {"atol": 1e-10, "rtol": 0.0}
IDENTITY = {"atol": 1e-14, "rtol": 0.0}

CASES = [
    ("dpo", {}, 0.0),
    ("dpo", {"label_smoothing": 0.2}, 0.0),
    ("ipo", {}, 0.0),
    ("robust", {"label_smoothing": 0.1}, 0.0),
    ("simpo", {"gamma": 0.5}, 0.0),
    ("dpo", {}, 0.3),
]


def _random_problem(num_contexts=2, num_responses=4, seed=0):
    """Random log_ref (C, K), weights (C, K, K) with a zero diagonal and some zero pairs, theta (C, K)."""
    generator = torch.Generator().manual_seed(seed)
    log_ref = torch.log_softmax(torch.randn(num_contexts, num_responses, generator=generator, dtype=DTYPE), -1)
    weights = torch.rand(num_contexts, num_responses, num_responses, generator=generator, dtype=DTYPE)
    weights = weights * (weights > 0.3) * (1 - torch.eye(num_responses, dtype=DTYPE))
    theta = 2 * torch.randn(num_contexts, num_responses, generator=generator, dtype=DTYPE)
    return log_ref, weights, theta


def _naive_objective(theta, name, beta, kwargs, log_ref, weights, l2):
    """F_c = sum_{i != j} w_cij loss(log_softmax(theta)_i, log_softmax(theta)_j, ref_i, ref_j) / W + ridge, by loops."""
    loss_fn = get_loss(name)
    num_contexts, num_responses = theta.shape
    log_pi = F.log_softmax(theta, -1)  # (C, K)
    total = weights.sum()
    values = []
    for c in range(num_contexts):
        value = 0.5 * l2 * ((theta[c] - theta[c].mean()) ** 2).sum()
        for i in range(num_responses):
            for j in range(num_responses):
                if i != j:
                    chosen, rejected = log_pi[c, i : i + 1], log_pi[c, j : j + 1]
                    ref_chosen, ref_rejected = log_ref[c, i : i + 1], log_ref[c, j : j + 1]
                    pair = loss_fn(chosen, rejected, ref_chosen, ref_rejected, beta=beta, **kwargs).losses[0]
                    value = value + weights[c, i, j] * pair / total
        values.append(value)
    return torch.stack(values)  # (C,)


@pytest.mark.parametrize(("name", "kwargs", "l2"), CASES)
@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
def test_derivatives_match_autograd_of_softmax_objective(name, kwargs, l2, beta):
    """value, gradient and Hessian equal autograd (jacobian, hessian) of the naive softmax-parametrized objective."""
    log_ref, weights, theta = _random_problem()
    objective = PairwiseObjective(get_loss(name), beta, kwargs, log_ref, weights, l2)
    value, gradient, hess = objective.derivatives(theta)

    def naive(theta):
        return _naive_objective(theta, name, beta, kwargs, log_ref, weights, l2)

    torch.testing.assert_close(value, naive(theta), **DERIVATIVE)
    torch.testing.assert_close(objective.value(theta), naive(theta), **DERIVATIVE)
    full_jacobian = jacobian(naive, theta)  # (C, C, K): context c's value depends only on theta[c]
    full_hessian = hessian(lambda theta: naive(theta).sum(), theta)  # (C, K, C, K)
    for c in range(theta.shape[0]):
        torch.testing.assert_close(gradient[c], full_jacobian[c, c], **DERIVATIVE)
        torch.testing.assert_close(hess[c], full_hessian[c, :, c, :], **DERIVATIVE)
        for other in range(theta.shape[0]):
            if other != c:
                assert full_jacobian[c, other].abs().max() == 0
                assert full_hessian[c, :, other, :].abs().max() == 0


# Context 0: components {0, 1, 2} (a chain 0 -> 1 -> 2), {3, 4}, and response 5 never compared.
# Context 1: one component through all six responses.
SPLIT = torch.zeros(2, 6, 6, dtype=DTYPE)
SPLIT[0, 0, 1], SPLIT[0, 2, 1], SPLIT[0, 3, 4], SPLIT[0, 4, 3] = 2.0, 1.0, 1.5, 0.5
for _i in range(5):
    SPLIT[1, _i, _i + 1] = 1.0 + _i
SPLIT[1, 5, 0] = 0.5


def test_gradient_sums_to_zero_per_component():
    """The gradient sums to 0 over each connected component (shifting a component changes no margin)."""
    log_ref, _, theta = _random_problem(num_responses=6, seed=1)
    for name, kwargs, _ in CASES[:-1]:
        _, gradient, _ = PairwiseObjective(get_loss(name), 0.5, kwargs, log_ref, SPLIT).derivatives(theta)
        assert gradient[0, :3].abs().max() > 1e-6  # the check below is not vacuous
        torch.testing.assert_close(gradient[0, :3].sum(), torch.zeros((), dtype=DTYPE), **IDENTITY)
        torch.testing.assert_close(gradient[0, 3:5].sum(), torch.zeros((), dtype=DTYPE), **IDENTITY)
        assert gradient[0, 5] == 0
        torch.testing.assert_close(gradient[1].sum(), torch.zeros((), dtype=DTYPE), **IDENTITY)


def test_null_space_projector_on_split_graph():
    """P projects onto per-component constants: P @ P = P, P = P^T, H @ P = 0 and H + P is invertible."""
    projector = _null_space_projector(SPLIT, ridge=False)
    expected = torch.zeros(6, 6, dtype=DTYPE)
    expected[:3, :3] = 1 / 3
    expected[3:5, 3:5] = 1 / 2
    expected[5, 5] = 1.0
    torch.testing.assert_close(projector[0], expected, **IDENTITY)
    torch.testing.assert_close(projector[1], torch.full((6, 6), 1 / 6, dtype=DTYPE), **IDENTITY)
    torch.testing.assert_close(projector @ projector, projector, **IDENTITY)
    torch.testing.assert_close(projector, projector.transpose(1, 2), **IDENTITY)
    log_ref, _, theta = _random_problem(num_responses=6, seed=2)
    _, _, hess = PairwiseObjective(get_loss("dpo"), 1.0, {}, log_ref, SPLIT).derivatives(theta)
    torch.testing.assert_close(hess @ projector, torch.zeros(2, 6, 6, dtype=DTYPE), **IDENTITY)
    assert (torch.linalg.matrix_rank(hess + projector) == 6).all()
    assert (torch.linalg.matrix_rank(hess) == torch.tensor([3, 5])).all()  # K minus the number of components


@pytest.mark.parametrize("size", [2, 3, 9, 17])
def test_null_space_projector_on_long_chain(size):
    """A path through all K responses is one component however long (the reachability doubling is enough)."""
    weights = torch.zeros(1, size, size, dtype=DTYPE)
    for i in range(size - 1):
        weights[0, i + 1, i] = 1.0
    projector = _null_space_projector(weights, ridge=False)
    torch.testing.assert_close(projector, torch.full((1, size, size), 1 / size, dtype=DTYPE), **IDENTITY)


def test_null_space_projector_with_ridge():
    """With a ridge only the global constant is invisible: P = 1 1^T / K even on a split graph."""
    projector = _null_space_projector(SPLIT, ridge=True)
    torch.testing.assert_close(projector, torch.full((2, 6, 6), 1 / 6, dtype=DTYPE), **IDENTITY)


@pytest.mark.parametrize(("name", "kwargs"), [("dpo", {"label_smoothing": 0.1}), ("ipo", {})])
def test_newton_leaves_uncompared_directions_alone(name, kwargs):
    """Newton converges, keeps a never-compared response at its start and each component's mean logit fixed."""
    log_ref, _, start = _random_problem(num_responses=6, seed=3)
    objective = PairwiseObjective(get_loss(name), 1.0, kwargs, log_ref, SPLIT)
    result = newton_minimize(objective, start.clone())
    assert result.converged, result.message
    assert (result.theta - start).abs().max() > 0.1  # it did move the compared responses
    torch.testing.assert_close(result.theta[0, 5], start[0, 5], atol=1e-12, rtol=0.0)
    for component in (slice(0, 3), slice(3, 5)):
        torch.testing.assert_close(result.theta[0, component].mean(), start[0, component].mean(), atol=1e-12, rtol=0)
    torch.testing.assert_close(result.theta[1].mean(), start[1].mean(), atol=1e-12, rtol=0.0)
    _, gradient, _ = objective.derivatives(result.theta)
    assert gradient.abs().max() <= 1e-12
