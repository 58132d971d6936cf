"""Newton's method for pairwise preference losses over tables of logits (used by ``dpo_teach.bandit``).

The objective, one independent problem per context c (notebook 3, Eq. 3.5), is

    F_c(theta) = sum_{i != j} w[c,i,j] loss(theta_i, theta_j; ref_i, ref_j) / W  +  (l2 / 2) |theta - mean(theta)|^2

where ``loss`` is any loss of ``dpo_teach.losses`` called with ``policy_chosen_logps = theta_i``
and ``policy_rejected_logps = theta_j``, and W is the total weight. Every loss of the family depends
on the policy only through the margin theta_i - theta_j, so the softmax normalizer cancels and
theta can be used as unnormalized logits: pi = softmax(theta). With l(h) the loss as a function
of that margin, the derivatives are

    grad_i   = (sum_j w_ij l'(h_ij) - sum_j w_ji l'(h_ji)) / W
    H_ij     = -S_ij (i != j),  H_ii = sum_j S_ij,  S_ij = (w_ij l''(h_ij) + w_ji l''(h_ji)) / W,

a weighted graph Laplacian. l' and l'' come from autograd through the loss function itself, so
what is solved is exactly the code that trains GPT-2. A test checks these against autograd's
Hessian of the softmax-parametrized objective.

Whether a minimizer exists at all is decided before iterating, from the same loss: see
:func:`finite_minimizer_exists`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.losses import PreferenceLoss, PreferenceLossFn

MAX_STEP_NATS = 16.0  # largest change of an implicit reward in one Newton step: e^16 ~ 1e7 in odds
FAR_MARGIN = 1e3  # beta * h at which the slopes of a loss are taken as its slopes at infinity (e^-1000 == 0.0)
# Chosen here: a ridge 1e-12 times the largest curvature (~4500 float64 epsilons) moves a Newton step by a
# relative 1e-12 (far below xtol's effect) while making a numerically singular H + P invertible again.
SINGULAR_DAMPING = 1e-12
# Chosen here: a predicted decrease below 1e-14 (1 + |F|), ~45 float64 epsilons of F, cannot be seen in F's
# values, so Armijo's comparison of them is round-off; the full Newton step is taken instead.
NEGLIGIBLE_DECREASE = 1e-14
# Armijo's sufficient-decrease constant c1 = 1e-4, the value Nocedal & Wright suggest for practice (Numerical
# Optimization, 2nd ed., Sec. 3.1, the sufficient decrease condition, Eq. 3.4).
ARMIJO_C1 = 1e-4
# Chosen here: 60 halvings reach a step of 2^-60 ~ 1e-18 of Newton's, below float64 resolution of theta, so
# a backtracking that has not found a decrease by then never will.
MAX_HALVINGS = 60


@dataclass
class PairwiseObjective:
    """F(theta) above. ``log_ref`` (C, K), ``weights`` (C, K, K) with a zero diagonal, ``l2 >= 0``."""

    loss_fn: PreferenceLossFn
    beta: float
    loss_kwargs: dict
    log_ref: torch.Tensor
    weights: torch.Tensor
    l2: float = 0.0

    def __post_init__(self) -> None:
        pair_shape = self.weights.shape  # (C, K, K)
        self._ref_chosen = self.log_ref[:, :, None].expand(pair_shape).reshape(-1)  # (C*K*K,) ref_i
        self._ref_rejected = self.log_ref[:, None, :].expand(pair_shape).reshape(-1)  # (C*K*K,) ref_j

    def _pairs(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every ordered pair's (chosen, rejected) logits: theta_i and theta_j, each (C*K*K,)."""
        chosen = theta[:, :, None].expand(self.weights.shape).reshape(-1)
        rejected = theta[:, None, :].expand(self.weights.shape).reshape(-1)
        return chosen, rejected

    def _pair_output(self, chosen: torch.Tensor, rejected: torch.Tensor) -> PreferenceLoss:
        """The loss of "i preferred over j" for every ordered pair, flattened to (C*K*K,)."""
        return self.loss_fn(chosen, rejected, self._ref_chosen, self._ref_rejected, beta=self.beta, **self.loss_kwargs)

    def _ridge(self, theta: torch.Tensor) -> torch.Tensor:
        return theta - theta.mean(-1, keepdim=True)

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        """F_c(theta) for every context; ``theta`` (C, K) -> (C,)."""
        total = self.weights.sum()
        losses = self._pair_output(*self._pairs(theta)).losses.view_as(self.weights)  # (C, K, K)
        data_term = (self.weights * losses).sum((1, 2)) / total
        return data_term + 0.5 * self.l2 * (self._ridge(theta) ** 2).sum(-1)

    def largest_margin(self, theta: torch.Tensor) -> float:
        """max |r_hat_i - r_hat_j| over compared pairs (weight > 0), with the loss's implicit rewards."""
        output = self._pair_output(*self._pairs(theta))
        margins = (output.chosen_rewards - output.rejected_rewards).view_as(self.weights).abs()
        return margins[self.weights > 0].max().item()

    def derivatives(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(value (C,), gradient (C, K), hessian (C, K, K))`` at ``theta`` (C, K)."""
        total = self.weights.sum()
        chosen, rejected = self._pairs(theta.detach())
        chosen = chosen.clone().requires_grad_(True)
        losses = self._pair_output(chosen, rejected).losses.view_as(self.weights)  # (C, K, K)
        (first,) = torch.autograd.grad(losses.sum(), chosen, create_graph=True)  # l'(h_ij), (C*K*K,)
        if first.requires_grad:
            (second,) = torch.autograd.grad(first.sum(), chosen)  # l''(h_ij)
        else:
            second = torch.zeros_like(first)  # a loss linear in the margin on this region
        first = first.detach()  # nothing Newton returns may carry this graph
        first = first.view_as(losses) * self.weights / total  # w_ij l'(h_ij) / W
        second = second.view_as(losses) * self.weights / total  # w_ij l''(h_ij) / W
        value = (self.weights * losses.detach()).sum((1, 2)) / total
        gradient = first.sum(2) - first.sum(1)  # (C, K)
        coupling = second + second.transpose(1, 2)  # (C, K, K) S
        hess = torch.diag_embed(coupling.sum(2)) - coupling  # (C, K, K) graph Laplacian of S
        if self.l2 > 0:
            centered = self._ridge(theta)
            size = theta.shape[-1]
            value = value + 0.5 * self.l2 * (centered**2).sum(-1)
            gradient = gradient + self.l2 * centered
            hess = hess + self.l2 * (torch.eye(size, dtype=theta.dtype) - 1.0 / size)
        return value, gradient, hess

    def recession_costs(self) -> torch.Tensor:
        """How fast each compared pair's loss grows as theta_i - theta_j -> +inf; (C, K) -> (C, K, K).

        The pair {i, j} contributes f(h) = (w_ij l(h) + w_ji l(-h)) / W with h = theta_i - theta_j, so

            cost[c, i, j] = lim_{h -> +inf} f'(h) = (w_ij l'(+inf) - w_ji l'(-inf)) / W,

        with l'(+-inf) read from the loss itself at beta h = +-FAR_MARGIN. For DPO, l'(+inf) = 0 and
        l'(-inf) = -beta, so cost[c, i, j] = beta w_ji / W: raising i over j costs only if j ever won.
        """
        far = torch.tensor([FAR_MARGIN, -FAR_MARGIN], dtype=self.log_ref.dtype) / self.beta
        zero = torch.zeros_like(far)
        far.requires_grad_(True)
        losses = self.loss_fn(far, zero, zero, zero, beta=self.beta, **self.loss_kwargs).losses
        (slope_up, slope_down) = torch.autograd.grad(losses.sum(), far)[0].tolist()  # l'(+inf), l'(-inf)
        total = self.weights.sum()
        return (self.weights * slope_up - self.weights.transpose(1, 2) * slope_down) / total


def _reachability(edges: torch.Tensor) -> torch.Tensor:
    """Reflexive-transitive closure of directed graphs: ``edges`` (C, K, K) bool -> (C, K, K) bool.

    ``reach[c, i, j]`` is True when a path i -> ... -> j exists (every i reaches itself).
    """
    size = edges.shape[-1]
    reach = (edges | torch.eye(size, dtype=torch.bool)).double()  # paths of length <= 1
    for _ in range(max(1, (size - 1).bit_length())):  # after n squarings: paths of length <= 2^n >= K - 1
        reach = ((reach @ reach) > 0).double()
    return reach > 0


def finite_minimizer_exists(objective: PairwiseObjective) -> torch.Tensor | None:
    """Whether each context's F_c attains its minimum: (C,) bool, or None when this test cannot tell.

    F_c is convex in theta and blind to constants on each connected component of the comparison
    graph. Moving theta far along a direction d costs, per unit, the sum over pairs of
    |d_i - d_j| cost[c, i, j] with i the one raised (:meth:`PairwiseObjective.recession_costs`).
    With every cost >= 0, a minimizer exists iff every direction that is not constant on the
    components costs something, i.e. iff no set S of responses can be raised above the rest of its
    component with cost[c, i, j] = 0 for all i in S, j outside: the graph with an edge i -> j where
    cost[c, i, j] > 0 must be strongly connected within each component. For DPO and the
    Bradley-Terry MLE this is Ford's condition (1957) applied to each component: however a component
    is split in two, each side was preferred to the other at least once (notebook 1, Sec. 1.5). Ford
    asked it of the whole graph, which also makes the minimizer unique up to one constant; with
    several components it exists but each component can be shifted on its own. IPO and cDPO
    (eps > 0) charge for every direction, so their minimizers always exist.

    A negative cost (rDPO's loss is unbounded below along a pair that wins too rarely the other way)
    makes existence a question about every cut of the graph; the answer is then None and
    :func:`newton_minimize` watches the margins instead. A ridge (l2 > 0) makes F_c strongly convex:
    always True.
    """
    num_contexts = objective.weights.shape[0]
    if objective.l2 > 0:
        return torch.ones(num_contexts, dtype=torch.bool)
    cost = objective.recession_costs()
    if (cost < 0).any():
        return None
    compared = (objective.weights + objective.weights.transpose(1, 2)) > 0
    same_component = _reachability(compared)
    return (_reachability(cost > 0) == same_component).all(-1).all(-1)


def _describe_missing_minimizer(objective: PairwiseObjective, exists: torch.Tensor) -> str:
    """Name a context without a minimizer and the responses whose logits can rise for free."""
    context = int((~exists).nonzero()[0])
    cost = objective.recession_costs()[context : context + 1]
    compared = (objective.weights + objective.weights.transpose(1, 2))[context : context + 1] > 0
    reach, component = _reachability(cost > 0)[0], _reachability(compared)[0]
    response = int((reach != component).any(-1).nonzero()[0])
    free = reach[response].nonzero().flatten().tolist()
    rest = (component[response] & ~reach[response]).nonzero().flatten().tolist()
    return (
        f"no finite minimizer in {int((~exists).sum())} of {len(exists)} contexts; in context {context}, raising the "
        f"logits of responses {free} above those of {rest} never raises the loss and keeps lowering it toward its "
        f"infimum (for DPO: none of {rest} was ever preferred to any of {free}). Not iterated."
    )


@dataclass
class NewtonResult:
    """Where Newton's method stopped: ``theta`` (C, K), the summed objective, the largest gradient entry."""

    theta: torch.Tensor
    loss: float
    grad_norm: float
    iterations: int
    converged: bool
    message: str


def _null_space_projector(weights: torch.Tensor, ridge: bool) -> torch.Tensor:
    """Projector onto the directions no pairwise loss can see; ``weights`` (C, K, K) -> (C, K, K).

    Without a ridge, adding a constant to all responses of one connected component of the
    comparison graph (an isolated response is a component of its own) changes no margin. With a
    ridge, only the global constant is invisible.
    """
    size = weights.shape[-1]
    if ridge:
        return torch.full_like(weights, 1.0 / size)
    same_component = _reachability((weights + weights.transpose(1, 2)) > 0).to(weights.dtype)
    return same_component / same_component.sum(-1, keepdim=True)  # (1_S 1_S^T) / |S| for each component S


def newton_minimize(
    objective: PairwiseObjective,
    theta: torch.Tensor,
    max_iter: int = 200,
    xtol: float = 1e-11,
    gtol: float = 1e-12,
    max_margin: float = 30.0,
) -> NewtonResult:
    """Minimize every context's F_c by damped Newton from ``theta`` (C, K).

    The Hessian is singular exactly along the directions no margin sees (:func:`_null_space_projector`);
    solving with H + P instead of H gives the exact Newton step with no component along them, so
    those directions stay where they started. Backtracking (Armijo) per context keeps each step a
    descent step. Converged means the largest step fell below ``xtol`` and the largest gradient
    entry below ``gtol``: Newton converges quadratically, so the error is then far below both.

    A loss with no finite minimizer (its infimum lies at infinite margins, as DPO's does on
    deterministic preferences) is reported as such, never as converged. Where
    :func:`finite_minimizer_exists` decides it, that is said before any step is taken and ``theta``
    is returned unchanged. Where it cannot decide, the iteration stops once an implicit reward
    margin |r_hat_i - r_hat_j| of a compared pair exceeds ``max_margin`` nats (preference odds of
    e^30, beyond anything a finite dataset says, and before the loss's curvature underflows).
    """
    exists = finite_minimizer_exists(objective)
    if exists is not None and not exists.all():
        value, gradient, _ = objective.derivatives(theta)
        message = _describe_missing_minimizer(objective, exists)
        return NewtonResult(theta, value.sum().item(), gradient.abs().max().item(), 0, False, message)
    watch_margins = exists is None
    num_contexts = theta.shape[0]
    null_projector = _null_space_projector(objective.weights, ridge=objective.l2 > 0)
    for iteration in range(1, max_iter + 1):
        value, gradient, hess = objective.derivatives(theta)
        system = hess + null_projector
        solution, info = torch.linalg.solve_ex(system, gradient[..., None])
        if info.any():
            # Far out on a logistic tail the curvature underflows to 0 before the gradient does, and H
            # turns singular; a ridge of float64 size keeps those steps finite (Levenberg-Marquardt).
            damping = SINGULAR_DAMPING * (1.0 + hess.diagonal(dim1=1, dim2=2).abs().amax(-1))  # (C,)
            system = system + damping[:, None, None] * torch.eye(theta.shape[-1], dtype=theta.dtype)
            solution = torch.linalg.solve(system, gradient[..., None])
        step = -solution[..., 0]  # (C, K)
        # A trust region: no step moves an implicit reward beta * theta by more than MAX_STEP_NATS.
        step_nats = objective.beta * step.abs().amax(-1, keepdim=True)  # (C, 1)
        step = step * (MAX_STEP_NATS / step_nats).clamp(max=1.0)
        slope = (gradient * step).sum(-1)  # (C,) directional derivative, <= 0
        # Where the predicted decrease is below float64 resolution of the loss, Armijo's test is noise;
        # there the full Newton step is taken (it is inside the region of quadratic convergence).
        negligible = -slope <= NEGLIGIBLE_DECREASE * (1.0 + value.abs())
        step_size = torch.ones(num_contexts, dtype=theta.dtype)
        for _ in range(MAX_HALVINGS):
            trial = objective.value(theta + step_size[:, None] * step)
            accepted = negligible | (trial <= value + ARMIJO_C1 * step_size * slope)  # Armijo condition (N&W Eq. 3.4)
            if accepted.all():
                break
            step_size = torch.where(accepted, step_size, step_size / 2)
        theta = theta + step_size[:, None] * step
        largest_step = (step_size[:, None] * step).abs().max().item()
        margin = objective.largest_margin(theta)
        if watch_margins and margin > max_margin:
            converged = False
            message = (
                f"no finite minimizer: after {iteration} Newton steps an implicit reward margin reached "
                f"{margin:.0f} nats (> {max_margin:g}) and keeps growing while the loss falls toward its infimum"
            )
            break
        if largest_step <= xtol:
            grad_norm = objective.derivatives(theta)[1].abs().max().item()  # at the new point
            converged = grad_norm <= gtol
            message = f"largest Newton step {largest_step:.1e}, largest gradient entry {grad_norm:.1e}"
            message = f"converged: {message}" if converged else f"stalled: {message} (> gtol {gtol:.0e})"
            break
    else:
        converged = False
        message = f"not converged after {max_iter} Newton steps (last step {largest_step:.1e})"
    value, gradient, _ = objective.derivatives(theta)
    return NewtonResult(theta, value.sum().item(), gradient.abs().max().item(), iteration, converged, message)
