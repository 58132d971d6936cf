"""The training loop of the trainers whose update is a gradient step on a sum of per-item losses.

SFT, DPO, the reward model and Unlikelihood supply an :class:`Objective`: how many items a micro-batch's loss
sums over (examples for DPO, tokens for SFT) and the summed loss with per-example metrics. The loop does
the update; everything around it (resume, logging, checkpoints, callbacks, finish) is the
:class:`~dpo_teach.train.run.TrainingRun` it is given:

- data order: each epoch is a seeded permutation of the examples; optimizer step s takes the s-th
  slice of ``batch_size`` examples, split into ``gradient_accumulation_steps`` micro-batches and
  across processes. The order depends only on (seed, step), so a resumed run sees the same data;
- gradient accumulation with the right scaling: every micro-batch's summed loss is divided by the
  number of items in the whole optimizer step, over all processes (times the process count, since
  DDP averages gradients). The update therefore equals one large batch's, whatever the split;
- device placement, mixed precision, DDP / FSDP: ``accelerate`` (run under ``accelerate launch``);
  gradients are synchronized only on the last micro-batch;
- gradient clipping, linear warmup, metrics gathered over processes (means of per-example values,
  so an accuracy cannot exceed 1); a non-finite loss or gradient norm stops the run before the update.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from dpo_teach.data import to_device
from dpo_teach.errors import ConfigError
from dpo_teach.train.config import TrainConfig
from dpo_teach.train.run import TrainingRun, build_optimizer, learning_rate_schedule, step_generator

Batch = dict[str, torch.Tensor]


@dataclass
class StepOutput:
    """What an objective computes on one micro-batch."""

    loss_sum: torch.Tensor
    """() the sum of the items' losses, attached to the graph."""
    metrics: dict[str, torch.Tensor]
    """name -> (b,) per-example values, detached; the loop logs their mean over the whole step."""


class Objective(Protocol):
    """The part of a trainer that knows its loss."""

    def num_items(self, batch: Batch) -> int:
        """How many items (examples or tokens) ``loss_sum`` sums over for this micro-batch."""

    def __call__(self, model: torch.nn.Module, batch: Batch) -> StepOutput:
        """Forward pass and loss on one micro-batch."""


def micro_batch_indices(
    num_examples: int, config: TrainConfig, step: int, num_processes: int, process_index: int
) -> list[list[int]]:
    """Example indices of this process's micro-batches for optimizer step ``step`` (0-based).

    Epoch e is ``randperm(num_examples)`` seeded by (seed, e); its last incomplete batch is dropped.
    Returns ``gradient_accumulation_steps`` lists of ``batch_size / (accumulation * processes)`` indices.
    """
    per_step = config.gradient_accumulation_steps * num_processes
    if config.batch_size % per_step:
        raise ConfigError(
            f"batch_size: {config.batch_size} examples cannot be split into {config.gradient_accumulation_steps} "
            f"accumulation steps x {num_processes} processes; choose a multiple of {per_step}"
        )
    batches_per_epoch = num_examples // config.batch_size
    if batches_per_epoch == 0:
        raise ConfigError(f"batch_size: {config.batch_size} is larger than the {num_examples} training examples")
    epoch, position = divmod(step, batches_per_epoch)
    generator = step_generator(config.seed, epoch)
    order = torch.randperm(num_examples, generator=generator)
    batch = order[position * config.batch_size : (position + 1) * config.batch_size]
    micro_size = config.batch_size // per_step
    return batch.view(config.gradient_accumulation_steps, num_processes, micro_size)[:, process_index].tolist()


def train_loop(
    run: TrainingRun,
    model: torch.nn.Module,
    tokenizer,
    objective: Objective,
    train_examples: Sequence,
    collate: Callable[[list], Batch],
) -> Path:
    """Train ``model`` on ``train_examples`` for ``run.config.max_steps`` optimizer steps; returns the final model
    dir. ``collate`` turns a list of examples into a batch of tensors."""
    config, accelerator = run.config, run.accelerator
    optimizer = build_optimizer(model, config)
    model, optimizer, scheduler = run.prepare(model, optimizer, learning_rate_schedule(optimizer, config))
    run.start(model, tokenizer, f"{len(train_examples)} training examples")
    max_norm = config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    for step in run.steps():
        started = time.perf_counter()
        model.train()
        indices = micro_batch_indices(
            len(train_examples), config, step, accelerator.num_processes, accelerator.process_index
        )
        batches = [to_device(collate([train_examples[i] for i in chunk]), accelerator.device) for chunk in indices]
        local_items = torch.tensor(
            float(sum(objective.num_items(batch) for batch in batches)), device=accelerator.device
        )
        total_items = accelerator.reduce(local_items, reduction="sum")
        scale = accelerator.num_processes / total_items  # DDP averages gradients over processes
        loss_sum, tokens, metrics = torch.zeros((), device=accelerator.device), 0, {}
        for index, batch in enumerate(batches):
            synchronize = index == len(batches) - 1
            with contextlib.nullcontext() if synchronize else accelerator.no_sync(model), accelerator.autocast():
                output = objective(model, batch)
                accelerator.backward(output.loss_sum * scale)
            loss_sum += output.loss_sum.detach().float()
            tokens += int(batch["attention_mask"].sum())
            for name, values in output.metrics.items():
                metrics.setdefault(name, []).append(values.float())
        loss = (accelerator.reduce(loss_sum, reduction="sum") / total_items).item()
        run.check_finite("the loss", loss, step)
        grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), max_norm))
        run.check_gradient_norm(grad_norm, step)
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()  # fp16: the gradient scaler skips a step whose gradients overflowed and lowers its scale
        if not accelerator.optimizer_step_was_skipped:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        total_tokens = accelerator.reduce(torch.tensor(float(tokens), device=accelerator.device), reduction="sum")
        record = {"step": step + 1, "loss": loss}
        for name, values in metrics.items():
            record[name] = accelerator.gather(torch.cat(values)).mean().item()
        step_seconds = time.perf_counter() - started
        record.update(
            grad_norm=grad_norm,
            lr=learning_rate,
            step_seconds=step_seconds,
            tokens_per_second=total_tokens.item() / step_seconds,
        )
        run.log(record, loss=f"{loss:.4f}")
        run.end_step(step, {"examples_seen": (step + 1) * config.batch_size})
    return run.finish()
