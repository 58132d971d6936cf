"""Tests of dpo_teach.losses: each loss against its paper's formula written independently, gradients
against the paper's closed forms and autograd, the analytic optima of cDPO and rDPO, and input checks.

Tolerances: values written with ``math`` on the same float64 inputs agree to round-off, so they are
checked with ``atol=1e-12, rtol=1e-12``; quantities that are exact in IEEE arithmetic (ln 2 at a zero
margin) are checked with ``atol=0, rtol=0``.
"""

from __future__ import annotations

import math

import pytest
import torch

from dpo_teach.losses import (
    PREFERENCE_LOSSES,
    dpo_loss,
    get_loss,
    hinge_loss,
    ipo_loss,
    nll_loss,
    robust_loss,
    simpo_loss,
)

DTYPE = torch.float64
TIGHT = {"atol": 1e-12, "rtol": 1e-12}  # same float64 inputs, two ways of writing the formula
EXACT = {"atol": 0.0, "rtol": 0.0}

# A few hand-picked rows (policy_chosen, policy_rejected, ref_chosen, ref_rejected): positive, negative,
# zero and large margins. The first row is the hand-computed case of the comments below.
ROWS = [
    (-1.0, -2.0, -1.5, -1.5),  # h = (-1 + 1.5) - (-2 + 1.5) = 0.5 + 0.5 = 1.0
    (-3.0, -1.0, -2.0, -2.5),  # h = -1.0 - 1.5 = -2.5
    (-4.2, -4.2, -0.7, -0.7),  # h = 0
    (-0.1, -30.0, -5.0, -6.0),  # h = 4.9 + 24.0 = 28.9
    (-12.5, -3.25, -12.0, -9.0),  # h = -0.5 - 5.75 = -6.25
]
BETAS = (0.1, 0.25, 1.0, 5.0)


def _columns(rows=ROWS) -> tuple[torch.Tensor, ...]:
    return tuple(torch.tensor(column, dtype=DTYPE) for column in zip(*rows, strict=True))


