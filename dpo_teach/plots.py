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
    "sft": ("SFT policy (pi_ref)", "*", "black"),
}
"""method -> (legend label, marker, colour) of the frontier figure, in the paper's spirit (Fig. 2 left)."""


def frontier_figure(rows: list[dict], title: str = "reward-KL frontier") -> Figure:
    """Expected reward against sequence KL(pi || pi_ref), one point per evaluated checkpoint (DPO paper Fig. 2 left).

    ``rows`` are rows of ``results.csv`` (``dpo_teach.frontier.results``). Points of one run are joined by a
    faint line in step order, so a reader can follow a run outwards from the SFT policy at KL 0.
    """
    figure = Figure(figsize=(8, 5.5), layout="constrained")
    ax = figure.subplots()
    start = [row for row in rows if row["method"] == "sft"][:1]  # every run starts from the SFT policy
    for method, (label, marker, colour) in FRONTIER_STYLE.items():
        points = [row for row in rows if row["method"] == method]
        if not points:
            continue
        for run in dict.fromkeys(row["run"] for row in points):
            path = start + sorted((row for row in points if row["run"] == run), key=lambda row: row["step"])
            ax.plot([row["kl"] for row in path], [row["reward"] for row in path], color=colour, alpha=0.25, lw=1)
        size = 160 if method == "sft" else 36
        ax.scatter([row["kl"] for row in points], [row["reward"] for row in points], marker=marker, s=size,
                   color=colour, label=label, alpha=0.85, edgecolors="white", linewidths=0.5, zorder=3)  # fmt: skip
    ax.set_xlabel("KL(pi || pi_ref), nats per completion")
    ax.set_ylabel("mean ground-truth reward")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", framealpha=0.9)
    return figure
