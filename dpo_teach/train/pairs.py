"""What the trainers on preference pairs share: the objective's shape and its held-out evaluation.

The DPO, reward-model and Unlikelihood trainers each turn a micro-batch of B pairs (the ``(2B, T)`` rows of
``dpo_teach.data.collate_preference``, or the reward model's variant) into B per-pair losses and per-pair
metrics. A :class:`PairObjective` states that once; the loop sums the losses (``num_items`` counts pairs,
so every pair weighs the same) and :func:`evaluate_pairs` averages everything over held-out pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from accelerate import Accelerator

from dpo_teach.train.loop import StepOutput
from dpo_teach.train.run import TrainingRun
from dpo_teach.train.sharded import map_examples

Batch = dict[str, torch.Tensor]


class PairObjective:
    """The loss of a trainer on preference pairs. Subclasses set :attr:`metric_names` and define :meth:`per_pair`."""

    metric_names: tuple[str, ...] = ("loss",)
    """``loss`` first, then the names of the per-pair metrics that :meth:`per_pair` returns, in its order."""

    def per_pair(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-pair losses ``(B,)`` (attached to the graph) and detached per-pair metrics, each ``(B,)``."""
        raise NotImplementedError

    def num_items(self, batch: Batch) -> int:
        """Pairs in the micro-batch: its rows are B chosen then B rejected sequences."""
        return batch["input_ids"].shape[0] // 2

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        losses, metrics = self.per_pair(model, batch)
        return StepOutput(loss_sum=losses.sum(), metrics=metrics)


def evaluate_pairs(
    model: torch.nn.Module,
    objective: PairObjective,
    examples: Sequence[dict],
    collate,
    batch_size: int,
    accelerator: Accelerator,
    progress_bar: bool = True,
) -> dict[str, float]:
    """Mean of the loss and of every per-pair metric over the held-out pairs, the model in eval mode (the
    processes split the pairs; every process returns the same means)."""
    model.eval()

    def metrics_of(batch: Batch) -> torch.Tensor:
        losses, metrics = objective.per_pair(model, batch)
        return torch.stack([losses.detach(), *metrics.values()], dim=1)  # (b, 1 + metrics)

    table = map_examples(accelerator, examples, collate, batch_size, metrics_of, "evaluating", progress_bar)
    return dict(zip(objective.metric_names, table.mean(dim=0).tolist(), strict=True))


def pair_evaluation(run: TrainingRun, objective: PairObjective, examples: Sequence[dict], collate):
    """``evaluate(model)``: :func:`evaluate_pairs` on the held-out ``examples`` with the run's settings."""
    config = run.config
    return partial(
        evaluate_pairs, objective=objective, examples=examples, collate=collate, batch_size=config.eval_batch_size,
        accelerator=run.accelerator, progress_bar=config.progress_bar,
    )  # fmt: skip