def _margin(row) -> float:
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = row
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def _softplus(x: float) -> float:
    """-log sigma(-x) = log(1 + e^x), written to avoid overflow for large |x|."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _expected(formula, beta: float) -> torch.Tensor:
    return torch.tensor([formula(row, beta) for row in ROWS], dtype=DTYPE)


def _dpo_formula(row, beta, eps=0.0):
    # DPO Eq. 7 / cDPO: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h), -log sigma(x) = softplus(-x)
    x = beta * _margin(row)
    return (1 - eps) * _softplus(-x) + eps * _softplus(x)


def _robust_formula(row, beta, eps):
    # rDPO (Chowdhury et al. 2024): ((1 - eps) l(beta h) - eps l(-beta h)) / (1 - 2 eps), l(x) = -log sigma(x)
    x = beta * _margin(row)
    return ((1 - eps) * _softplus(-x) - eps * _softplus(x)) / (1 - 2 * eps)


def _simpo_formula(row, beta, gamma):
    # SimPO (Meng et al. 2024): -log sigma(beta (logp_w - logp_l) - gamma); no reference
    policy_chosen, policy_rejected, _, _ = row
    return _softplus(-(beta * (policy_chosen - policy_rejected) - gamma))


def test_hand_computed_row():
    """The first row with beta = 0.25, computed by hand: h = 1, beta h = 0.25."""
    args = tuple(column[:1] for column in _columns())
    # DPO: log(1 + e^-0.25) = log(1.778800783...) = 0.5759394198788436
    torch.testing.assert_close(dpo_loss(*args, beta=0.25).losses, torch.tensor([0.5759394198788436], dtype=DTYPE))
    # IPO: (h - 1 / (2 beta))^2 = (1 - 2)^2 = 1
    torch.testing.assert_close(ipo_loss(*args, beta=0.25).losses, torch.tensor([1.0], dtype=DTYPE), **EXACT)
    # hinge: max(0, 1 - beta h) = 1 - 0.25 = 0.75
    torch.testing.assert_close(hinge_loss(*args, beta=0.25).losses, torch.tensor([0.75], dtype=DTYPE), **EXACT)
    # SimPO, gamma = 0.5: beta (-1 - (-2)) - 0.5 = -0.25, so log(1 + e^0.25) = 0.8259394198788436
    simpo = simpo_loss(*args, beta=0.25, gamma=0.5).losses
    torch.testing.assert_close(simpo, torch.tensor([0.8259394198788436], dtype=DTYPE))


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_matches_paper_formula(beta):
    """dpo_loss equals -log sigma(beta h) (DPO Eq. 7) written with math."""
    torch.testing.assert_close(dpo_loss(*_columns(), beta=beta).losses, _expected(_dpo_formula, beta), **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.3, 0.45])
def test_cdpo_matches_formula(beta, eps):
    """dpo_loss with label_smoothing equals the cDPO soft-target cross-entropy."""
    losses = dpo_loss(*_columns(), beta=beta, label_smoothing=eps).losses
    torch.testing.assert_close(losses, _expected(lambda row, b: _dpo_formula(row, b, eps), beta), **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_matches_formula(beta):
    """ipo_loss equals (h - 1/(2 beta))^2 (Azar et al. 2023, with tau = beta)."""
    expected = _expected(lambda row, b: (_margin(row) - 1 / (2 * b)) ** 2, beta)
    torch.testing.assert_close(ipo_loss(*_columns(), beta=beta).losses, expected, **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
def test_hinge_matches_formula(beta):
    """hinge_loss equals max(0, 1 - beta h) (SLiC-HF, TRL's scaling)."""
    expected = _expected(lambda row, b: max(0.0, 1 - b * _margin(row)), beta)
    torch.testing.assert_close(hinge_loss(*_columns(), beta=beta).losses, expected, **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_robust_matches_formula(beta, eps):
    """robust_loss equals the rDPO unbiased loss; at eps = 0 it is DPO."""
    losses = robust_loss(*_columns(), beta=beta, label_smoothing=eps).losses
    torch.testing.assert_close(losses, _expected(lambda row, b: _robust_formula(row, b, eps), beta), **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.6])
def test_simpo_matches_formula(beta, gamma):
    """simpo_loss equals -log sigma(beta (logp_w - logp_l) - gamma) and ignores the reference."""
    losses = simpo_loss(*_columns(), beta=beta, gamma=gamma).losses
    torch.testing.assert_close(losses, _expected(lambda row, b: _simpo_formula(row, b, gamma), beta), **TIGHT)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _columns()
    moved = simpo_loss(policy_chosen, policy_rejected, ref_chosen + 3.0, ref_rejected - 7.0, beta=beta, gamma=gamma)
    torch.testing.assert_close(moved.losses, losses, **EXACT)


def test_nll_matches_formula():
    """nll_loss is -log pi(y_w), and -log pi(y_w) / |y_w| with token counts (RPO)."""
    policy_chosen = torch.tensor([-3.0, -10.5, -0.25], dtype=DTYPE)
    counts = torch.tensor([3.0, 7.0, 1.0], dtype=DTYPE)
    torch.testing.assert_close(nll_loss(policy_chosen), torch.tensor([3.0, 10.5, 0.25], dtype=DTYPE), **EXACT)
    torch.testing.assert_close(nll_loss(policy_chosen, counts), torch.tensor([1.0, 1.5, 0.25], dtype=DTYPE), **TIGHT)


@pytest.mark.parametrize("name", ["dpo", "ipo", "hinge", "robust"])
def test_implicit_rewards_are_detached_log_ratios(name):
    """chosen/rejected rewards are beta * (policy - ref), detached from the graph (DPO Eq. 5)."""
    beta = 0.3
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _columns()
    policy_chosen.requires_grad_(True)
    policy_rejected.requires_grad_(True)
    output = get_loss(name)(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    assert not output.chosen_rewards.requires_grad and not output.rejected_rewards.requires_grad
    torch.testing.assert_close(output.chosen_rewards, beta * (policy_chosen.detach() - ref_chosen), **TIGHT)
    torch.testing.assert_close(output.rejected_rewards, beta * (policy_rejected.detach() - ref_rejected), **TIGHT)


def test_simpo_rewards_are_detached_policy_logps():
    """SimPO's implicit rewards are beta * policy_logps (no reference), detached."""
    beta = 2.0
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _columns()
    policy_chosen.requires_grad_(True)
    output = simpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta)
    assert not output.chosen_rewards.requires_grad
    torch.testing.assert_close(output.chosen_rewards, beta * policy_chosen.detach(), **EXACT)
    torch.testing.assert_close(output.rejected_rewards, beta * policy_rejected, **EXACT)


@pytest.mark.parametrize("beta", BETAS)
def test_policy_equal_to_reference_gives_ln2(beta):
    """With pi_theta = pi_ref the margin is exactly 0: DPO loss is exactly ln 2, rewards exactly 0."""
    ref_chosen = torch.tensor([-3.2, -0.5, -17.0], dtype=DTYPE)
    ref_rejected = torch.tensor([-7.1, -0.5, -2.0], dtype=DTYPE)
    output = dpo_loss(ref_chosen.clone(), ref_rejected.clone(), ref_chosen, ref_rejected, beta=beta)
    torch.testing.assert_close(output.losses, torch.full((3,), math.log(2.0), dtype=DTYPE), **EXACT)
    torch.testing.assert_close(output.chosen_rewards, torch.zeros(3, dtype=DTYPE), **EXACT)
    torch.testing.assert_close(output.rejected_rewards, torch.zeros(3, dtype=DTYPE), **EXACT)


def _grads(loss_fn, beta, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Autograd gradient of the summed loss w.r.t. policy_chosen_logps and policy_rejected_logps, and h."""
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _columns()
    policy_chosen.requires_grad_(True)
    policy_rejected.requires_grad_(True)
    loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, **kwargs).losses.sum().backward()
    margin = (policy_chosen - ref_chosen - policy_rejected + ref_rejected).detach()
    return policy_chosen.grad, policy_rejected.grad, margin


@pytest.mark.parametrize("beta", BETAS)
def test_dpo_gradient_matches_paper(beta):
    """d loss / d log pi(y_w) = -beta sigma(-beta h) and d / d log pi(y_l) = +beta sigma(-beta h) (DPO Sec. 4)."""
    chosen_grad, rejected_grad, margin = _grads(dpo_loss, beta)
    weight = beta * torch.tensor([1 / (1 + math.exp(beta * h)) for h in margin.tolist()], dtype=DTYPE)
    torch.testing.assert_close(chosen_grad, -weight, **TIGHT)
    torch.testing.assert_close(rejected_grad, weight, **TIGHT)


@pytest.mark.parametrize("beta", BETAS)
def test_ipo_gradient_matches_closed_form(beta):
    """d loss / d log pi(y_w) = 2 (h - 1/(2 beta)) = -d loss / d log pi(y_l)."""
    chosen_grad, rejected_grad, margin = _grads(ipo_loss, beta)
    expected = 2 * (margin - 1 / (2 * beta))
    torch.testing.assert_close(chosen_grad, expected, **TIGHT)
    torch.testing.assert_close(rejected_grad, -expected, **TIGHT)


def test_hinge_gradient_matches_closed_form():
    """hinge: d loss / d log pi(y_w) = -beta where beta h < 1 and 0 where beta h > 1 (rows avoid the kink)."""
    beta = 0.25
    chosen_grad, rejected_grad, margin = _grads(hinge_loss, beta)
    assert ((beta * margin - 1).abs() > 0.1).all()
    expected = torch.where(beta * margin < 1, -beta, 0.0).to(DTYPE)
    torch.testing.assert_close(chosen_grad, expected, **EXACT)
    torch.testing.assert_close(rejected_grad, -expected, **EXACT)


SMOOTH_LOSSES = [
    ("dpo", {}),
    ("dpo", {"label_smoothing": 0.2}),
    ("ipo", {}),
    ("robust", {"label_smoothing": 0.1}),
    ("simpo", {"gamma": 0.7}),
]


@pytest.mark.parametrize(("name", "kwargs"), SMOOTH_LOSSES)
def test_gradcheck_smooth_losses(name, kwargs):
    """torch.autograd.gradcheck (float64, eps=1e-6, atol=1e-7, rtol=1e-5) on all four inputs."""
    loss_fn = get_loss(name)
    inputs = tuple(column.clone().requires_grad_(True) for column in _columns())
    assert torch.autograd.gradcheck(
        lambda *logps: loss_fn(*logps, beta=0.7, **kwargs).losses, inputs, eps=1e-6, atol=1e-7, rtol=1e-5
    )


@pytest.mark.parametrize("beta", [0.1, 1.0, 5.0])
@pytest.mark.parametrize("eps", [0.05, 0.1, 0.25, 0.4])
def test_cdpo_minimizer_is_log_odds_of_smoothing(beta, eps):
    """For an always-chosen label the cDPO loss over h is minimized at beta h* = log((1 - eps) / eps)."""

    def slope(h: float) -> float:
        margin = torch.tensor([h], dtype=DTYPE, requires_grad=True)
        zero = torch.zeros(1, dtype=DTYPE)
        dpo_loss(margin, zero, zero, zero, beta=beta, label_smoothing=eps).losses.sum().backward()
        return margin.grad.item()

    # the loss is convex in h, so its autograd slope is increasing: bisection finds the minimizer
    low, high = -100.0 / beta, 100.0 / beta
    assert slope(low) < 0 < slope(high)
    for _ in range(200):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if slope(middle) < 0 else (low, middle)
    expected = math.log((1 - eps) / eps) / beta
    assert abs(0.5 * (low + high) - expected) <= 1e-10 * max(1.0, abs(expected))
    assert abs(slope(expected)) <= 1e-14


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("eps", [0.05, 0.2, 0.4])
def test_robust_expectation_over_flips_is_clean_dpo(beta, eps):
    """E over labels flipped with probability eps of the rDPO loss equals the clean DPO loss."""
    policy_chosen = torch.tensor([-1.0, -3.0, -2.0, 0.0, -50.0, -0.3], dtype=DTYPE)
    policy_rejected = torch.tensor([-6.0, -1.0, -2.0, -40.0, -1.0, -0.2], dtype=DTYPE)
    ref_chosen = torch.tensor([-2.0, -2.0, -2.0, -2.0, -2.0, -0.25], dtype=DTYPE)
    ref_rejected = torch.tensor([-1.0, -1.0, -2.0, -3.0, -4.0, -0.25], dtype=DTYPE)
    kept = robust_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta, label_smoothing=eps).losses
    flipped = robust_loss(policy_rejected, policy_chosen, ref_rejected, ref_chosen, beta, label_smoothing=eps).losses
    clean = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta).losses
    torch.testing.assert_close((1 - eps) * kept + eps * flipped, clean, atol=1e-12, rtol=1e-10)


ALL_LOSSES = [
    ("dpo", {}),
    ("dpo", {"label_smoothing": 0.2}),
    ("ipo", {}),
    ("hinge", {}),
    ("robust", {"label_smoothing": 0.1}),
    ("simpo", {"gamma": 0.5}),
]


@pytest.mark.parametrize(("name", "kwargs"), ALL_LOSSES)
@pytest.mark.parametrize("shift", [-25.0, 3.7])
def test_losses_depend_on_policy_only_through_margin(name, kwargs, shift):
    """Adding a constant to both policy log-probs changes no loss (what dpo_teach.newton relies on)."""
    loss_fn = get_loss(name)
    policy_chosen, policy_rejected, ref_chosen, ref_rejected = _columns()
    base = loss_fn(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=0.5, **kwargs).losses
    moved = loss_fn(policy_chosen + shift, policy_rejected + shift, ref_chosen, ref_rejected, beta=0.5, **kwargs)
    torch.testing.assert_close(moved.losses, base, atol=1e-12, rtol=1e-12)


def _argument(position: int) -> str:
    return ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")[position]


def _vectors(size=3):
    return tuple(torch.zeros(size, dtype=DTYPE) for _ in range(4))


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize("position", range(4))
def test_mismatched_shape_names_argument(name, position):
    """A log-prob tensor of a different length raises ValueError naming it."""
    args = list(_vectors())
    args[position] = torch.zeros(4, dtype=DTYPE)
    argument = "policy_rejected_logps" if position == 0 else _argument(position)
    with pytest.raises(ValueError, match=argument):
        get_loss(name)(*args, beta=0.1)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize("position", [1, 2, 3])
def test_non_tensor_names_argument(name, position):
    """A list instead of a tensor raises ValueError naming the argument."""
    args = list(_vectors())
    args[position] = [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=f"{_argument(position)} must be a torch.Tensor"):
        get_loss(name)(*args, beta=0.1)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize("position", range(4))
def test_two_dimensional_input_names_argument(name, position):
    """A (B, 1) tensor raises ValueError naming the argument and asking for shape (B,)."""
    args = list(_vectors())
    args[position] = torch.zeros(3, 1, dtype=DTYPE)
    with pytest.raises(ValueError, match=rf"{_argument(position)} must have shape \(B,\)"):
        get_loss(name)(*args, beta=0.1)


@pytest.mark.parametrize("name", sorted(PREFERENCE_LOSSES))
@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan")])
def test_nonpositive_beta_raises(name, beta):
    """beta <= 0 (or NaN) raises ValueError naming beta."""
    with pytest.raises(ValueError, match="beta must be > 0"):
        get_loss(name)(*_vectors(), beta=beta)


@pytest.mark.parametrize("loss_fn", [dpo_loss, robust_loss])
@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7])
def test_label_smoothing_outside_range_raises(loss_fn, eps):
    """label_smoothing outside [0, 0.5) raises ValueError naming label_smoothing."""
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 0.5\)"):
        loss_fn(*_vectors(), beta=0.1, label_smoothing=eps)


def test_nll_loss_errors():
    """nll_loss rejects non-(B,) input, mismatched token counts and non-positive counts, naming the argument."""
    with pytest.raises(ValueError, match="policy_chosen_logps must be a torch.Tensor"):
        nll_loss([-1.0, -2.0])
    with pytest.raises(ValueError, match="policy_chosen_logps must be a torch.Tensor of shape"):
        nll_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="chosen_token_counts has shape"):
        nll_loss(torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="chosen_token_counts must be positive"):
        nll_loss(torch.zeros(3), torch.tensor([1.0, 0.0, 2.0]))


def test_get_loss():
    """get_loss finds each loss by name; an unknown name raises ValueError listing the valid ones."""
    assert get_loss("dpo") is dpo_loss and get_loss("ipo") is ipo_loss and get_loss("simpo") is simpo_loss
    with pytest.raises(ValueError, match=r"unknown loss 'dop'; expected one of \['dpo', 'hinge', 'ipo', 'robust'"):
        get_loss("dop")


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize(("eps", "win_rate"), [(0.1, 0.95), (0.1, 0.85), (0.3, 0.75), (0.3, 0.65)])
def test_robust_slope_at_infinity_is_negative_exactly_beyond_one_minus_eps(beta, eps, win_rate):
    """A pair won a fraction p of the time: far out (autograd at beta h = 60) p l(h) + (1 - p) l(-h) has the slope
    beta ((1 - eps)(1 - p) - eps p) / (1 - 2 eps), negative (unbounded below) exactly when p > 1 - eps, p < 1 too."""
    h = torch.tensor([60.0 / beta], dtype=DTYPE, requires_grad=True)
    zero = torch.zeros(1, dtype=DTYPE)
    pair_loss = (
        win_rate * robust_loss(h, zero, zero, zero, beta=beta, label_smoothing=eps).losses
        + (1 - win_rate) * robust_loss(-h, zero, zero, zero, beta=beta, label_smoothing=eps).losses
    )
    (slope,) = torch.autograd.grad(pair_loss.sum(), h)
    expected = beta * ((1 - eps) * (1 - win_rate) - eps * win_rate) / (1 - 2 * eps)
    assert abs(slope.item() - expected) <= 1e-12
    assert (slope.item() < 0) == (win_rate > 1 - eps)
