"""Matplotlib figures shared by the CLI and the notebooks.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot state), so they work the same in a
script, a test and Jupyter (where a returned Figure displays itself).
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure


def policy_bars(ax, policies: dict[str, torch.Tensor], title: str = "") -> None:
    """Grouped bars of several policies over the K responses of one context; each value ``(K,)``."""
    width = 0.8 / len(policies)
    for index, (label, probs) in enumerate(policies.items()):
        positions = torch.arange(len(probs)) + (index - (len(policies) - 1) / 2) * width
        ax.bar(positions.tolist(), probs.tolist(), width=width, label=label)
    ax.set_xticks(range(len(probs)))
    ax.set_xlabel("response y")
    ax.set_ylabel("probability pi(y | x)")
    ax.set_title(title)
    ax.legend()


def solved_vs_optimal(ax, optimum: torch.Tensor, solved: torch.Tensor, label: str = "DPO") -> None:
    """Every entry of a solved policy against the analytic optimum, log-log, with the diagonal."""
    optimum, solved = optimum.flatten(), solved.flatten()
    smallest = max(min(optimum.min().item(), solved.min().item()), 1e-300)
    ax.loglog([smallest, 1.0], [smallest, 1.0], color="grey", linewidth=1, label="y = x")
    ax.loglog(optimum.tolist(), solved.tolist(), ".", markersize=3, alpha=0.5, label=f"pi_{label}(y | x)")
    error = (solved - optimum).abs().max().item()
    ax.set_xlabel("analytic optimum pi*(y | x)")
    ax.set_ylabel(f"minimizer of the {label} loss")
    ax.set_title(f"all {optimum.numel()} entries, max |error| = {error:.1e}")
    ax.legend(loc="upper left")


def bandit_figure(
    pi_ref: torch.Tensor, optimum: torch.Tensor, solved: torch.Tensor, beta: float, context: int = 0
) -> Figure:
    """Two panels: one context's pi_ref, pi* and the DPO solution; all entries solved vs optimal.

    ``pi_ref``, ``optimum``, ``solved``: ``(C, K)``.
    """
    figure = Figure(figsize=(12, 4.5), layout="constrained")
    left, right = figure.subplots(1, 2)
    policy_bars(
        left,
        {"pi_ref": pi_ref[context], "pi* (closed form)": optimum[context], "DPO minimizer": solved[context]},
        title=f"context {context}, beta = {beta:g}",
    )
    solved_vs_optimal(right, optimum, solved)
    figure.suptitle("DPO on Bradley-Terry preferences recovers pi* = pi_ref exp(r / beta) / Z")
    return figure


FRONTIER_STYLE = {
    "dpo": ("DPO", "o", "tab:red"),
    "ppo-gt": ("PPO-GT (ground-truth reward)", "s", "tab:blue"),
    "ppo-rm": ("PPO (reward model)", "D", "tab:cyan"),
    "preferred-ft": ("Preferred-FT", "^", "tab:green"),
    "unlikelihood": ("Unlikelihood", "v", "tab:purple"),
    "best-of-n": ("best-of-N from pi_ref (KL bound)", "P", "tab:gray"),
    "sft": ("SFT policy (pi_ref)", "*", "black"),
}
"""method -> (legend label, marker, colour) of the frontier figure, in the paper's spirit (Fig. 2 left)."""


def _draw_frontier(ax, rows: list[dict], envelopes: dict[str, list[tuple[float, float]]], legend: bool) -> None:
    for method, (label, marker, colour) in FRONTIER_STYLE.items():
        points = [row for row in rows if row["method"] == method]
        if not points:
            continue
        size = 160 if method == "sft" else 28
        ax.errorbar([row["kl"] for row in points], [row["reward"] for row in points],
                    xerr=[row["kl_sem"] or 0 for row in points], yerr=[row["reward_sem"] or 0 for row in points],
                    fmt="none", ecolor=colour, alpha=0.35, lw=0.8, zorder=2)  # fmt: skip
        ax.scatter([row["kl"] for row in points], [row["reward"] for row in points], marker=marker, s=size,
                   color=colour, label=label if legend else None, alpha=0.6, edgecolors="white", linewidths=0.5,
                   zorder=3)  # fmt: skip
        if method in envelopes:
            kls, rewards = zip(*envelopes[method], strict=True)
            style = "--" if method == "best-of-n" else "-"
            ax.plot(kls, rewards, style, color=colour, lw=2, alpha=0.9, zorder=4)
    ax.set_xlabel("KL(pi || pi_ref), nats per completion")
    ax.grid(alpha=0.3)


def frontier_figure(
    rows: list[dict], envelopes: dict[str, list[tuple[float, float]]] | None = None, title: str = "reward-KL frontier"
) -> Figure:
    """Expected reward against sequence KL(pi || pi_ref), one point per evaluated checkpoint with its standard errors,
    and each method's envelope as a line (DPO paper Fig. 2 left).

    ``rows`` are rows of ``results.csv`` (``dpo_teach.frontier.results``); ``envelopes`` maps a method to the (KL,
    reward) vertices of its frontier (``dpo_teach.frontier.statistics.envelopes``). Best-of-N is drawn dashed at its
    KL bound. When a few checkpoints stretch the KL axis (the largest KL over 3x the median), a second panel zooms
    on the KL range where most checkpoints are.
    """
    envelopes = envelopes or {}
    kls = sorted(row["kl"] for row in rows if row["method"] != "sft")
    zoom = bool(kls) and kls[-1] > 3 * kls[len(kls) // 2]
    figure = Figure(figsize=(14 if zoom else 8, 5.5), layout="constrained")
    axes = figure.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    _draw_frontier(axes[0], rows, envelopes, legend=True)
    axes[0].set_ylabel("mean ground-truth reward")
    axes[0].set_title(title)
    axes[0].legend(loc="lower right", framealpha=0.9, fontsize=9)
    if zoom:
        limit = 1.15 * kls[int(0.8 * (len(kls) - 1))]  # the 80th percentile of the checkpoints' KL
        _draw_frontier(axes[1], rows, envelopes, legend=False)
        inside = [row["reward"] for row in rows if row["kl"] <= limit]
        axes[1].set_xlim(-0.02 * limit, limit)
        axes[1].set_ylim(min(inside) - 0.02, max(inside) + 0.02)
        axes[1].set_title(f"zoom: KL <= {limit:.1f} nats")
    return figure
