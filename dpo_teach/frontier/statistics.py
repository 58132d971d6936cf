"""Comparing methods on the frontier: each method's envelope, and paired standard errors on the same prompts.

**The envelope of a method** is the upper concave envelope of its evaluated checkpoints (all its runs and steps)
and of the SFT policy at KL 0, in the (KL, reward) plane, made non-decreasing: its value at KL k is the best reward
the method reaches within a KL budget of k. It is achievable: a mixture p pi_a + (1 - p) pi_b of two checkpoints has
reward exactly p r_a + (1 - p) r_b and, KL being convex, KL at most p KL_a + (1 - p) KL_b. Comparing envelopes "at
equal KL" replaces taking the best single (noisy) checkpoint within a budget.

**Paired standard errors.** Every checkpoint is evaluated on the same held-out prompts, one sample each, so the
difference of two methods at KL k is a mean over prompts of per-prompt differences d_i = a_i - b_i (each side an
envelope's interpolation of two checkpoints' per-prompt rewards), and its standard error std(d) / sqrt(P) removes the
prompts' shared difficulty that independent errors would count twice. KL is treated as known (its own standard
error is in results.csv).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

BEST_OF_N = "best-of-n"


@dataclass(frozen=True)
class Vertex:
    """A vertex of an envelope: a checkpoint's KL and reward, and the row it comes from."""

    kl: float
    reward: float
    row: dict


def envelope(rows: list[dict], sft: dict) -> list[Vertex]:
    """The vertices of the non-decreasing upper concave envelope of ``rows`` and ``sft`` (at KL 0), by KL."""
    points = sorted([Vertex(0.0, sft["reward"], sft)] + [Vertex(row["kl"], row["reward"], row) for row in rows],
                    key=lambda vertex: (vertex.kl, -vertex.reward))  # fmt: skip
    hull: list[Vertex] = []
    for point in points:  # Andrew's monotone chain, upper half
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        if not hull or point.kl > hull[-1].kl:
            hull.append(point)
    peak = max(range(len(hull)), key=lambda index: hull[index].reward)
    return hull[: peak + 1]  # beyond the best reward the frontier stays flat: a larger budget can stop there


def envelopes(rows: list[dict], seed: int = 0) -> dict[str, list[tuple[float, float]]]:
    """Every method's envelope as (KL, reward) vertices, for the figure (the runs of ``seed``)."""
    sft = next(row for row in rows if row["method"] == "sft")
    methods = dict.fromkeys(row["method"] for row in rows if row["method"] != "sft")
    return {
        method: [(vertex.kl, vertex.reward) for vertex in
                 envelope([row for row in rows if row["method"] == method and row.get("seed", 0) == seed], sft)]
        for method in methods
    }  # fmt: skip


def _cross(first: Vertex, second: Vertex, third: Vertex) -> float:
    return (second.kl - first.kl) * (third.reward - first.reward) - (second.reward - first.reward) * (
        third.kl - first.kl
    )


def interpolation(vertices: list[Vertex], kl: float) -> list[tuple[float, dict]] | None:
    """The envelope at ``kl`` as weights of at most two rows: ``[(weight, row), ...]`` summing to 1; beyond the
    envelope's last vertex its best row; None below KL 0."""
    if kl < 0:
        return None
    if kl >= vertices[-1].kl:
        return [(1.0, vertices[-1].row)]
    for left, right in zip(vertices, vertices[1:], strict=False):
        if left.kl <= kl <= right.kl:
            weight = (kl - left.kl) / (right.kl - left.kl)
            return [(1.0 - weight, left.row), (weight, right.row)]
    raise AssertionError("unreachable: the vertices start at KL 0")


def per_prompt_rewards(run_dir: Path, row: dict) -> torch.Tensor:
    """The ``(P,)`` rewards of ``row``'s evaluation, one per held-out prompt, from the samples kept beside it."""
    if row["method"] == BEST_OF_N:
        path = run_dir / BEST_OF_N / "samples" / f"n-{int(row['value']):08d}.jsonl"
    else:
        name = "sft-evaluation" if row["method"] == "sft" else row["run"]
        path = run_dir / name / "samples" / f"step-{int(row['step']):08d}.jsonl"
    return torch.tensor([json.loads(line)["reward"] for line in path.read_text().splitlines() if line.strip()],
                        dtype=torch.float64)  # fmt: skip


@dataclass(frozen=True)
class Difference:
    """``first`` minus ``second`` at one KL: the mean difference over prompts and its paired standard error."""

    first: str
    second: str
    kl: float
    difference: float
    sem: float

    @property
    def z(self) -> float:
        """The difference in standard errors."""
        return self.difference / self.sem if self.sem > 0 else math.inf * (self.difference > 0)


