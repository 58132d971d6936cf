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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dpo_teach.losses import PreferenceLoss, PreferenceLossFn


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
    num_contexts, size, _ = weights.shape
    if ridge:
        return torch.full_like(weights, 1.0 / size)
    eye = torch.eye(size, dtype=weights.dtype)
    reach = ((weights + weights.transpose(1, 2)) > 0).to(weights.dtype) + eye  # one step
    for _ in range(max(1, (size - 1).bit_length())):  # paths of length up to 2^n >= K - 1
        reach = ((reach @ reach) > 0).to(weights.dtype)
    return reach / reach.sum(-1, keepdim=True)  # (1_S 1_S^T) / |S| for each component S


def newton_minimize(
    objective: PairwiseObjective,
    theta: torch.Tensor,
    max_iter: int = 200,
    xtol: float = 1e-11,
    gtol: float = 1e-12,
    max_margin: float = 50.0,
) -> NewtonResult:
    """Minimize every context's F_c by damped Newton from ``theta`` (C, K).

    The Hessian is singular exactly along the directions no margin sees (:func:`_null_space_projector`);
    solving with H + P instead of H gives the exact Newton step with no component along them, so
    those directions stay where they started. Backtracking (Armijo) per context keeps each step a
    descent step. Converged means the largest step fell below ``xtol`` and the largest gradient
    entry below ``gtol``: Newton converges quadratically, so the error is then far below both.

    A loss with no finite minimizer (its infimum lies at infinite margins, as DPO's does on
    deterministic preferences) is reported as such, never as converged: the iteration stops once
    an implicit reward margin |r_hat_i - r_hat_j| of a compared pair exceeds ``max_margin`` nats,
    preference odds of e^50 by default, beyond anything a finite dataset says.
    """
    num_contexts = theta.shape[0]
    null_projector = _null_space_projector(objective.weights, ridge=objective.l2 > 0)
    for iteration in range(1, max_iter + 1):
        value, gradient, hess = objective.derivatives(theta)
        step = -torch.linalg.solve(hess + null_projector, gradient[..., None])[..., 0]  # (C, K)
        slope = (gradient * step).sum(-1)  # (C,) directional derivative, <= 0
        # Where the predicted decrease is below float64 resolution of the loss, Armijo's test is noise;
        # there the full Newton step is taken (it is inside the region of quadratic convergence).
        negligible = -slope <= 1e-14 * (1.0 + value.abs())
        step_size = torch.ones(num_contexts, dtype=theta.dtype)
        for _ in range(60):
            trial = objective.value(theta + step_size[:, None] * step)
            accepted = negligible | (trial <= value + 1e-4 * step_size * slope)
            if accepted.all():
                break
            step_size = torch.where(accepted, step_size, step_size / 2)
        theta = theta + step_size[:, None] * step
        largest_step = (step_size[:, None] * step).abs().max().item()
        margin = objective.largest_margin(theta)
        if margin > max_margin:
            converged = False
            message = (
                f"no finite minimizer: after {iteration} Newton steps an implicit reward margin reached "
                f"{margin:.0f} nats (> {max_margin:g}) and keeps growing while the loss falls toward its infimum"
            )
            break
        if largest_step <= xtol:
            grad_norm = gradient.abs().max().item()
            converged = grad_norm <= gtol
            message = f"largest Newton step {largest_step:.1e}, largest gradient entry {grad_norm:.1e}"
            message = f"converged: {message}" if converged else f"stalled: {message} (> gtol {gtol:.0e})"
            break
    else:
        converged = False
        message = f"not converged after {max_iter} Newton steps (last step {largest_step:.1e})"
    value, gradient, _ = objective.derivatives(theta)
    return NewtonResult(theta, value.sum().item(), gradient.abs().max().item(), iteration, converged, message)