def paired_difference(
    run_dir: Path, first: list[tuple[float, dict]], second: list[tuple[float, dict]]
) -> tuple[float, float]:
    """Mean and paired standard error over prompts of the weighted per-prompt rewards ``first`` minus ``second``."""

    def weighted(parts: list[tuple[float, dict]]) -> torch.Tensor:
        return sum(weight * per_prompt_rewards(run_dir, row) for weight, row in parts)

    differences = weighted(first) - weighted(second)  # (P,)
    return differences.mean().item(), (differences.std() / math.sqrt(len(differences))).item()


def compare_envelopes(
    run_dir: Path, rows: list[dict], first: str, second: str, kls: list[float], seed: int = 0
) -> list[Difference]:
    """``first``'s envelope minus ``second``'s at each KL of ``kls`` that both reach (methods by name; the runs of
    ``seed``; SFT shared)."""
    sft = next(row for row in rows if row["method"] == "sft")

    def vertices(method: str) -> list[Vertex]:
        return envelope([row for row in rows if row["method"] == method and row.get("seed", 0) == seed], sft)

    first_vertices, second_vertices = vertices(first), vertices(second)
    reach = min(max(row["kl"] for row in rows if row["method"] == name) for name in (first, second))
    differences = []
    for kl in kls:
        if kl > reach:
            continue
        mean, sem = paired_difference(run_dir, interpolation(first_vertices, kl), interpolation(second_vertices, kl))
        differences.append(Difference(first, second, kl, mean, sem))
    return differences


KL_GRID = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
"""KL values (nats) at which envelopes are compared, where both methods reach them."""


def _final_rows(rows: list[dict], method: str, seed: int) -> list[dict]:
    last: dict[str, dict] = {}
    for row in rows:
        if row["method"] == method and row.get("seed", 0) == seed:
            if row["run"] not in last or row["step"] >= last[row["run"]]["step"]:
                last[row["run"]] = row
    return list(last.values())


def paper_claims(run_dir: Path, rows: list[dict], seed: int = 0) -> list[dict]:
    """The DPO paper's claims about its Fig. 2 (left), checked on this run with paired standard errors:

    1. DPO's reward rises as beta falls: each DPO run's last checkpoint against the next larger beta's;
    2. DPO is at or above PPO with a reward model at equal KL (envelopes, :data:`KL_GRID`);
    3. DPO is at or above PPO with the ground-truth reward at equal KL;
    and, as the yardstick, DPO against best-of-N. A claim "holds" when every difference it makes is positive, or
    (for "at or above") no difference is below -2 standard errors; ``differences`` lists each.
    """

    def entry(claim: str, differences: list[Difference], at_or_above: bool) -> dict:
        if not differences:
            return {"claim": claim, "holds": None, "differences": []}
        holds = (
            all(item.z > -2 for item in differences)
            if at_or_above
            else all(item.difference > 0 for item in differences)
        )
        return {"claim": claim, "holds": holds, "differences": [vars(item) for item in differences]}

    dpo = sorted(_final_rows(rows, "dpo", seed), key=lambda row: -row["value"])  # largest beta first
    steps = []
    for larger, smaller in zip(dpo, dpo[1:], strict=False):
        mean, sem = paired_difference(run_dir, [(1.0, smaller)], [(1.0, larger)])
        steps.append(Difference(smaller["run"], larger["run"], smaller["kl"], mean, sem))
    methods = {row["method"] for row in rows}
    claims = [entry("DPO's reward rises as beta falls (last checkpoints)", steps, at_or_above=False)]
    for other, name in (("ppo-rm", "PPO with a reward model"), ("ppo-gt", "PPO with the ground-truth reward")):
        if other in methods:
            differences = compare_envelopes(run_dir, rows, "dpo", other, list(KL_GRID), seed)
            claims.append(entry(f"DPO at or above {name} at equal KL", differences, at_or_above=True))
    if BEST_OF_N in methods:
        differences = compare_envelopes(run_dir, rows, "dpo", BEST_OF_N, list(KL_GRID), seed)
        claims.append(entry("DPO at or above best-of-N from pi_ref at equal KL (yardstick)", differences, True))
    return claims


def format_claims(claims: list[dict]) -> str:
    """The claims as text: one line each, then its differences (first minus second, +- paired standard error)."""
    lines = []
    for claim in claims:
        verdict = {True: "holds", False: "does not hold", None: "not tested (no comparable points)"}[claim["holds"]]
        lines.append(f"{claim['claim']}: {verdict}")
        for item in claim["differences"]:
            lines.append(
                f"    {item['first']} - {item['second']} at KL {item['kl']:.2f}: "
                f"{item['difference']:+.3f} +- {item['sem']:.3f}"
            )
    return "\n".join(lines)
